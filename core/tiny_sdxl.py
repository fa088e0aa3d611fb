"""TEST MODEL ONLY: ``tiny-xl``, a tiny random SDXL-architecture model that needs no download.

Real diffusers/transformers classes with tiny, seeded configs: a ``UNet2DConditionModel`` with SDXL's
``addition_embed_type="text_time"`` (pooled text embedding + 6 size/crop ids), a ``CLIPTextModel`` and a
``CLIPTextModelWithProjection`` whose widths are the real 768 and 1280 (so negatives are SDXL-shaped,
``[1,77,2048]`` + ``[1,1280]``, and the family checks are the real ones; each has 2 layers with a 64-wide MLP),
a tiny ``AutoencoderKL`` with SDXL's scaling factor and ``force_upcast``, and the offline CLIP tokenizers
(:mod:`.clip_tokenizer`; the second pads with "!" like SDXL's). Weights are random but seeded: every build is
identical; images are noise-like. The model exists so SDXL runs offline on a CPU in seconds.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from .clip_tokenizer import VOCAB_SIZE, offline_clip_tokenizer
from .sdxl_backend import BIGG_DIM, CLIP_L_DIM, CONTEXT_DIM, POOLED_DIM, TINY_XL

TIME_EMBED_DIM = 8  #: per size/crop id (SDXL: 256)


def _clip_config(width: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=projection,
                          hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def tiny_sdxl_components(seed: int = 3) -> dict:
    """Fresh seeded components of ``tiny-xl`` (the keyword arguments of ``StableDiffusionXLPipeline``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
            addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_DIM)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.13025, force_upcast=True)
        text_encoder = CLIPTextModel(_clip_config(CLIP_L_DIM, CLIP_L_DIM))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(BIGG_DIM, POOLED_DIM))
    # SDXL base's scheduler config (scaled-linear betas, leading spacing, offset 1), sampled with DDIM.
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=offline_clip_tokenizer("<|endoftext|>"), tokenizer_2=offline_clip_tokenizer("!"),
                scheduler=scheduler)


@lru_cache(maxsize=1)
def _cached_components() -> dict:
    return tiny_sdxl_components()


def load_tiny_sdxl_backend(fresh: bool = False):
    """An :class:`~.sdxl_backend.SDXLBackend` on ``tiny-xl`` (cached unless ``fresh``; treat as read-only)."""
    from .sdxl_backend import SDXLBackend

    parts = tiny_sdxl_components() if fresh else _cached_components()
    return SDXLBackend(**parts, name=f"{TINY_XL} (random test model)")


def save_tiny_sdxl_pipeline(directory: str | Path) -> Path:
    """Write ``tiny-xl`` as a diffusers folder (``StableDiffusionXLPipeline.from_pretrained`` loads it)."""
    load_tiny_sdxl_backend(fresh=True).pipeline().save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
