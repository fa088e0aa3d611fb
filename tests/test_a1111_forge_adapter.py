"""Opt-in: the Forge adapter on Forge's REAL backend classes (IntegratedUNet2DConditionModel, KModel/UnetPatcher,
IntegratedAutoencoderKL/VAE, memory management on CPU), loaded under ``torch.inference_mode()`` as Forge loads
them, with the tiny ldm checkpoint's weights; compared with the A1111 (ldm) adapter on the same weights.

Set ``FORGE_PATH`` to a stable-diffusion-webui-forge checkout whose ``repositories/huggingface_guess`` is cloned
(or set ``HUGGINGFACE_GUESS_PATH``); ``gguf`` comes from its ``packages_3rdparty/``. Like the A1111_PATH
end-to-end test this is skipped unless configured.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

FORGE_PATH = os.environ.get("FORGE_PATH")
pytestmark = pytest.mark.skipif(
    not FORGE_PATH, reason="opt-in like the A1111_PATH e2e: set FORGE_PATH to a Forge checkout to run")

pytest.importorskip("pytorch_lightning", reason="ldm's LatentDiffusion needs pytorch_lightning")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(Forge adapter, ldm adapter) on the same tiny weights."""
    from reneg.a1111_extension.model_adapter import ForgeBackend, LdmBackend
    from a1111_tiny_checkpoint import (build_ldm, ensure_ldm_importable, ldm_config,
                                                       write_text_encoder)

    ensure_ldm_importable()
    guess = os.environ.get("HUGGINGFACE_GUESS_PATH", str(Path(FORGE_PATH) / "repositories" / "huggingface_guess"))
    argv = sys.argv
    sys.path[:0] = [FORGE_PATH, guess, str(Path(FORGE_PATH) / "packages_3rdparty")]  # Forge vendors gguf there
    sys.argv = ["forge", "--always-cpu"]  # Forge parses its flags at import
    try:
        from backend.nn.unet import IntegratedUNet2DConditionModel
        from backend.nn.vae import IntegratedAutoencoderKL
        from backend.patcher.unet import UnetPatcher
        from backend.patcher.vae import VAE
        from huggingface_guess.detection import detect_unet_config
    finally:
        sys.argv = argv
    from diffusers import DDIMScheduler
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    te = write_text_encoder(tmp_path_factory.mktemp("te"), "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ldm = build_ldm("tiny", te)
        sd = ldm.state_dict()
        with torch.inference_mode():  # as Forge's loader does: every weight becomes an inference tensor
            unet_prefix, vae_prefix = "model.diffusion_model.", "first_stage_model."
            unet_config = detect_unet_config(sd, unet_prefix)
            unet_config.update(num_heads=4, num_head_channels=-1)  # not in the weights: a model list supplies it
            unet = IntegratedUNet2DConditionModel.from_config(unet_config)
            unet.load_state_dict({k[len(unet_prefix):]: v.clone() for k, v in sd.items() if k.startswith(unet_prefix)})
            unet.storage_dtype = unet.computation_dtype = torch.float32
            unet.load_device = unet.initial_device = unet.offload_device = torch.device("cpu")
            scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear", prediction_type="epsilon")
            patcher = UnetPatcher.from_model(model=unet, diffusers_scheduler=scheduler, config=None)
            vae_cfg = create_vae_diffusers_config_from_ldm(ldm_config("tiny"), sd)
            vae = IntegratedAutoencoderKL.from_config(vae_cfg)
            vae.load_state_dict({k[len(vae_prefix):]: v.clone() for k, v in sd.items()
                                 if k.startswith(vae_prefix) and not k.startswith(vae_prefix + "loss.")})
            vae_wrapper = VAE(model=vae)
    assert first_is_inference(unet)
    webui_model = SimpleNamespace(  # the attributes of Forge's shared.sd_model the adapter reads
        forge_objects=SimpleNamespace(unet=patcher, vae=vae_wrapper), is_sdxl=False,
        get_learned_conditioning=lambda prompts: ldm.get_learned_conditioning(prompts))
    return ForgeBackend(webui_model, name="forge-tiny"), LdmBackend(ldm, name="ldm-tiny")


def first_is_inference(module) -> bool:
    return next(module.parameters()).is_inference()


def test_inference_weights_block_backward_until_prepared(pair):
    forge, _ = pair
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 77, 768, requires_grad=True)
    if first_is_inference(forge.unet):
        with pytest.raises(RuntimeError, match="[Ii]nference"):
            forge.model_output(x, 500, ctx).sum().backward()
    assert forge.prepare_for_grad() >= 0
    assert not first_is_inference(forge.unet) and not first_is_inference(forge.vae)
    forge.model_output(x, 500, ctx).square().mean().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_forge_x0_and_decode_match_the_ldm_adapter(pair):
    from reneg.core.ddim import split_prediction

    forge, ldm = pair
    forge.prepare_for_grad()
    assert forge.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(forge.alphas_cumprod, ldm.alphas_cumprod, rtol=1e-5, atol=1e-6)
    assert forge.context_dim == ldm.context_dim == 768
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([900, 40])
    with torch.no_grad():
        x0_forge = forge.model_output(x, t, ctx)  # "sample" prediction
        eps = ldm.model_output(x, t, ctx)
    x0_ldm, _ = split_prediction(eps, x, ldm.alphas_cumprod[t][:, None, None, None], "epsilon")
    torch.testing.assert_close(x0_forge, x0_ldm, rtol=1e-3, atol=1e-4)
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(forge.decode(z), ldm.decode(z), rtol=1e-4, atol=1e-5)


