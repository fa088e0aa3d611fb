"""What the *Load ReNeg Reward* node does (imported inside ComfyUI only)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch

from ..core.errors import RenegError
from ..core.rewards import build_reward
from ..core.rewards.base import Reward
from ..core.rewards.weights import check_weights_file
from . import files


def _weights_path(weights: str, reward_dirs: Iterable[str]) -> Optional[Path]:
    """The file/folder of a weights dropdown entry (None for ``auto``); one clear error if it is not there."""
    if weights == files.AUTO_WEIGHTS:
        return None
    reward_dirs = list(reward_dirs)
    path = files.resolve_in(reward_dirs, weights)
    if path is None:
        raise RenegError(f"Reward weights '{weights}' not found in {reward_dirs}; refresh the node list.")
    return path


def weights_problem(weights: str, reward_dirs: Iterable[str]) -> Optional[str]:
    """Why the chosen weights cannot be used (checked when the graph is queued: missing, empty, a web page, a
    Git-LFS pointer, a pickle that runs code), or None. Cheap: nothing is loaded."""
    try:
        path = _weights_path(weights, reward_dirs)
        if path is not None and path.is_file():
            check_weights_file(path)
    except RenegError as exc:
        return str(exc)
    return None


def build_node_reward(reward: str, weights: str, mix: str, reward_dirs: Iterable[str]) -> Reward:
    """Build the reward on CPU with normal (non-inference) tensors so it can be differentiated later.

    ``weights``: ``auto`` or an entry of the reward-folder dropdown; ``mix`` (if not blank) replaces ``reward``.
    """
    spec = mix.strip() or reward
    if weights != files.AUTO_WEIGHTS and mix.strip():
        raise RenegError("A reward mix finds its weights itself: set weights to 'auto' (put the files in "
                         "models/reneg_rewards/ under their original names).")
    path = _weights_path(weights, reward_dirs)
    # ComfyUI runs nodes under inference_mode: weights created there could never be used for backward.
    with torch.inference_mode(False):
        return build_reward(spec, weights=path, device="cpu")
