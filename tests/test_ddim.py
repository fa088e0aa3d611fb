"""CFG-DDIM sampler: equivalence with diffusers' StableDiffusionPipeline (DDIM) and the pure functions."""
from __future__ import annotations

import pytest
import torch

from reneg.core.ddim import (ddim_step, ddim_timesteps, initial_latents, make_scheduler, sample,
                             split_prediction)


@pytest.mark.parametrize("backend_name", ["tiny_backend", "tiny_v_backend"])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_sampler_reproduces_stable_diffusion_pipeline(request, backend_name, guidance):
    backend = request.getfixturevalue(backend_name)
    cond = backend.encode_prompts(["a red house", "a cat on a mat"])
    neg = torch.randn(1, 77, backend.context_dim, generator=torch.Generator().manual_seed(1)) * 0.5
    latents = initial_latents(backend, 2, 64, 64, seed=7)
    ours = sample(backend, cond, neg, latents.clone(), num_inference_steps=6, guidance_scale=guidance)
    pipe = backend.pipeline()
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt_embeds=cond, negative_prompt_embeds=neg.expand(2, -1, -1), num_inference_steps=6,
               guidance_scale=guidance, latents=latents.clone(), output_type="latent").images
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5
    assert not torch.equal(ours, latents)


def test_negative_changes_the_result(tiny_backend):
    cond = tiny_backend.encode_prompts(["a tree"])
    lat = initial_latents(tiny_backend, 1, 64, 64, seed=0)
    null = tiny_backend.encode_prompts([""])
    a = sample(tiny_backend, cond, null, lat, 4, 7.5)
    b = sample(tiny_backend, cond, null + 1.0, lat, 4, 7.5)
    assert (a - b).abs().max() > 1e-3


def test_initial_latents_match_diffusers_generator(tiny_backend):
    lat = initial_latents(tiny_backend, 2, 64, 64, seed=123)
    ref = torch.randn((2, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(123))
    assert torch.equal(lat, ref)
    with pytest.raises(ValueError, match="multiples of 8"):
        initial_latents(tiny_backend, 1, 60, 64, seed=0)


def test_scheduler_from_alphas_only_matches_the_real_one(tiny_backend):
    real = make_scheduler(tiny_backend)

    class AlphasOnly:
        prediction_type = "epsilon"
        alphas_cumprod = tiny_backend.alphas_cumprod

    rebuilt = make_scheduler(AlphasOnly())
    assert torch.equal(ddim_timesteps(real, 30), ddim_timesteps(rebuilt, 30))
    assert torch.equal(rebuilt.alphas_cumprod, real.alphas_cumprod)
    assert ddim_timesteps(real, 30)[-10:].tolist() == [298, 265, 232, 199, 166, 133, 100, 67, 34, 1]


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_split_prediction_recovers_x0_and_eps(ptype):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    a = torch.tensor(0.3, dtype=torch.float64)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[ptype]
    got_x0, got_eps = split_prediction(out, x_t, a, ptype)
    assert torch.allclose(got_x0, x0) and torch.allclose(got_eps, eps)
    a_prev = torch.tensor(0.6, dtype=torch.float64)
    assert torch.allclose(ddim_step(got_x0, got_eps, a_prev), a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)
    with pytest.raises(ValueError):
        split_prediction(out, x_t, a, "flow")


def test_positive_longer_than_the_negative_runs_branches_separately(tiny_backend):
    cond77 = tiny_backend.encode_prompts(["a tree"])
    cond154 = torch.cat([cond77, tiny_backend.encode_prompts(["in autumn"])], dim=1)
    neg = tiny_backend.encode_prompts([""])
    lat = initial_latents(tiny_backend, 1, 64, 64, seed=0)
    long = sample(tiny_backend, cond154, neg, lat, 3, 7.5)
    short = sample(tiny_backend, cond77, neg, lat, 3, 7.5)
    assert long.shape == short.shape and torch.isfinite(long).all()
    assert (long - short).abs().max() > 0