def test_sampling_and_objective_gradient_match(pair):
    from reneg.core.ddim import initial_latents, sample
    from reneg.core.objective import reneg_objective
    from reneg.core.rewards import build_reward

    forge, ldm = pair
    forge.prepare_for_grad()
    cond = ldm.encode_prompts(["a red cube"])
    torch.testing.assert_close(forge.encode_prompts(["a red cube"]), cond)
    neg = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)) * 0.5
    lat = initial_latents(ldm, 1, 64, 64, seed=2)
    torch.testing.assert_close(sample(forge, cond, neg, lat, 4, 5.0), sample(ldm, cond, neg, lat, 4, 5.0),
                               rtol=1e-3, atol=1e-3)
    grads = []
    for be in (forge, ldm):
        n = neg.clone().requires_grad_(True)
        r, _ = reneg_objective(be, build_reward("synthetic"), ["a red cube"], cond, n, lat, step_index=3,
                               num_inference_steps=4, guidance_scale=5.0)
        r.sum().backward()
        grads.append(n.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=1e-6)



FORGE_TEXT_PRECISION = r"""
import json, sys, types
import torch
sys.argv = ["forge", "--always-cpu"]  # Forge parses its flags at import
# Forge's text engine reads one webui setting (the emphasis mode) from modules.shared, which would start the
# whole webui (gradio): give it the webui's default setting instead.
sys.modules["modules.shared"] = types.SimpleNamespace(opts=types.SimpleNamespace(emphasis="Original"))
from backend.nn.clip import IntegratedCLIP
from backend.operations import using_forge_operations
from backend.patcher.clip import CLIP
from backend.text_processing.classic_engine import ClassicTextProcessingEngine
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, modeling_utils

te = sys.stdin.readline().strip()
weights = {k: v.half() for k, v in CLIPTextModel.from_pretrained(te).state_dict().items()}
out = {}
for name, storage in (("fp16", torch.float16), ("fp32", torch.float32)):
    cpu = torch.device("cpu")
    with modeling_utils.no_init_weights(), using_forge_operations(  # as backend/loader.py builds it
            device=cpu, dtype=storage, manual_cast_enabled=True):
        model = IntegratedCLIP(CLIPTextModel, CLIPTextConfig.from_pretrained(te), add_text_projection=True)
        model = model.to(device=cpu, dtype=storage)
    model.transformer.load_state_dict({k: v.to(storage) for k, v in weights.items()}, strict=False)
    clip = CLIP(model_dict={"clip_l": model}, tokenizer_dict={"clip_l": CLIPTokenizer.from_pretrained(te)})
    engine = ClassicTextProcessingEngine(  # as backend/diffusion_engine/sd15.py builds it
        text_encoder=clip.cond_stage_model.clip_l, tokenizer=clip.tokenizer.clip_l, embedding_key="clip_l",
        embedding_expected_shape=768, text_projection=False, minimal_clip_skip=1, clip_skip=1,
        return_pooled=False, final_layer_norm=True)
    with torch.no_grad():
        out[name] = engine(["", "a red cube"])
    out[name + "_storage"] = str(model.transformer.text_model.encoder.layers[0].self_attn.q_proj.weight.dtype)
print(json.dumps({"dtype": str(out["fp16"].dtype), "shape": list(out["fp16"].shape),
                  "max_diff": float((out["fp16"].float() - out["fp32"].float()).abs().max()),
                  "storage": [out["fp16_storage"], out["fp32_storage"]]}))
"""


def test_forge_computes_the_text_encoding_in_fp32_whatever_its_storage_dtype(tmp_path):
    """The null-text start of training is encoded in fp32 (issue 10). Forge builds its CLIP as ``backend/loader.py``
    does (forge operations with manual cast: weights stored in the text-encoder dtype, cast to the input's dtype)
    and its text engine casts the token/position embeddings to fp32, so every layer computes in fp32 whatever the
    storage dtype. Checked in Forge's own venv (its transformers): fp16-stored weights give the fp32-stored
    encoding of the same (fp16-rounded) weights, to fp32 rounding. So ``ForgeBackend.encode_prompts`` (Forge's
    own call) is already the fp32 encoding (measured: difference 0.0; fp16 compute of the same weights: 3.9e-3)."""
    import json
    import subprocess

    from a1111_tiny_checkpoint import write_text_encoder

    forge_python = os.environ.get("FORGE_PYTHON")
    if not forge_python:
        pytest.skip("set FORGE_PYTHON (Forge's venv python; tests/hosts/setup_hosts.py writes it to hosts.env)")
    te = write_text_encoder(tmp_path, "tiny")
    guess = os.environ.get("HUGGINGFACE_GUESS_PATH", str(Path(FORGE_PATH) / "repositories" / "huggingface_guess"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FORGE_PATH, guess, str(Path(FORGE_PATH) / "packages_3rdparty")]))
    proc = subprocess.run([forge_python, "-c", FORGE_TEXT_PRECISION], input=f"{te}\n", capture_output=True,
                          text=True, cwd=FORGE_PATH, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["storage"] == ["torch.float16", "torch.float32"]  # Forge's weights stay as stored
    assert got["dtype"] == "torch.float32" and got["shape"] == [2, 77, 768]
    assert got["max_diff"] <= 1e-5, got
