"""Reward protocol: a differentiable scalar preference score per image."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Reward(Protocol):
    """``score(images, prompts) -> [B]``; images are float BCHW in ``[0, 1]``; higher is better.

    Gradients must flow from the score back to ``images`` (all preprocessing in torch).
    Reward weights are frozen (``requires_grad=False``).
    """

    #: Registry name, e.g. ``"hpsv2.1"``, ``"tiny"``, ``"synthetic"``.
    name: str

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Reward": ...
