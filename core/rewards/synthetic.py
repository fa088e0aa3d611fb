"""``synthetic``: a prompt-independent reward with a known optimum, for testing optimisers end to end.

``score = -scale * (sum_c (mean_c - TARGET_MEAN_c)^2 + (std - TARGET_STD)^2)`` per image, where ``mean_c`` is
the image's mean of channel ``c`` and ``std`` the sample standard deviation over all its pixels and channels.
Maximum: exactly 0, reached by (and only by) images whose per-channel means equal ``TARGET_MEAN`` and whose
overall std equals ``TARGET_STD`` (reachable: the target means alone give std ~0.12 < 0.2); every other
image scores below 0. ``scale`` (default 100) only sets the magnitude, similar to HPS x100.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .preprocess import check_images

TARGET_MEAN = (0.6, 0.45, 0.3)
TARGET_STD = 0.2


class SyntheticReward:
    """Negative squared distance of mean colour and contrast to fixed targets (optimum 0)."""

    name = "synthetic"

    def __init__(self, target_mean: Sequence[float] = TARGET_MEAN, target_std: float = TARGET_STD,
                 scale: float = 100.0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.target_mean = torch.tensor(target_mean, dtype=dtype, device=device)
        self.target_std = float(target_std)
        self.scale = float(scale)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SyntheticReward":
        self.target_mean = self.target_mean.to(device=device, dtype=dtype)
        return self

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_images(images)
        x = images.to(self.target_mean.device, torch.float32)
        mean = x.mean(dim=(2, 3))
        std = x.flatten(1).std(dim=1)
        dist = ((mean - self.target_mean.float()) ** 2).sum(1) + (std - self.target_std) ** 2
        return -self.scale * dist
