"""What the *Load ReNeg Reward* node does (imported inside ComfyUI only)."""
from __future__ import annotations

from typing import Iterable

import torch

from ..core.errors import RenegError
from ..core.rewards import build_reward
from ..core.rewards.base import Reward
from . import files


def build_node_reward(reward: str, weights: str, mix: str, reward_dirs: Iterable[str]) -> Reward:
    """Build the reward on CPU with normal (non-inference) tensors so it can be differentiated later.

    ``weights``: ``auto`` or an entry of the reward-folder dropdown; ``mix`` (if not blank) replaces ``reward``.
    """
    spec = mix.strip() or reward
    path = None
    if weights != files.AUTO_WEIGHTS:
        if mix.strip():
            raise RenegError("A reward mix finds its weights itself: set weights to 'auto' (put the files in "
                             "models/reneg_rewards/ under their original names).")
        path = files.resolve_in(reward_dirs, weights)
        if path is None:
            raise RenegError(f"Reward weights '{weights}' not found in {list(reward_dirs)}; refresh the node list.")
    # ComfyUI runs nodes under inference_mode: weights created there could never be used for backward.
    with torch.inference_mode(False):
        return build_reward(spec, weights=path, device="cpu")
