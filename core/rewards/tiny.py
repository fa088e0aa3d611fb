"""``tiny``: a small random (seeded) open_clip CLIP wrapped by the HPS reward class, for tests and smoke runs.

Same code path as HPSv2 (``OpenClipReward``, HPS preprocessing, real open_clip BPE tokenizer); only the
architecture is tiny and the weights are random unless ``weights=`` points at a state dict for this config.
Scores carry no meaning beyond being a smooth, prompt-dependent, differentiable function of the pixels.
"""
from __future__ import annotations

import os

import torch

from .hps import OpenClipReward, build_open_clip
from .weights import load_state_dict_file

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_SEED = 0


def load_tiny(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> OpenClipReward:
    """The ``tiny`` reward: random seeded weights, or a state dict file for ``TINY_CLIP_CONFIG``."""
    import open_clip

    state = load_state_dict_file(weights) if weights is not None else None
    model = build_open_clip(TINY_CLIP_CONFIG, state, seed=TINY_SEED)
    tokenizer = open_clip.SimpleTokenizer(context_length=TINY_CLIP_CONFIG["text_cfg"]["context_length"])
    return OpenClipReward(model, tokenizer, name="tiny").to(device, dtype)
