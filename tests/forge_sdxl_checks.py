"""Run in FORGE's venv (its transformers/diffusers): a tiny Forge SDXL engine from Forge's REAL classes, and the
facts tests/test_a1111_forge_sdxl.py asserts on (printed as one JSON line).

The engine is a real ``backend.diffusion_engine.sdxl.StableDiffusionXL`` (its own ``get_learned_conditioning``,
``embedder``) whose parts are small but built the way ``backend/loader.py`` builds them, under
``torch.inference_mode()``: ``IntegratedUNet2DConditionModel`` with an SDXL-type config (2048-wide context,
``adm_in_channels`` 2816, ``num_classes="sequential"``) in a ``UnetPatcher`` (KModel, SDXL's shipped scheduler
config), ``IntegratedAutoencoderKL`` with SDXL's scaling factor in a ``VAE``, and CLIP-L/bigG-width
``IntegratedCLIP`` text encoders (2 layers) with Forge's ``ClassicTextProcessingEngine`` and the tokenizers Forge
ships. Compared with Forge's own sampler path (``backend.sampling``: ``compile_conditions`` ->
``sampling_function_inner`` -> ``KModel.apply_model(..., y=vector)``).

    PYTHONPATH=<dir with a 'reneg' link to this checkout>:$FORGE_PATH:... $FORGE_PYTHON forge_sdxl_checks.py
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

#: the webui settings Forge's text engine and SDXL engine read (``modules.shared.opts``); the webui is not started
OPTS = types.SimpleNamespace(emphasis="Original", sdxl_crop_top=0, sdxl_crop_left=0,
                             textual_inversion_add_hashes_to_infotext=False)


def forge_imports(forge_path: Path) -> dict:
    sys.modules["modules.shared"] = types.SimpleNamespace(opts=OPTS)  # before any Forge import reads it
    argv, sys.argv = sys.argv, ["forge", "--always-cpu"]  # Forge parses its flags at import
    try:
        from backend.diffusion_engine import sdxl
        from backend.diffusion_engine.base import ForgeObjects
        from backend.nn.clip import IntegratedCLIP
        from backend.nn.unet import IntegratedUNet2DConditionModel, Timestep
        from backend.nn.vae import IntegratedAutoencoderKL
        from backend.operations import using_forge_operations
        from backend.patcher.clip import CLIP
        from backend.patcher.unet import UnetPatcher
        from backend.patcher.vae import VAE
        from backend.state_dict import load_state_dict
        from backend.text_processing.classic_engine import ClassicTextProcessingEngine
    finally:
        sys.argv = argv
    return locals()


UNET_CONFIG = dict(  # SDXL's structure (SpatialTransformer depths, linear proj, adm 2816), tiny widths
    in_channels=4, model_channels=32, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
    transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=1,
    use_spatial_transformer=True, context_dim=2048, num_head_channels=16, use_linear_in_transformer=True,
    num_classes="sequential", adm_in_channels=2816)


def build_engine(forge_path: Path, text_dtype: torch.dtype = torch.float32, seed: int = 0):
    """A real ``StableDiffusionXL`` engine object on tiny parts (all weights inference tensors, as in Forge)."""
    f = types.SimpleNamespace(**forge_imports(forge_path))
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, modeling_utils

    repo = forge_path / "backend" / "huggingface" / "stabilityai" / "stable-diffusion-xl-base-1.0"
    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(seed)

    def randomize(module):
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def clip(width: int):
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, projection_dim=width,
                             hidden_act="gelu")
        with modeling_utils.no_init_weights(), f.using_forge_operations(  # as backend/loader.py builds it
                device=cpu, dtype=text_dtype, manual_cast_enabled=True):
            model = f.IntegratedCLIP(CLIPTextModel, cfg, add_text_projection=True).to(device=cpu, dtype=text_dtype)
        with torch.random.fork_rng(devices=[]):  # the weights a checkpoint would hold (fp16-rounded, seeded)
            torch.manual_seed(seed + width)
            weights = {"transformer." + k: v for k, v in CLIPTextModel(cfg).state_dict().items()}
            weights["transformer.text_projection.weight"] = torch.randn(width, width) * width ** -0.5
        f.load_state_dict(model, {k: v.half().to(text_dtype) for k, v in weights.items()},
                          ignore_errors=["transformer.text_model.embeddings.position_ids"])
        return model

    with torch.inference_mode():
        unet = f.IntegratedUNet2DConditionModel.from_config(UNET_CONFIG)
        randomize(unet)
        unet.storage_dtype = unet.computation_dtype = torch.float32
        unet.load_device = unet.initial_device = unet.offload_device = cpu
        scheduler = EulerDiscreteScheduler.from_pretrained(str(repo / "scheduler"))
        patcher = f.UnetPatcher.from_model(model=unet, diffusers_scheduler=scheduler, config=None)
        vae = f.IntegratedAutoencoderKL.from_config(dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64, scaling_factor=0.13025))
        randomize(vae)
        clip_l, clip_g = clip(768), clip(1280)
        clip_obj = f.CLIP(model_dict={"clip_l": clip_l, "clip_g": clip_g},
                          tokenizer_dict={"clip_l": CLIPTokenizer.from_pretrained(str(repo / "tokenizer")),
                                          "clip_g": CLIPTokenizer.from_pretrained(str(repo / "tokenizer_2"))})
        common = dict(embedding_dir=None, embedding_expected_shape=2048, emphasis_name="Original",
                      minimal_clip_skip=2, clip_skip=2, final_layer_norm=False)  # as sdxl.py builds them
        engine = f.sdxl.StableDiffusionXL.__new__(f.sdxl.StableDiffusionXL)  # no checkpoint: set what __init__ sets
        engine.text_processing_engine_l = f.ClassicTextProcessingEngine(
            text_encoder=clip_obj.cond_stage_model.clip_l, tokenizer=clip_obj.tokenizer.clip_l,
            embedding_key="clip_l", text_projection=False, return_pooled=False, **common)
        engine.text_processing_engine_g = f.ClassicTextProcessingEngine(
            text_encoder=clip_obj.cond_stage_model.clip_g, tokenizer=clip_obj.tokenizer.clip_g,
            embedding_key="clip_g", text_projection=True, return_pooled=True, **common)
        engine.embedder = f.Timestep(256)
        engine.forge_objects = f.ForgeObjects(unet=patcher, clip=clip_obj, vae=f.VAE(model=vae), clipvision=None)
        engine.is_sdxl = True
    return engine, f


def conditioning(prompts, width=None, height=None, negative=False):
    """Forge's ``prompt_parser.SdConditioning`` (what processing.py passes to get_learned_conditioning)."""
    from modules.prompt_parser import SdConditioning

    return SdConditioning(list(prompts), width=width, height=height, is_negative_prompt=negative)


def maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def main() -> None:
    import os

    forge_path = Path(os.environ["FORGE_PATH"])
    engine, f = build_engine(forge_path)
    from backend.sampling.condition import compile_conditions
    from backend.sampling.sampling_function import sampling_function_inner

    from reneg.a1111_extension.forge_sdxl_backend import ForgeSDXLBackend
    from reneg.a1111_extension.model_adapter import backend_for
    from reneg.a1111_extension.uncond import UncondPlan, replace_uncond
    from reneg.core.errors import RenegError
    from reneg.core.sdxl_backend import pack, packed_frozen_entries

    facts: dict = {}
    backend = backend_for(engine)
    facts["backend_class"] = type(backend).__name__
    facts["family"], facts["context_dim"], facts["prediction_type"] = (backend.family, backend.context_dim,
                                                                       backend.prediction_type)

    # 1. the size embedding equals what the engine's own get_learned_conditioning puts in vector[:, 1280:]
    sizes = []
    for h, w, top, left in ((64, 64, 0, 0), (64, 96, 0, 0), (1024, 768, 16, 8)):
        OPTS.sdxl_crop_top, OPTS.sdxl_crop_left = top, left
        forge_vec = engine.get_learned_conditioning(conditioning(["a cat"], width=w, height=h))["vector"]
        ours = backend.size_embedding(h, w)
        sizes.append(dict(size=[h, w, top, left], shape=list(ours.shape), forge_shape=list(forge_vec.shape),
                          max_diff=maxdiff(ours, forge_vec[:, 1280:])))
    OPTS.sdxl_crop_top = OPTS.sdxl_crop_left = 0
    facts["size_embedding"] = sizes

    # 2. prompts: Forge's own conditioning, packed, fp32; "" is the encoded null text (not Forge's zeroed negative)
    prompts = ["a cat", ""]
    packed = backend.encode_prompts(prompts)
    forge = engine.get_learned_conditioning(prompts)
    facts["encode"] = dict(
        shape=list(packed.shape), dtype=str(packed.dtype), is_inference=bool(packed.is_inference()),
        max_diff=maxdiff(packed, pack(forge["crossattn"], forge["vector"][:, :1280])),
        null_abs_sum=float(packed[1].abs().sum()))
    neg_empty = engine.get_learned_conditioning(conditioning([""], 64, 64, negative=True))
    facts["forge_empty_negative_abs_sum"] = float(neg_empty["crossattn"].abs().sum() +
                                                  neg_empty["vector"][:, :1280].abs().sum())
    long_prompt = ", ".join(["a very detailed photo of a small cat"] * 12)
    facts["long_prompt_shape"] = list(backend.encode_prompts([long_prompt]).shape)

    # 3. model_output == Forge's sampler on the {'crossattn', 'vector'} the webui gives it (x0 at sigma)
    backend.prepare_for_grad()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 12, generator=g)
    t = torch.tensor([700, 40])
    negative = pack(torch.randn(1, 77, 2048, generator=g) * 0.5, torch.randn(1, 1280, generator=g))
    cond_packed = backend.encode_prompts(["a cat", "a dog"])
    a = backend.alphas_cumprod[t]
    sigma = ((1 - a) / a).sqrt()
    x_k = latents / a.sqrt()[:, None, None, None]
    with torch.no_grad():
        ours_cond = backend.model_output(latents, t, cond_packed)
        ours_neg = backend.model_output(latents, t, negative.expand(2, -1, -1))
    width, height = latents.shape[-1] * 8, latents.shape[-2] * 8
    with torch.inference_mode():
        text_cond = engine.get_learned_conditioning(conditioning(["a cat", "a dog"], width, height))
        text_uncond = engine.get_learned_conditioning(conditioning(["blurry", "blurry"], width, height, True))
        plan = UncondPlan(negative)
        replaced = replace_uncond(text_uncond, plan)  # what the on_cfg_denoiser hook gives Forge's sampler
        model_options = engine.forge_objects.unet.model_options
        kmodel = engine.forge_objects.unet.model
        cfg, cond_pred, uncond_pred = sampling_function_inner(
            kmodel, x_k, sigma, compile_conditions(replaced), compile_conditions(text_cond), 5.0, model_options,
            seed=0, return_full=True)
    facts["sampler"] = dict(
        cond_max_diff=maxdiff(ours_cond, cond_pred), uncond_max_diff=maxdiff(ours_neg, uncond_pred),
        x0_scale=float(uncond_pred.abs().max()), applied=plan.applied,
        uncond_size_kept=maxdiff(replaced["vector"][:, 1280:], text_uncond["vector"][:, 1280:]),
        uncond_pooled_is_file=maxdiff(replaced["vector"][:, :1280], negative[:, 77, :1280].expand(2, -1)),
        uncond_context_is_file=maxdiff(replaced["crossattn"], negative[:, :77].expand(2, -1, -1)),
        neg_vs_cond_diff=maxdiff(ours_neg, ours_cond))

    # 4. gradients reach the context and the pooled part, never the pooled row's padding
    n = negative.clone().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        backend.model_output(latents, t, n.expand(2, -1, -1)).square().mean().backward()
    facts["grad"] = dict(context=float(n.grad[:, :77].abs().sum()), pooled=float(n.grad[:, 77, :1280].abs().sum()),
                         padding=float(n.grad[:, 77, 1280:].abs().sum()))
    facts["frozen_equal"] = bool(torch.equal(backend.frozen_entries(negative), packed_frozen_entries(negative))
                                 and torch.equal(backend.frozen_entries(negative, True),
                                                 packed_frozen_entries(negative, True)))
    try:
        backend.model_output(latents, t, torch.zeros(2, 77, 2048))
        facts["unpacked_error"] = None
    except RenegError as exc:
        facts["unpacked_error"] = str(exc)

    # 5. decode (inherited) and a short refinement on this engine: never worse than its start, padding kept
    from reneg.core.refine import refine_negative
    from reneg.core.rewards import build_reward

    with torch.no_grad():
        img = backend.decode(torch.randn(1, 4, 8, 8, generator=g))
    facts["decode_shape"] = list(img.shape)
    with torch.inference_mode(False), torch.enable_grad():
        result = refine_negative(backend, build_reward("synthetic"), "a cat", negative.clone(), seed=3,
                                 max_steps=3, patience=3, lr=5e-2, num_inference_steps=4, guidance_scale=5.0,
                                 height=64, width=64)
    best = result.best
    facts["refine"] = dict(start=float(result.start_reward), best=float(result.best_reward),
                           shape=list(best.shape), padding_abs=float(best[:, 77, 1280:].abs().sum()),
                           changed=maxdiff(best, negative))

    # 6. a non-SDXL-base engine (the refiner: bigG only, no size embedder of its kind) is refused
    refiner = f.sdxl.StableDiffusionXLRefiner.__new__(f.sdxl.StableDiffusionXLRefiner)
    refiner.is_sdxl, refiner.forge_objects = True, engine.forge_objects
    refiner.text_processing_engine_g, refiner.embedder = engine.text_processing_engine_g, engine.embedder
    try:
        backend_for(refiner)
        facts["refiner_error"] = None
    except RenegError as exc:
        facts["refiner_error"] = str(exc)
    facts["is_forge_sdxl_backend"] = isinstance(backend, ForgeSDXLBackend)

    # 7. text encoding precision: fp16-stored text encoders give the fp32-stored encoding (Forge computes in fp32)
    engine16, _ = build_engine(forge_path, text_dtype=torch.float16)  # the same fp16-rounded weights, stored
    engine32, _ = build_engine(forge_path, text_dtype=torch.float32)  # as fp16 and as fp32
    p16 = ForgeSDXLBackend(engine16).encode_prompts(["", "a red cube"])
    p32 = ForgeSDXLBackend(engine32).encode_prompts(["", "a red cube"])
    facts["fp16_storage"] = dict(dtype=str(p16.dtype), max_diff=maxdiff(p16, p32), scale=float(p32.abs().max()))
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
