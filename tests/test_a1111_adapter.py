"""A1111 model adapter on a tiny model built from the REAL ldm classes (PyPI stable-diffusion-sdkit's ``ldm``,
the same LatentDiffusion/UNetModel/AutoencoderKL/FrozenCLIPEmbedder code A1111 loads from
``repositories/stable-diffusion-stability-ai``), checked against ldm's own math and against the core's diffusers
backend on the same weights (converted with diffusers' single-file conversion utilities)."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("pytorch_lightning", reason="ldm's LatentDiffusion needs pytorch_lightning")
from a1111_tiny_checkpoint import ensure_ldm_importable  # noqa: E402

ensure_ldm_importable()
pytest.importorskip("ldm.models.diffusion.ddpm", reason="needs PyPI stable-diffusion-sdkit (pip install --no-deps)")

from reneg.a1111_extension import model_adapter as ma  # noqa: E402
from a1111_tiny_checkpoint import (build_ldm, diffusers_components_from_ldm,  # noqa: E402
                                                   write_text_encoder)
from reneg.core.ddim import initial_latents, make_scheduler, sample, split_prediction  # noqa: E402
from reneg.core.diffusers_backend import DiffusersBackend  # noqa: E402
from reneg.core.errors import RenegError  # noqa: E402
from reneg.core.objective import reneg_objective  # noqa: E402
from reneg.core.rewards import build_reward  # noqa: E402

KINDS = ["tiny", "tiny-v"]


@pytest.fixture(scope="module", params=KINDS)
def models(request, tmp_path_factory):
    """(kind, ldm LatentDiffusion, LdmBackend, DiffusersBackend on the same weights)."""
    kind = request.param
    te_dir = write_text_encoder(tmp_path_factory.mktemp(f"te-{kind}"), kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ldm_model = build_ldm(kind, te_dir)
        parts = diffusers_components_from_ldm(ldm_model, kind)
    text_encoder = ldm_model.cond_stage_model.transformer  # the very same module
    tokenizer = ldm_model.cond_stage_model.tokenizer
    diff = DiffusersBackend(parts["unet"], parts["vae"], text_encoder, tokenizer, parts["scheduler"], name=kind)
    return kind, ldm_model, ma.LdmBackend(ldm_model, name=kind), diff


def _inputs(backend, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    ctx = torch.randn(batch, 77, backend.context_dim, generator=g)
    return x, ctx


def test_backend_metadata(models):
    kind, ldm_model, backend, diff = models
    assert backend.prediction_type == {"tiny": "epsilon", "tiny-v": "v_prediction"}[kind]
    assert backend.context_dim == diff.context_dim == {"tiny": 768, "tiny-v": 1024}[kind]
    assert backend.latent_channels == 4 and backend.vae_scale_factor == diff.vae_scale_factor == 8
    assert backend.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(backend.alphas_cumprod, diff.alphas_cumprod, rtol=1e-6, atol=1e-7)
    assert all(not p.requires_grad for p in ldm_model.parameters())


def test_model_output_is_ldm_apply_model_and_matches_diffusers(models):
    _, ldm_model, backend, diff = models
    x, ctx = _inputs(backend)
    t = torch.tensor([999, 37])
    with torch.no_grad():
        ours = backend.model_output(x, t, ctx)
        direct = ldm_model.apply_model(x, t, ctx)  # ldm wraps a bare tensor as c_crossattn itself
        theirs = diff.model_output(x, t, ctx)
    torch.testing.assert_close(ours, direct)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # a scalar timestep broadcasts to the batch
    with torch.no_grad():
        torch.testing.assert_close(backend.model_output(x[1:], 37, ctx[1:]), ours[1:], rtol=1e-5, atol=1e-6)


def test_prediction_conversion_agrees_with_ldm(models):
    """The core's x0/eps from the adapter output equal ldm's own predict_* for eps and v models."""
    kind, ldm_model, backend, _ = models
    x, ctx = _inputs(backend, seed=1)
    t = torch.tensor([500, 120])
    with torch.no_grad():
        out = backend.model_output(x, t, ctx)
    a_t = backend.alphas_cumprod[t][:, None, None, None]
    x0, eps = split_prediction(out, x, a_t, backend.prediction_type)
    if kind == "tiny":
        torch.testing.assert_close(x0, ldm_model.predict_start_from_noise(x, t, out), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eps, out)
    else:
        torch.testing.assert_close(x0, ldm_model.predict_start_from_z_and_v(x, t, out), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eps, ldm_model.predict_eps_from_z_and_v(x, t, out), rtol=1e-5, atol=1e-5)
        # and v is what ldm's training target get_v defines for (x0, eps)
        torch.testing.assert_close(ldm_model.get_v(x0, eps, t), out, rtol=1e-4, atol=1e-4)


def test_gradient_reaches_context_only(models):
    _, ldm_model, backend, _ = models
    x, ctx = _inputs(backend, batch=1, seed=2)
    ctx.requires_grad_(True)
    with torch.no_grad():  # A1111 runs process_batch under no_grad: the adapter is used under enable_grad
        with torch.enable_grad():
            backend.model_output(x, 400, ctx).square().mean().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in ldm_model.parameters())


def test_decode_is_differentiable_and_equals_decode_first_stage(models):
    _, ldm_model, backend, diff = models
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    img = backend.decode(z)
    assert img.shape == (1, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    ref = ldm_model.decode_first_stage(z)  # A1111's path: @torch.no_grad, in [-1, 1]
    assert ref.grad_fn is None
    torch.testing.assert_close(img, ((ref + 1) / 2).clamp(0, 1))
    with torch.no_grad():
        torch.testing.assert_close(img, diff.decode(z), rtol=1e-4, atol=1e-5)
    img.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_encode_prompts_matches_diffusers(models):
    _, _, backend, diff = models
    prompts = ["a photo of a cat", ""]
    torch.testing.assert_close(backend.encode_prompts(prompts), diff.encode_prompts(prompts))


def test_sampling_and_objective_equal_diffusers_path(models):
    """Full CFG-DDIM and the ReNeg objective gradient agree between the ldm adapter and diffusers."""
    _, _, backend, diff = models
    prompts = ["a red cube"]
    cond = backend.encode_prompts(prompts)
    neg = torch.randn(1, 77, backend.context_dim, generator=torch.Generator().manual_seed(4)) * 0.5
    lat = initial_latents(backend, 1, 64, 64, seed=5)
    a = sample(backend, cond, neg, lat, num_inference_steps=4, guidance_scale=5.0)
    b = sample(diff, cond, neg, lat, num_inference_steps=4, guidance_scale=5.0)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    # The adapter has no scheduler config: the core builds DDIM from its alphas_cumprod; same timesteps.
    assert make_scheduler(backend).timesteps.tolist() == make_scheduler(diff).timesteps.tolist()

    reward = build_reward("synthetic")
    grads = []
    for be in (backend, diff):
        n = neg.clone().requires_grad_(True)
        r, images = reneg_objective(be, reward, prompts, cond, n, lat, step_index=3, num_inference_steps=4,
                                    guidance_scale=5.0)
        r.sum().backward()
        grads.append((r.detach(), n.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5)
    assert grads[0][1].abs().sum() > 0
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-7)


def test_multi_chunk_prompt_conditioning(models):
    """A1111 gives prompts over 75 tokens as [1, 77*k, D]; CFG with a 77-token negative still matches diffusers."""
    _, _, backend, diff = models
    cond = torch.cat([backend.encode_prompts(["a red cube"]), backend.encode_prompts(["on a wooden table"])], dim=1)
    assert cond.shape[1] == 154
    neg = torch.randn(1, 77, backend.context_dim, generator=torch.Generator().manual_seed(8)) * 0.5
    lat = initial_latents(backend, 1, 64, 64, seed=9)
    torch.testing.assert_close(sample(backend, cond, neg, lat, 3, 5.0), sample(diff, cond, neg, lat, 3, 5.0),
                               rtol=1e-3, atol=1e-4)


def test_uses_alphas_cumprod_original(models):
    """A1111 may downcast/rescale ``alphas_cumprod`` per generation; the adapter uses the fp32 original."""
    _, ldm_model, _, _ = models
    original = ldm_model.alphas_cumprod
    ldm_model.alphas_cumprod_original = original
    try:
        ldm_model.alphas_cumprod = original.half()
        backend = ma.LdmBackend(ldm_model)
        assert backend.alphas_cumprod.dtype == torch.float32
        torch.testing.assert_close(backend.alphas_cumprod, original.float())
    finally:
        ldm_model.alphas_cumprod = original
        del ldm_model.alphas_cumprod_original


def test_gradient_checkpointing_keeps_gradients(models):
    _, ldm_model, backend, _ = models
    x, ctx = _inputs(backend, batch=1, seed=6)

    def grad():
        c = ctx.clone().requires_grad_(True)
        backend.decode(backend.model_output(x, 250, c)).mean().backward()
        return c.grad

    plain = grad()
    with backend.gradient_checkpointing() as wrapped:
        assert wrapped > 0
        ckpt = grad()
    assert all("forward" not in m.__dict__ for m in ldm_model.modules())  # restored
    torch.testing.assert_close(plain, ckpt)


def test_refuses_low_and_medvram():
    with pytest.raises(RenegError, match="--lowvram"):
        ma.check_memory_flags(SimpleNamespace(lowvram=True, medvram=False))
    with pytest.raises(RenegError, match="--medvram"):
        ma.check_memory_flags(SimpleNamespace(lowvram=False, medvram=True))
    ma.check_memory_flags(SimpleNamespace(lowvram=False, medvram=False))


def test_refuses_unsupported_models(models):
    _, ldm_model, _, _ = models
    with pytest.raises(RenegError, match="SDXL"):
        ma.check_ldm_model(SimpleNamespace(is_sdxl=True))
    with pytest.raises(RenegError, match="LatentDiffusion"):
        ma.backend_for(SimpleNamespace(apply_model=None))
    key = ldm_model.model.conditioning_key
    try:
        ldm_model.model.conditioning_key = "hybrid"  # what an inpainting checkpoint has
        with pytest.raises(RenegError, match="inpainting"):
            ma.LdmBackend(ldm_model)
    finally:
        ldm_model.model.conditioning_key = key
    with pytest.raises(RenegError, match="No Stable Diffusion model"):
        ma.backend_for(None)


def test_inference_tensors_are_cloned_for_backward():
    """Forge loads weights under inference_mode; such weights cannot be saved for backward until cloned."""
    with torch.inference_mode():
        lin = torch.nn.Linear(4, 4)
        lin.register_buffer("scale", torch.ones(4))
    lin.requires_grad_(False)
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        (lin(x) * lin.scale).sum().backward()
    assert ma._clone_inference_tensors(lin) == 3
    (lin(x) * lin.scale).sum().backward()
    assert x.grad is not None and not lin.weight.requires_grad
