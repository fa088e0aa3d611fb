"""Load the shipped TOY WORLD weights as a :class:`~..diffusers_backend.DiffusersBackend` and a reward."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from ..errors import MissingWeightsError, RenegError
from .models import (REWARD_FILE, TEXT_ENCODER_FILE, TOY_GENERATORS, VAE_FILE, build_reward_clip, build_scheduler,
                     build_text_encoder, build_unet, build_vae, read_manifest, read_weights)

TOY_MODELS = tuple(TOY_GENERATORS)
#: What users see next to the model name: these are not image models.
TOY_LABEL = "TOY WORLD test model: 32x32 coloured shapes, for demos and tests, not for art"


def _weights_dir(weights_dir: Optional[str | os.PathLike]) -> Optional[Path]:
    return Path(weights_dir) if weights_dir is not None else None


def toy_components(name: str = "toy", weights_dir: Optional[str | os.PathLike] = None) -> dict:
    """Fresh ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` of toy generator ``name``."""
    from ..clip_tokenizer import offline_clip_tokenizer

    if name not in TOY_GENERATORS:
        raise RenegError(f"Unknown toy model {name!r}; choose from {', '.join(TOY_MODELS)}.")
    wdir = _weights_dir(weights_dir)
    manifest = read_manifest(wdir)
    scaling = manifest.get("files", {}).get("vae_scaling_factor")
    if scaling is None:
        raise MissingWeightsError(f"The toy-world manifest (world.json) in {wdir or 'the pack'} has no "
                                  "vae_scaling_factor; rebuild with `python -m reneg.core.toy_world.train_world`.")
    spec = TOY_GENERATORS[name]
    unet = build_unet(spec.block_out_channels)
    vae = build_vae(float(scaling))
    text_encoder = build_text_encoder()
    for module, fname in ((unet, spec.unet_file), (vae, VAE_FILE), (text_encoder, TEXT_ENCODER_FILE)):
        module.load_state_dict(read_weights(fname, wdir), strict=True)
        module.eval().requires_grad_(False)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer(),
                scheduler=build_scheduler())


@lru_cache(maxsize=2)
def _cached(name: str) -> dict:
    return toy_components(name)


def load_toy_backend(name: str = "toy", fresh: bool = False, weights_dir: Optional[str | os.PathLike] = None):
    """A backend on toy generator ``name`` (``toy`` or ``toy-2``); cached unless ``fresh`` (treat as read-only)."""
    from ..diffusers_backend import DiffusersBackend

    parts = toy_components(name, weights_dir) if (fresh or weights_dir is not None) else _cached(name)
    return DiffusersBackend(**parts, name=name)


def load_toy_reward(weights: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """The ``toy`` reward: ``100 * cosine`` of the toy CLIP (HPS code path); ``weights``: a file or folder."""
    import open_clip

    from ..rewards.hps import OpenClipReward

    path = Path(weights) if weights is not None else None
    if path is not None and path.is_dir():
        path = path / REWARD_FILE
    state = read_weights(path.name, path.parent) if path is not None else read_weights(REWARD_FILE)
    model = build_reward_clip(state)
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    return OpenClipReward(model, tokenizer, name="toy").to(device, dtype)
