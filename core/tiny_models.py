"""TEST MODELS ONLY: tiny random SD-architecture models that need no download.

``tiny`` is an SD1.x-shaped model (epsilon prediction, 768-wide CLIP text encoder, pad token 49407) and ``tiny-v``
an SD2.x-shaped one (v-prediction, 1024-wide, pad token "!" = 0). Weights are random but seeded, so every build is
identical; images are noise-like. They exist so the whole engine, CLI and hosts run offline on a CPU in seconds
with the real tokenizer (``core.clip_tokenizer``) and released-shape embeddings.

Tests that check *learning* use the trained toy world instead (``toy`` / ``toy-2``, :mod:`.toy_world`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .clip_tokenizer import VOCAB_SIZE, offline_clip_tokenizer


@dataclass(frozen=True)
class TinySpec:
    context_dim: int
    prediction_type: str
    pad_token: str
    linear_projection: bool
    seed: int


TINY_MODELS: dict[str, TinySpec] = {
    "tiny": TinySpec(768, "epsilon", "<|endoftext|>", False, 0),
    "tiny-v": TinySpec(1024, "v_prediction", "!", True, 1),
}
#: Every model name ``load_backend`` builds in (no download): random ``tiny*`` and trained ``toy*`` (core/toy_world).
BUILTIN_MODELS = (*TINY_MODELS, "toy", "toy-2")


def tiny_components(name: str = "tiny") -> dict:
    """Fresh seeded ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` for a tiny model."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if name not in TINY_MODELS:
        raise ValueError(f"Unknown tiny model {name!r}; choose from {sorted(TINY_MODELS)}.")
    spec = TINY_MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=spec.context_dim, attention_head_dim=8, norm_num_groups=32,
            use_linear_projection=spec.linear_projection)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=VOCAB_SIZE, hidden_size=spec.context_dim, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=spec.context_dim,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type=spec.prediction_type)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer(spec.pad_token),
                scheduler=scheduler)


@lru_cache(maxsize=2)
def _cached_components(name: str) -> dict:
    return tiny_components(name)


def load_tiny_backend(name: str = "tiny", fresh: bool = False):
    """A :class:`DiffusersBackend` on the tiny model ``name`` (cached unless ``fresh``; treat it as read-only)."""
    from .diffusers_backend import DiffusersBackend

    parts = tiny_components(name) if fresh else _cached_components(name)
    return DiffusersBackend(**parts, name=f"{name} (random test model)")


def save_tiny_pipeline(name: str, directory: str | Path) -> Path:
    """Write the tiny model as a diffusers folder (``StableDiffusionPipeline.from_pretrained`` loads it)."""
    backend = load_tiny_backend(name, fresh=True)
    backend.pipeline().save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
