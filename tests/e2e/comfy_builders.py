"""Test helpers that need ComfyUI importable (run them with ComfyUI's Python and ``COMFYUI_PATH`` set).

* :func:`build_sd15_checkpoint` writes a random-weight checkpoint that ComfyUI's ``CheckpointLoaderSimple``
  detects as SD1.5 (UNet with SD1.5's detection keys: 320 channels, 768-wide cross-attention, one level; the
  SD VAE and the CLIP ViT-L/14 text encoder at full size because ComfyUI builds those from fixed configs).
* :func:`comfy_model_from_diffusers` / :func:`comfy_vae_from_diffusers` put the weights of a diffusers UNet / VAE
  (e.g. the CLI's ``tiny`` model) into ComfyUI's own ``UNetModel`` / ``AutoencoderKL`` classes, bypassing
  checkpoint-type detection (which only knows full-size configs).

Command line (used by the tests as a subprocess so pytest never imports ``comfy``)::

    python comfy_builders.py checkpoint OUT.safetensors
    python comfy_builders.py refine-equivalence OUT_DIR --json '{"prompt": ..., "seed": ...}'
    python comfy_builders.py adapter-checks
    python comfy_builders.py pixart-checkpoint OUT.safetensors
    python comfy_builders.py pixart-checks [--released pixart-alpha_reneg_emb.bin]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def comfy_on_path() -> Path:
    """Put ``$COMFYUI_PATH`` on ``sys.path`` (ComfyUI's modules are top-level: ``comfy``, ``folder_paths``)."""
    root = os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "comfy").is_dir():
        raise SystemExit("Set COMFYUI_PATH to a ComfyUI checkout (folder containing comfy/ and main.py).")
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args  # defaults (no argv parsing) unless ComfyUI's main.py already parsed them

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; must precede comfy.model_management
    return Path(root)


def load_pack(name: str = "reneg"):
    """Import the repository root as a package the way ComfyUI imports a custom-node folder."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- diffusers -> ComfyUI ------------------------------------------------------------------------------------
def unet_config_from_diffusers(config) -> dict:
    """ComfyUI ``unet_config`` for a diffusers SD-style ``UNet2DConditionModel`` config."""
    levels = len(config.block_out_channels)
    base = config.block_out_channels[0]
    per = config.layers_per_block
    attn_down = [1 if t.startswith("CrossAttn") else 0 for t in config.down_block_types]
    attn_up = [1 if t.startswith("CrossAttn") else 0 for t in config.up_block_types]
    heads = config.attention_head_dim
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": config.out_channels,
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "dtype": torch.float32,
        "in_channels": config.in_channels, "model_channels": base, "num_res_blocks": [per] * levels,
        "transformer_depth": [d for d in attn_down for _ in range(per)],
        "channel_mult": [c // base for c in config.block_out_channels], "transformer_depth_middle": 1,
        "use_linear_in_transformer": bool(config.use_linear_projection), "context_dim": config.cross_attention_dim,
        "num_heads": heads if isinstance(heads, int) else heads[0], "num_head_channels": -1,
        # output blocks are listed from the highest resolution level down (ComfyUI pops from the end)
        "transformer_depth_output": [d for d in reversed(attn_up) for _ in range(per + 1)],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def diffusers_unet_to_ldm(state_dict: dict, unet_config: dict) -> dict:
    """Rename a diffusers UNet state dict to ComfyUI/ldm keys with ComfyUI's own map (every key must map)."""
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(unet_config)  # also lists optional keys (shortcuts, samplers)
    leftover = set(state_dict) - set(mapping)
    if leftover:
        raise ValueError(f"UNet keys ComfyUI's map does not know: {sorted(leftover)[:5]}")
    return {mapping[k]: v for k, v in state_dict.items()}


