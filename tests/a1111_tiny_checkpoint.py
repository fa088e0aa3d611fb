"""TEST MODELS ONLY: tiny random SD1.x/SD2.x-shaped ``ldm`` checkpoints (the classes A1111 loads).

``ldm_config(...)`` is an A1111-style ``LatentDiffusion`` config (the ``.yaml`` A1111 reads next to a checkpoint),
:func:`build_ldm` instantiates it with the real ``ldm`` classes (A1111's ``repositories/stable-diffusion-stability-ai``
or PyPI's ``stable-diffusion-sdkit``), and :func:`write_checkpoint` saves ``<name>.safetensors`` + ``<name>.yaml``
for a webui's ``models/Stable-diffusion``. The text encoder is a tiny ``CLIPTextModel`` saved as a local folder
with the real CLIP tokenizer (``core.clip_tokenizer``), so nothing is downloaded. Weights are random.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

#: ldm ``parameterization`` and context width per tiny kind (mirrors ``core.tiny_models``).
TINY_KINDS = {"tiny": ("eps", 768, False), "tiny-v": ("v", 1024, True)}


def ensure_ldm_importable() -> None:
    """``ldm`` imports ``pytorch_lightning.utilities.distributed`` (removed in Lightning 2); alias it like A1111."""
    if "pytorch_lightning.utilities.distributed" not in sys.modules:
        try:
            import pytorch_lightning.utilities.rank_zero as rank_zero
        except ImportError:  # pragma: no cover - very old lightning still has the module
            return
        sys.modules["pytorch_lightning.utilities.distributed"] = rank_zero


def ldm_config(kind: str = "tiny", text_encoder_dir: Optional[str] = None, device: str = "cpu") -> dict:
    """A1111-style ``model:`` config for a tiny ``LatentDiffusion`` (``kind`` = ``tiny`` or ``tiny-v``)."""
    param, ctx, linear = TINY_KINDS[kind]
    unet = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1],
                num_res_blocks=1, channel_mult=[1, 2], use_spatial_transformer=True, transformer_depth=1,
                context_dim=ctx, use_checkpoint=False, legacy=False)
    if linear:  # SD2.x style: linear projections, head size given
        unet.update(num_head_channels=8, use_linear_in_transformer=True)
    else:
        unet.update(num_heads=4)
    params: dict[str, Any] = dict(
        linear_start=0.00085, linear_end=0.012, num_timesteps_cond=1, log_every_t=200, timesteps=1000,
        first_stage_key="jpg", cond_stage_key="txt", image_size=8, channels=4, cond_stage_trainable=False,
        conditioning_key="crossattn", monitor="val/loss_simple_ema", scale_factor=0.18215, use_ema=False,
        unet_config=dict(target="ldm.modules.diffusionmodules.openaimodel.UNetModel", params=unet),
        first_stage_config=dict(target="ldm.models.autoencoder.AutoencoderKL", params=dict(
            embed_dim=4, monitor="val/rec_loss",
            ddconfig=dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32,
                          ch_mult=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
            lossconfig=dict(target="torch.nn.Identity"))),
        cond_stage_config=dict(target="ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                               params=dict(version=text_encoder_dir or "openai/clip-vit-large-patch14",
                                           device=device)),
    )
    if param != "eps":
        params["parameterization"] = param
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


def write_text_encoder(directory: str | Path, kind: str = "tiny", seed: int = 0) -> Path:
    """A tiny random ``CLIPTextModel`` + the real CLIP tokenizer files, as a ``from_pretrained`` folder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from reneg.core.clip_tokenizer import VOCAB_SIZE, write_clip_tokenizer_files

    _, ctx, _ = TINY_KINDS[kind]
    out = Path(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(CLIPTextConfig(
            vocab_size=VOCAB_SIZE, hidden_size=ctx, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=ctx,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
        # A fresh final LayerNorm (bias 0) makes every token's features average to exactly 0, so the webui's
        # emphasis renormalisation (z * mean(z) / mean(z * weights)) can divide 0 by 0 for some prompt chunks
        # and sample NaNs. Real CLIP's LayerNorm has a bias; give the tiny one a random one too.
        for name, module in model.named_modules():
            if name.endswith("final_layer_norm"):
                module.bias.data.normal_(0.0, 0.5)
    model.save_pretrained(str(out))
    write_clip_tokenizer_files(out)
    return out


def build_ldm(kind: str = "tiny", text_encoder_dir: Optional[str | Path] = None, seed: int = 0):
    """Instantiate the tiny ``LatentDiffusion`` from :func:`ldm_config` with seeded random weights (eval, frozen)."""
    ensure_ldm_importable()
    from omegaconf import OmegaConf
    from ldm.util import instantiate_from_config

    config = OmegaConf.create(ldm_config(kind, str(text_encoder_dir) if text_encoder_dir else None))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate_from_config(config.model)
        # ldm zero-initialises every block's output conv ("zero_module"): the UNet would then ignore the text
        # and a VAE decode would be flat. Give those layers small random weights so tests see real dependence.
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 and not name.startswith("cond_stage_model"):
                p.data.normal_(0.0, 0.05)
    model.eval().requires_grad_(False)
    return model


def diffusers_components_from_ldm(model, kind: str = "tiny") -> dict:
    """The same weights as diffusers ``unet``/``vae`` (converted with diffusers' single-file utilities)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)

    original = ldm_config(kind)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    unet_cfg = create_unet_diffusers_config_from_ldm(original, sd, image_size=64)
    unet = UNet2DConditionModel(**unet_cfg)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, unet_cfg), strict=True)
    vae_cfg = create_vae_diffusers_config_from_ldm(original, sd, image_size=64)
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vae_cfg), strict=True)
    param = TINY_KINDS[kind][0]
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type={"eps": "epsilon", "v": "v_prediction"}[param])
    return dict(unet=unet.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False), scheduler=scheduler)


def write_checkpoint(directory: str | Path, name: str = "reneg-tiny", kind: str = "tiny", seed: int = 0,
                     text_encoder_dir: Optional[str | Path] = None) -> Path:
    """Write ``<name>.safetensors`` and the ``<name>.yaml`` config A1111 picks up beside it; returns the ckpt.

    The text encoder folder (default ``<directory>/<name>-text-encoder``) is referenced by absolute path in
    the yaml, so the webui needs no hub access for it.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    te_dir = Path(text_encoder_dir) if text_encoder_dir else out / f"{name}-text-encoder"
    if not (te_dir / "config.json").is_file():
        write_text_encoder(te_dir, kind, seed)
    model = build_ldm(kind, te_dir, seed)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    ckpt = out / f"{name}.safetensors"
    save_file(state, str(ckpt))
    config = copy.deepcopy(ldm_config(kind, str(te_dir.resolve())))
    (out / f"{name}.yaml").write_text(_to_yaml(config), encoding="utf-8")
    return ckpt


def _to_yaml(config: dict) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(config))))
