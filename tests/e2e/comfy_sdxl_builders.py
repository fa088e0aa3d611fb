"""Builds the tiny SDXL-family checkpoint of the SDXL e2e (run with ComfyUI's Python and ``COMFYUI_PATH`` set).

ComfyUI 0.3.64 detects the SDXL family by ``comfy/supported_models.py`` ``unet_config`` keys only
(``model_channels 320``, ``use_linear_in_transformer``, ``transformer_depth``, ``context_dim 2048``,
``adm_in_channels 2816``); ``channel_mult`` and the output/middle depths are not matched. The UNet here is
ComfyUI's own ``UNetModel`` with KOALA-700M's input depths ``[0, 2, 5]`` (one res block per level, a subclass
of ``SDXL``: same conditioning, ``model_base.SDXL``) but 320 channels at every level and small output/middle
depths (~80M parameters), random weights (torch's default layer init), plus the SD VAE at full size (ComfyUI
builds it from a fixed config). The checkpoint holds **no text-encoder weights**: ComfyUI builds SDXL's CLIP-L
and bigG from full-size configs (bigG alone ~695M parameters), so the e2e uses the probe pack's
``ReNegE2ETinySDXLClip`` (ComfyUI's own SDXL tokenizer and ``SDXLClipModel``, made small through its
``clip_l_model_config`` / ``clip_g_model_config`` model options) and ``CheckpointLoaderSimple``'s CLIP output
is unused.

    python comfy_sdxl_builders.py checkpoint OUT.safetensors   # prints the path and ComfyUI's detected class
    python comfy_sdxl_builders.py adapter-check CKPT.safetensors  # prints the adapter-vs-sampler-path facts
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_builders import comfy_on_path  # noqa: E402

#: ComfyUI ``UNetModel`` arguments (as ``comfy.model_detection.detect_unet_config`` reports them).
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 1, 1], "transformer_depth": [0, 2, 5],
    "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64, "num_classes": "sequential",
    "adm_in_channels": 2816, "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def _init_like_torch(module: torch.nn.Module) -> None:
    """ComfyUI's ops skip weight init; give every layer torch's default init (seeded by the caller)."""
    for m in module.modules():
        for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break


def build_sdxl_checkpoint(path: str | os.PathLike, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    import comfy.diffusers_convert
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(**UNET_CONFIG, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    _init_like_torch(unet)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    for k, v in comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict()).items():
        sd[f"first_stage_model.{k}"] = v
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    detected = type(config).__name__ if config is not None else None
    import comfy.supported_models

    if config is None or not isinstance(config, comfy.supported_models.SDXL):
        raise SystemExit(f"ComfyUI does not detect the tiny UNet as SDXL-family (got {detected}).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(sd, str(tmp))
    os.replace(tmp, path)
    return {"path": str(path), "detected": detected,
            "unet_parameters": sum(p.numel() for p in unet.parameters())}


def adapter_check(checkpoint: str | os.PathLike) -> dict:
    """The pack's ``ComfyBackend`` on ComfyUI's SDXL MODEL vs ComfyUI's own sampler path for the same packed
    negative: ``SDXL.extra_conds`` (what ``comfy/samplers.py: encode_model_conds`` calls, width/height = latent
    size · 8) + ``BaseModel.apply_model`` at σ(t), converted to ε. Also: the gradient reaches context and pooled."""
    from comfy_builders import load_pack

    load_pack()
    import comfy.sd
    from reneg.comfy_nodes.model_adapter import prepared
    from reneg.core.sdxl_backend import pack

    model, _, vae = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_clip=False)[:3]
    torch.manual_seed(0)
    with torch.inference_mode():  # as in a node: inputs are inference tensors
        x = torch.randn(2, 4, 8, 12)  # 64 x 96 image: height and width differ
        context, pooled = torch.randn(2, 77, 2048), torch.randn(2, 1280)
    facts: dict = {"model_base": type(model.model).__name__}
    with prepared(model, vae) as backend:
        negative = pack(context.clone(), pooled.clone()).requires_grad_(True)
        sampling = model.get_model_object("model_sampling")
        diffs = []
        for t in (999, 500, 1):
            eps = backend.model_output(x.clone(), t, negative)
            with torch.no_grad():
                sigma = sampling.sigmas[t].reshape(1).expand(2)
                conds = model.model.extra_conds(pooled_output=pooled.clone(), cross_attn=context.clone(),
                                                width=x.shape[-1] * 8, height=x.shape[-2] * 8, noise=x,
                                                device=x.device)
                x_in = x * (1.0 + sigma[:, None, None, None] ** 2).sqrt()  # ComfyUI's x for DDPM x_t
                denoised = model.model.apply_model(x_in, sigma, c_crossattn=conds["c_crossattn"].cond,
                                                   y=conds["y"].cond)
                ref = (x_in - denoised) / sigma[:, None, None, None]
                diffs.append(float((eps.detach() - ref).abs().max()) / float(ref.abs().max()))
            if t == 500:
                eps.square().mean().backward()
        facts["relative_max_abs_diff"] = max(diffs)
        facts["context_grad_norm"] = float(negative.grad[:, :77].norm())
        facts["pooled_grad_norm"] = float(negative.grad[:, 77, :1280].norm())
        facts["pad_grad_norm"] = float(negative.grad[:, 77, 1280:].norm())
    return facts


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("checkpoint", "adapter-check"):
        raise SystemExit(__doc__)
    comfy_on_path()
    if sys.argv[1] == "checkpoint":
        print(json.dumps(build_sdxl_checkpoint(sys.argv[2])))
    else:
        print(json.dumps(adapter_check(sys.argv[2])))
