"""Write a TOY WORLD generator as an SD1-format single-file checkpoint (for host checkpoint loaders and tests).

:func:`write_toy_checkpoint` saves ``<name>.safetensors`` with the original ``ldm`` key layout
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``), the
``<name>.yaml`` config A1111 reads beside a checkpoint (the toy UNet/VAE sizes and a ``FrozenCLIPEmbedder``
pointing at a local text-encoder folder), and that folder ``<name>-text-encoder/`` (CLIP config, weights in the
classic ``text_model.*`` layout, the openai CLIP tokenizer files), so nothing is downloaded. The key mapping is
the inverse of diffusers' own ``convert_ldm_*_checkpoint`` (the tests check the round trip). Toy models for demos
and tests, not for art.

Caveat for hosts: the ``ldm`` classes A1111 and ComfyUI build hard-code 32 GroupNorm groups; the toy nets use
fewer, wider groups (see :mod:`.models`), so a host computing the checkpoint with its own classes gets
similar but not identical outputs, and widths below 32 do not build there at all. Exact host checks should copy
the weights into the host's classes with the toy group counts, as ``tests/e2e/comfy_builders.py`` does for
``tiny``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .models import CONTEXT_DIM, IMAGE_SIZE, LATENT_CHANNELS, SCHEDULER_CONFIG, TOY_GENERATORS, VAE_CHANNELS

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _sub(key: str, pairs) -> str:
    for a, b in pairs:
        key = key.replace(a, b)
    return key


def unet_prefix_map(config) -> dict[str, str]:
    """diffusers UNet module prefix -> ldm ``UNetModel`` prefix, for any depth / ``layers_per_block``."""
    n, per = len(config.block_out_channels), config.layers_per_block
    down_attn = [t.startswith("CrossAttn") for t in config.down_block_types]
    up_attn = [t.startswith("CrossAttn") for t in config.up_block_types]
    out: dict[str, str] = {}
    idx = 1
    for i in range(n):
        for j in range(per):
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{idx}.0."
            if down_attn[i]:
                out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{idx}.1."
            idx += 1
        if i < n - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{idx}.0.op."
            idx += 1
    out["mid_block.resnets.0."], out["mid_block.attentions.0."] = "middle_block.0.", "middle_block.1."
    out["mid_block.resnets.1."] = "middle_block.2."
    idx = 0
    for i in range(n):
        for j in range(per + 1):
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{idx}.0."
            if up_attn[i]:
                out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{idx}.1."
            if j == per and i < n - 1:
                out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{idx}.{2 if up_attn[i] else 1}."
            idx += 1
    return out


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in ldm ``UNetModel`` names."""
    prefixes = unet_prefix_map(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in _UNET_TOP:
            out[f"{_UNET_TOP[module]}.{leaf}"] = value
            continue
        for hf, sd in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf:
                    rest = _sub(rest, _RESNET)
                out[sd + rest] = value
                break
        else:
            raise KeyError(f"no ldm name for UNet key {key}")
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in ldm ``AutoencoderKL`` names (attention as 1x1 convs)."""
    n = len(vae.config.block_out_channels)
    pairs = [("nin_shortcut", "conv_shortcut")]
    out = {}
    for key, value in vae.state_dict().items():
        k = key
        for i in range(n):
            k = k.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            k = k.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")
        for i in range(2):
            k = k.replace(f"mid_block.resnets.{i}.", f"mid.block_{i + 1}.")
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_norm_out", "norm_out")
        k = k.replace("conv_shortcut", pairs[0][0])
        if ".mid.attn_1." in k:
            k = _sub(k, (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")))
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[k] = value
    return out


def text_encoder_state(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP text weights in the classic ``text_model.*`` layout (what SD1 checkpoints and older transformers use)."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v
            for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}


def ldm_config(name: str = "toy", text_encoder_dir: Optional[str] = None) -> dict:
    """A1111-style ``LatentDiffusion`` config of toy generator ``name`` (the ``.yaml`` beside the checkpoint)."""
    spec = TOY_GENERATORS[name]
    base = spec.block_out_channels[0]
    unet = dict(image_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                model_channels=base, attention_resolutions=[1], num_res_blocks=1,
                channel_mult=[c // base for c in spec.block_out_channels], num_heads=8, use_spatial_transformer=True,
                transformer_depth=1, context_dim=CONTEXT_DIM, use_checkpoint=False, legacy=False)
    params = dict(
        linear_start=SCHEDULER_CONFIG["beta_start"], linear_end=SCHEDULER_CONFIG["beta_end"], num_timesteps_cond=1,
        log_every_t=200, timesteps=1000, first_stage_key="jpg", cond_stage_key="txt", image_size=IMAGE_SIZE // 4,
        channels=LATENT_CHANNELS, cond_stage_trainable=False, conditioning_key="crossattn",
        monitor="val/loss_simple_ema", scale_factor=None, use_ema=False,
        unet_config=dict(target="ldm.modules.diffusionmodules.openaimodel.UNetModel", params=unet),
        first_stage_config=dict(target="ldm.models.autoencoder.AutoencoderKL", params=dict(
            embed_dim=LATENT_CHANNELS, monitor="val/rec_loss",
            ddconfig=dict(double_z=True, z_channels=LATENT_CHANNELS, resolution=IMAGE_SIZE, in_channels=3, out_ch=3,
                          ch=VAE_CHANNELS[0], ch_mult=[c // VAE_CHANNELS[0] for c in VAE_CHANNELS], num_res_blocks=1,
                          attn_resolutions=[], dropout=0.0),
            lossconfig=dict(target="torch.nn.Identity"))),
        cond_stage_config=dict(target="ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                               params=dict(version=text_encoder_dir or "toy-text-encoder", device="cpu")),
    )
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_encoder_folder(text_encoder, directory: str | os.PathLike) -> Path:
    """``from_pretrained`` folder: CLIP config, ``model.safetensors`` (``text_model.*``), tokenizer files."""
    from safetensors.torch import save_file

    from ..clip_tokenizer import write_clip_tokenizer_files

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(str(out))
    state = {k: v.detach().contiguous().clone() for k, v in text_encoder_state(text_encoder).items()}
    _atomic(out / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_clip_tokenizer_files(out)
    return out


def write_toy_checkpoint(directory: str | os.PathLike, name: str = "toy", ckpt_name: Optional[str] = None) -> Path:
    """Write toy generator ``name`` as ``<ckpt_name>.safetensors`` + ``.yaml`` + ``-text-encoder/``; return the ckpt.

    ``ckpt_name`` defaults to ``reneg-<name>``. The VAE scaling factor is stored in the yaml (``scale_factor``).
    """
    from safetensors.torch import save_file

    from .load import toy_components

    parts = toy_components(name)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stem = ckpt_name or f"reneg-{name}"
    te_dir = write_text_encoder_folder(parts["text_encoder"], out / f"{stem}-text-encoder")
    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(parts["unet"]).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(parts["vae"]).items()})
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in text_encoder_state(parts["text_encoder"]).items()})
    state = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
    ckpt = out / f"{stem}.safetensors"
    _atomic(ckpt, lambda tmp: save_file(state, tmp, metadata={"toy_world": "for demos and tests, not for art",
                                                                "reneg_model": name}))
    config = ldm_config(name, str(te_dir.resolve()))
    config["model"]["params"]["scale_factor"] = float(parts["vae"].config.scaling_factor)
    from omegaconf import OmegaConf

    yaml_text = OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(config))))
    _atomic(out / f"{stem}.yaml", lambda tmp: Path(tmp).write_text(yaml_text, encoding="utf-8"))
    return ckpt