def comfy_model_from_diffusers(unet, prediction_type: str = "epsilon", scaling_factor: float | None = None):
    """A ComfyUI ``ModelPatcher`` (SD1.x/SD2.x ``BaseModel``) holding a diffusers UNet's exact weights.

    ``scaling_factor``: the VAE latent scale, when it is not SD's (the toy world's VAE has its own)."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = unet_config_from_diffusers(unet.config)
    family = comfy.supported_models.SD15 if cfg["context_dim"] == 768 else comfy.supported_models.SD20
    model_config = family(cfg)
    model_config.unet_config.update(num_heads=cfg["num_heads"], num_head_channels=-1)  # SD20 defaults to 64/head
    model_config.set_inference_dtype(torch.float32, None)
    model_type = (comfy.model_base.ModelType.V_PREDICTION if prediction_type == "v_prediction"
                  else comfy.model_base.ModelType.EPS)
    with _group_norm_groups(unet.config.norm_num_groups):
        base = comfy.model_base.BaseModel(model_config, model_type=model_type, device="cpu")
    if scaling_factor is not None:
        base.latent_format.scale_factor = float(scaling_factor)
    sd = diffusers_unet_to_ldm({k: v.detach().clone() for k, v in unet.state_dict().items()}, cfg)
    missing, unexpected = base.diffusion_model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"UNet load mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@contextlib.contextmanager
def _group_norm_groups(groups: int):
    """ComfyUI's UNet and VAE hard-code GroupNorm(32); build them with ``groups`` instead (what the diffusers twin
    uses, e.g. the toy world's 8 / 1). Only the group count of the norms created inside the block changes; their
    forward is ComfyUI's own. Patches the CPU fp32 operations (``comfy.ops.disable_weight_init``) and the
    manual-cast ones."""
    import comfy.ops

    classes = (comfy.ops.disable_weight_init, comfy.ops.manual_cast)
    originals = [c.__dict__.get("GroupNorm") for c in classes]
    for cls in classes:
        original = cls.GroupNorm

        class GroupNormWithGroups(original):
            def __init__(self, num_groups, num_channels, *args, **kwargs):
                super().__init__(groups, num_channels, *args, **kwargs)

        cls.GroupNorm = GroupNormWithGroups
    try:
        yield
    finally:
        for cls, original in zip(classes, originals):
            cls.GroupNorm = original


def comfy_vae_from_diffusers(vae):
    """A ComfyUI ``VAE`` (``AutoencoderKL`` of ``comfy.ldm``) holding a diffusers ``AutoencoderKL``'s weights."""
    import comfy.sd

    c = vae.config
    base = c.block_out_channels[0]
    ddconfig = {"double_z": True, "z_channels": c.latent_channels, "resolution": c.sample_size,
                "in_channels": c.in_channels, "out_ch": c.out_channels, "ch": base,
                "ch_mult": [b // base for b in c.block_out_channels], "num_res_blocks": c.layers_per_block,
                "attn_resolutions": [], "dropout": 0.0}
    from reneg.core.toy_world.checkpoint import vae_to_ldm

    # ldm names from the pack's own map: ComfyUI's diffusers->ldm VAE map assumes SD's 4 levels (the toy VAE has 2)
    sd = {k: v.detach().clone() for k, v in vae_to_ldm(vae).items()}
    with _group_norm_groups(c.norm_num_groups):
        out = comfy.sd.VAE(sd=sd, config={"params": {"ddconfig": ddconfig, "embed_dim": c.latent_channels}},
                           dtype=torch.float32)
    # with an explicit config ComfyUI keeps SD's 8x; the ratio follows the levels (the toy VAE: 2 levels, 4x)
    out.downscale_ratio = out.upscale_ratio = 2 ** (len(c.block_out_channels) - 1)
    return out


# --- the e2e checkpoint --------------------------------------------------------------------------------------
def save_fp16_checkpoint(sd: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint state dict as fp16 safetensors, atomically (a killed build leaves no half file)."""
    from safetensors.torch import save_file

    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(sd, str(tmp))
    os.replace(tmp, path)
    return path


def build_sd15_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Random SD1.5-architecture checkpoint (fp16, ~470 MB) that ComfyUI detects as SD15."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import comfy.diffusers_convert

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320,),
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
    sd = {}
    for k, v in diffusers_unet_to_ldm(unet.state_dict(), unet_config_from_diffusers(unet.config)).items():
        sd[f"model.diffusion_model.{k}"] = v
    for k, v in comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict()).items():
        sd[f"first_stage_model.{k}"] = v
    for k, v in clip.state_dict().items():
        sd[f"cond_stage_model.transformer.{k}"] = v
    return save_fp16_checkpoint(sd, path)


# --- PixArt-α -------------------------------------------------------------------------------------------------
def diffusers_pixart_to_original(state_dict: dict, depth: int, hidden: int) -> dict:
    """A diffusers ``PixArtTransformer2DModel`` state dict in the ORIGINAL PixArt key layout (``t_block.1``,
    ``y_embedder.*``, ``blocks.N.attn.qkv``) with ComfyUI's own map (``comfy.utils.pixart_to_diffusers``)."""
    import comfy.utils

    mapping = comfy.utils.pixart_to_diffusers({"depth": depth, "hidden_size": hidden})
    out, slices, leftover = {}, {}, []
    for k, v in state_dict.items():
        target = mapping.get(k)
        if k == "pos_embed.pos_embed":
            out["pos_embed"] = v  # the fixed sin-cos table (ComfyUI recomputes it; detection reads its size)
        elif target is None:
            leftover.append(k)
        elif isinstance(target, str):
            out[target] = v
        else:
            name, (dim, start, _length) = target
            slices.setdefault(name, []).append((start, dim, v))
    for name, parts in slices.items():
        out[name] = torch.cat([v for _, _, v in sorted(parts, key=lambda p: p[0])], dim=parts[0][1])
    if leftover:
        raise ValueError(f"PixArt keys ComfyUI's map does not know: {sorted(leftover)[:5]}")
    return out


def comfy_pixart_from_diffusers(transformer):
    """A ComfyUI ``ModelPatcher`` (``model_base.PixArt``, PixArt-α) holding a diffusers PixArt's exact weights."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    c = transformer.config
    hidden = c.num_attention_heads * c.attention_head_dim
    cfg = {"image_model": "pixart_alpha", "hidden_size": hidden, "num_heads": c.num_attention_heads,
           "depth": c.num_layers, "patch_size": c.patch_size, "in_channels": c.in_channels,
           "input_size": c.sample_size, "pe_interpolation": max(c.sample_size // 64, 1),  # detection's guess
           "micro_condition": bool(transformer.use_additional_conditions), "model_max_length": 120,
           "caption_channels": c.caption_channels, "dtype": torch.float32}
    model_config = comfy.supported_models.PixArtAlpha(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.PixArt(model_config, device="cpu").eval()  # as supported_models.get_model
    sd = diffusers_pixart_to_original({k: v.detach().clone() for k, v in transformer.state_dict().items()},
                                      c.num_layers, hidden)
    sd.pop("pos_embed", None)
    missing, unexpected = base.diffusion_model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "y_embedder.y_embedding"]  # training-time token drop only
    if missing or unexpected:
        raise ValueError(f"PixArt load mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def adapter_vs_reference(backend, ref, x: torch.Tensor, ctx: torch.Tensor, latents: torch.Tensor) -> dict:
    """The ComfyUI adapter ``backend`` against the engine's own ``ref`` backend on the same weights: model output
    at t = 999/500/1 on ``x`` (a backward from t = 500 fills ``ctx.grad``), decode of ``latents``, the schedule."""
    out = {t: backend.model_output(x, t, ctx) for t in (999, 500, 1)}
    out[500].square().mean().backward()
    with torch.no_grad():
        return {
            "prediction_type": backend.prediction_type,
            "model_output_max_abs_diff": max(float((out[t] - ref.model_output(x, t, ctx)).abs().max()) for t in out),
            "decode_max_abs_diff": float((backend.decode(latents) - ref.decode(latents)).abs().max()),
            "alphas_max_abs_diff": float((backend.alphas_cumprod - ref.alphas_cumprod).abs().max()),
            "context_grad_norm": float(ctx.grad.norm()),
        }


def pixart_checks(released: str | None = None) -> dict:
    """ComfyUI's PixArt (attended rows only, no mask) vs diffusers' ``PixArtTransformer2DModel`` (120 rows + mask)
    on tiny-pixart's weights, and :class:`ComfyBackend` on that MODEL vs the CLI's ``PixArtBackend``."""
    comfy_on_path()
    load_pack()
    from reneg.comfy_nodes.model_adapter import ComfyBackend
    from reneg.comfy_nodes.pixart import attended_rows
    from reneg.core.embedding_io import load_embedding
    from reneg.core.pixart_backend import attention_mask_of
    from reneg.core.tiny_pixart import load_tiny_pixart_backend

    ref = load_tiny_pixart_backend(fresh=True)
    model = comfy_pixart_from_diffusers(ref.transformer)
    vae = comfy_vae_from_diffusers(ref.vae)
    gen = torch.Generator().manual_seed(0)
    side = ref.transformer.config.sample_size  # ComfyUI's and diffusers' sin-cos tables agree at the native size
    x = torch.randn(2, 4, side, side, generator=gen)
    if released:
        negative = load_embedding(released).tensor
    else:  # the released layout: row 0 and 119 identical rows
        row0, row1 = torch.randn(1, 1, 4096, generator=gen), torch.randn(1, 1, 4096, generator=gen)
        negative = torch.cat([row0, row1.expand(1, 119, 4096)], dim=1)
    prompt = ref.encode_prompts(["a photo of a red fox in the snow"]).float()  # padded rows zeroed
    facts: dict = {"negative_source": released or "synthetic", "latent_side": side}
    unet = model.model.diffusion_model
    with torch.no_grad():
        for name, ctx in (("released_negative", negative), ("prompt", prompt)):
            mask = attention_mask_of(ctx)
            rows = attended_rows(ctx)
            t = torch.tensor([999.0, 500.0])
            hw = torch.tensor([[side * 8.0, side * 8.0]]).repeat(2, 1)
            ar = torch.tensor([[1.0]]).repeat(2, 1)
            want = ref.transformer(x, encoder_hidden_states=ctx.expand(2, -1, -1),
                                   encoder_attention_mask=mask.expand(2, -1).long(), timestep=t.long(),
                                   added_cond_kwargs={"resolution": hw, "aspect_ratio": ar},
                                   return_dict=False)[0].chunk(2, dim=1)[0]
            got = unet(x, t, context=rows.expand(2, -1, -1), c_size=hw, c_ar=ar)
            unmasked = unet(x, t, context=ctx.expand(2, -1, -1), c_size=hw, c_ar=ar)
            facts[name] = {"attended_rows": int(rows.shape[1]),
                           "max_abs_diff": float((got - want).abs().max()),
                           "max_abs_output": float(want.abs().max()),
                           "all_rows_unmasked_max_abs_diff": float((unmasked - want).abs().max())}
    with torch.inference_mode(False), torch.enable_grad():
        backend = ComfyBackend(model, vae).load()
        ctx = torch.cat([negative, prompt]).clone().requires_grad_(True)  # two rows, two different masks
        small = torch.randn(1, 4, 16, 16, generator=gen)
        facts["adapter"] = {"family": backend.family, "context_dim": backend.context_dim,
                            **adapter_vs_reference(backend, ref, x, ctx, small),
                            "masked_rows_grad_max": float(ctx.grad[0, 1:].abs().max())}
        backend.release()
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    from reneg.core.errors import RenegError

    sigma_cfg = {**model.model.model_config.unet_config, "image_model": "pixart_sigma", "micro_condition": False}
    sigma = comfy.model_patcher.ModelPatcher(
        comfy.model_base.PixArt(comfy.supported_models.PixArtSigma(sigma_cfg), device="cpu").eval(), "cpu", "cpu")
    try:
        ComfyBackend(sigma, vae)
        facts["sigma_error"] = None
    except RenegError as exc:
        facts["sigma_error"] = str(exc)
    return facts


def build_pixart_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Random PixArt-α checkpoint that ComfyUI 0.3.64 detects as ``pixart_alpha``: ORIGINAL key layout
    (``t_block.1.weight``, ``y_embedder.*``, ``ar_embedder.*``), width 1152 / 16 heads (hard-coded by
    ``comfy/model_detection.py``), depth 1, no ``pos_embed`` (ComfyUI computes it), all under ``model.diffusion_model.``
    (the prefix ``CheckpointLoaderSimple`` looks for); the SD VAE under ``vae.`` (full size,
    ComfyUI builds it from a fixed config); no text encoder (T5-XXL is 4.7B; the e2e uses a tiny one)."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel

    import comfy.diffusers_convert

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=1152, sample_size=64, patch_size=2, caption_channels=4096,
        norm_type="ada_norm_single", num_embeds_ada_norm=1000, activation_fn="gelu-approximate",
        attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    sd = diffusers_pixart_to_original(transformer.state_dict(), 1, 1152)
    sd["y_embedder.y_embedding"] = torch.randn(120, 4096) / 4096 ** 0.5
    # CheckpointLoaderSimple finds the transformer under ComfyUI's own checkpoint prefix (CheckpointSave's layout)
    sd = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    for k, v in comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict()).items():
        sd[f"vae.{k}"] = v
    return save_fp16_checkpoint(sd, path)


# --- refine equivalence --------------------------------------------------------------------------------------
def refine_equivalence(out_dir: str | os.PathLike, model: str = "tiny", **kw) -> dict:
    """Run the ReNeg Refine node's code on ComfyUI copies of the CLI's ``model`` (``tiny``, or the trained toy world
    ``toy`` with its ``toy`` reward); write inputs and result.

    The test compares the result with ``core.refine`` on the diffusers backend for the same inputs.
    """
    from safetensors.torch import save_file

    comfy_on_path()
    pack = load_pack()
    from reneg.core.diffusers_backend import load_backend
    from reneg.comfy_nodes import refine_run

    diffusers_backend = load_backend(model)
    comfy_model = comfy_model_from_diffusers(diffusers_backend.unet, diffusers_backend.prediction_type,
                                             diffusers_backend.scaling_factor)
    comfy_vae = comfy_vae_from_diffusers(diffusers_backend.vae)
    prompt = kw.pop("prompt")
    with torch.inference_mode():  # what ComfyUI's executor wraps every node in
        cond = diffusers_backend.encode_prompts([prompt])
        init = diffusers_backend.encode_prompts([""])
        positive = [[cond.clone(), {"pooled_output": None}]]
        negative = [[init.clone(), {"pooled_output": None}]]
        from reneg.comfy_nodes.reward_run import build_node_reward

        reward = build_node_reward("toy" if model.startswith("toy") else "tiny", "auto", "", [])  # what the Load ReNeg Reward node returns
        result = refine_run.refine_conditioning(comfy_model, comfy_vae, [positive], negative, reward,
                                                prompts=[prompt], **kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        save_file({"best": result.best.detach().clone().contiguous(), "cond": cond.clone(), "init": init.clone()},
                  str(out / "comfy_refine.safetensors"))
    summary = {"trace": [float(x) for x in result.rows[0]["trace"]], "best_step": int(result.rows[0]["best_step"]),
               "pack": pack.__name__}
    (out / "comfy_refine.json").write_text(json.dumps(summary))
    return summary


def adapter_checks() -> dict:
    """Facts about :class:`ComfyBackend` on ComfyUI copies of the tiny models, vs the diffusers backend."""
    comfy_on_path()
    load_pack()
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    from reneg.comfy_nodes.model_adapter import ComfyBackend
    from reneg.core.errors import RenegError
    from reneg.core.tiny_models import load_tiny_backend

    facts: dict = {}
    torch.manual_seed(0)
    for name in ("tiny", "tiny-v"):
        ref = load_tiny_backend(name, fresh=True)
        model = comfy_model_from_diffusers(ref.unet, ref.prediction_type)
        vae = comfy_vae_from_diffusers(ref.vae)
        with torch.inference_mode():  # as in a node: inputs and weights are inference tensors
            x = torch.randn(2, 4, 8, 8)
            ctx = torch.randn(2, 77, ref.context_dim)
        with torch.inference_mode(False), torch.enable_grad():
            backend = ComfyBackend(model, vae).load()
            x, ctx = x.clone(), ctx.clone().requires_grad_(True)
            facts[name] = adapter_vs_reference(backend, ref, x, ctx, x)
        if name == "tiny":
            patched = ModelSamplingDiscrete().patch(model, "v_prediction", True)[0]
            b = ComfyBackend(patched, vae)
            facts["patched_v_zsnr"] = {"prediction_type": b.prediction_type,
                                       "alpha_T": float(b.alphas_cumprod[-1])}
            try:
                ComfyBackend(ModelSamplingDiscrete().patch(model, "x0", False)[0], vae)
                facts["x0_error"] = None
            except RenegError as exc:
                facts["x0_error"] = str(exc)
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("out")
    r = sub.add_parser("refine-equivalence")
    r.add_argument("out_dir")
    r.add_argument("--json", required=True, help="refine keyword arguments as JSON")
    sub.add_parser("adapter-checks")
    pc = sub.add_parser("pixart-checkpoint")
    pc.add_argument("out")
    px = sub.add_parser("pixart-checks")
    px.add_argument("--released", default=None, help="the released pixart-alpha_reneg_emb.bin, if available")
    args = p.parse_args(argv)
    comfy_on_path()
    if args.cmd == "checkpoint":
        print(build_sd15_checkpoint(args.out))
    elif args.cmd == "pixart-checkpoint":
        print(build_pixart_checkpoint(args.out))
    elif args.cmd == "pixart-checks":
        print(json.dumps(pixart_checks(args.released)))
    elif args.cmd == "adapter-checks":
        print(json.dumps(adapter_checks()))
    else:
        print(json.dumps(refine_equivalence(args.out_dir, **json.loads(args.json))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
