"""TEST MODEL: a random-weight checkpoint that Forge's loader (``backend/loader.py``) detects and loads as SD1.5.

Forge guesses the UNet's config from the weights (``huggingface_guess``), so the UNet is small: one level, 320
channels, 768-wide cross-attention, 8 heads (what ``huggingface_guess``'s SD15 entry adds). The VAE and the CLIP
ViT-L/14 text encoder are built by Forge from its shipped configs (``backend/huggingface/runwayml/
stable-diffusion-v1-5``), so they are full size here. Keys are the original ``ldm`` layout (``model.diffusion_model.``,
``first_stage_model.``, ``cond_stage_model.transformer.``), the layout of every SD1.5 ``.safetensors`` file; built
with the real ``ldm`` classes (PyPI ``stable-diffusion-sdkit``) and ``transformers``. Stored in fp16 (~470 MB).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

#: Bump when the builder changes so cached checkpoints are rebuilt.
VERSION = "1"
NAME = "reneg-forge-sd15.safetensors"


def build(path: Path, seed: int = 0) -> Path:
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from a1111_tiny_checkpoint import ensure_ldm_importable

    ensure_ldm_importable()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[1],
                         num_res_blocks=1, channel_mult=[1], num_heads=8, use_spatial_transformer=True,
                         transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)
        for p in unet.parameters():  # ldm zero-initialises output convs: the UNet would ignore the text
            if p.abs().sum() == 0:
                p.data.normal_(0.0, 0.05)
        vae = AutoencoderKL(embed_dim=4, lossconfig={"target": "torch.nn.Identity"}, ddconfig=dict(
            double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
            num_res_blocks=2, attn_resolutions=[], dropout=0.0))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12,
                                            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    sd.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    # transformers 5 dropped CLIPTextModel's ``text_model.`` level; checkpoints (and Forge) keep it
    sd.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in clip.state_dict().items()})
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(sd, str(tmp))
    os.replace(tmp, path)
    return path


def ensure(cache_dir: Path) -> Path:
    """Build the checkpoint once per cache folder (and builder version)."""
    path = cache_dir / f"forge-v{VERSION}" / NAME
    return path if path.is_file() else build(path)
