"""Weighted sum of rewards: ``score = sum_i w_i * reward_i.score``."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import RenegError
from .base import Reward


class MixReward:
    """Weighted mix; ``name`` is the canonical spec, e.g. ``"hpsv2.1:1,aesthetic:0.5"``."""

    def __init__(self, parts: Sequence[tuple[Reward, float]]) -> None:
        if not parts:
            raise RenegError("A reward mix needs at least one reward, e.g. 'hpsv2.1:1,aesthetic:0.5'.")
        self.parts = [(r, float(w)) for r, w in parts]
        self.name = ",".join(f"{r.name}:{w:g}" for r, w in self.parts)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MixReward":
        for r, _ in self.parts:
            r.to(device, dtype)
        return self

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each part's unweighted score ``[B]``, by name (for logging)."""
        return {r.name: r.score(images, prompts) for r, _ in self.parts}

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = [w * r.score(images, prompts).float() for r, w in self.parts]
        return torch.stack([s.to(scores[0].device) for s in scores]).sum(0)
