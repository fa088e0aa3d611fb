"""Shared shell of the CLIP-style rewards: ``scale · cosine(image features, text features)``.

Subclasses give :meth:`image_features` (differentiable) and :meth:`_encode_text`; this class holds the frozen
model's device/dtype, the per-prompt text-feature cache (fp32, least-recently-used, no gradient) and ``score``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

TEXT_CACHE_SIZE = 1024


def match_prompts(prompts: Sequence[str] | str, batch: int) -> list[str]:
    """One prompt per image; a single prompt is broadcast."""
    from ..errors import RenegError

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise RenegError(f"Got {batch} images but {len(prompts)} prompts; pass one prompt or one per image.")
    return prompts


class CosineReward:
    """Base of :class:`~.hps.OpenClipReward` and :class:`~.pickscore.HFClipReward`."""

    model: torch.nn.Module
    name: str

    def __init__(self) -> None:
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.model.to(device=device, dtype=dtype)
        self._text_cache.clear()
        return self

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text features ``[len(prompts), D]`` (called without grad, on uncached prompts)."""
        raise NotImplementedError

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, D]`` of ``[0, 1]`` images; differentiable."""
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor | float:
        return 100.0

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features ``[len(prompts), D]``, fp32, cached per prompt."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            for p, f in zip(missing, self._encode_text(missing)):
                self._text_cache[p] = f.float()
        for p in prompts:
            self._text_cache.move_to_end(p)
        while len(self._text_cache) > max(TEXT_CACHE_SIZE, len(prompts)):
            self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = match_prompts(prompts, images.shape[0])
        cos = (self.image_features(images).float() * self.text_features(prompts)).sum(-1)
        return self.logit_scale() * cos
