"""The ReNeg objective's gradient w.r.t. the negative: matches finite differences (fp64), vanishes at guidance 1,
and never reaches a model parameter."""
from __future__ import annotations

import pytest
import torch

from reneg.core.ddim import alpha_pair, ddim_timesteps, initial_latents, make_scheduler, sample
from reneg.core.objective import one_step_x0, reneg_objective
from reneg.core.tiny_models import load_tiny_backend

H = W = 64
STEPS = 4


class SmoothReward:
    """Private fp64 test reward (the library rewards compute in fp32): smooth, nonlinear, prompt-independent."""

    name = "fd-smooth"

    def to(self, device=None, dtype=None):
        return self

    def score(self, images, prompts):
        x = images.double()
        ramp = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype, device=x.device)
        return (x.mean(1) * ramp).mean((1, 2)) - 0.5 * ((x - 0.6) ** 2).mean((1, 2, 3)) + x[:, 0].std((1, 2))


@pytest.fixture(scope="module", params=["tiny", "tiny-v"])
def backend64(request):
    return load_tiny_backend(request.param, fresh=True).to(dtype=torch.float64)


def _setup(backend, batch=2):
    prompts = ["a cat on a sofa", "a red house"][:batch]
    cond = backend.encode_prompts(prompts)
    neg0 = backend.encode_prompts([""]).double()
    latents = torch.cat([initial_latents(backend, 1, H, W, s, dtype=torch.float64) for s in (3, 4)][:batch])
    return prompts, cond, neg0, latents


def _central_difference(f, x, v, eps):
    with torch.no_grad():
        return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@pytest.mark.parametrize("step_index", [0, 2])
def test_gradient_matches_central_differences(backend64, step_index):
    backend, reward = backend64, SmoothReward()
    prompts, cond, neg0, latents = _setup(backend)
    sched = make_scheduler(backend)

    neg = neg0.clone().requires_grad_(True)
    rewards, _ = reneg_objective(backend, reward, prompts, cond, neg, latents, step_index, STEPS, 7.5,
                                 scheduler=sched)
    (grad,) = torch.autograd.grad(rewards.sum(), neg)
    assert grad.abs().max() > 0

    # The objective is truncated: the DDIM prefix (x_T -> x_t) uses the negative *detached*. Its gradient is the
    # gradient of h(neg) = reward(decode(x0(x_t fixed, neg))), which is what we difference numerically.
    with torch.no_grad():
        x_t = sample(backend, cond, neg0, latents, STEPS, 7.5, scheduler=sched, stop_index=step_index)
    t = ddim_timesteps(sched, STEPS)[step_index]
    a_t, _ = alpha_pair(sched, t, STEPS)

    def h(n):
        x0 = one_step_x0(backend, x_t, t, cond, n, 7.5, a_t)  # a_t as the objective uses it
        return reward.score(backend.decode(x0), prompts).sum()

    if step_index == 0:  # no prefix: h is the full objective
        with torch.no_grad():
            full = reneg_objective(backend, reward, prompts, cond, neg0, latents, 0, STEPS, 7.5, scheduler=sched)[0]
        assert torch.allclose(full.sum(), h(neg0), rtol=0, atol=1e-12)

    gen = torch.Generator().manual_seed(0)
    directions = [torch.randn(neg0.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    top = grad.flatten().abs().argmax()
    e_top = torch.zeros_like(neg0).flatten()
    e_top[top] = 1.0
    directions.append(e_top.view_as(neg0))  # the single most sensitive coordinate
    for v in directions:
        v = v / v.norm()
        analytic = float((grad * v).sum())
        numeric = float(_central_difference(h, neg0, v, 1e-4))
        rel = abs(analytic - numeric) / max(abs(numeric), 1e-12)
        assert rel <= 1e-3, (analytic, numeric, rel)


def test_guidance_one_gives_exactly_zero_gradient(backend64):
    backend = backend64
    prompts, cond, neg0, latents = _setup(backend)
    neg = neg0.clone().requires_grad_(True)
    rewards, _ = reneg_objective(backend, SmoothReward(), prompts, cond, neg, latents, 1, STEPS, 1.0)
    (grad,) = torch.autograd.grad(rewards.sum(), neg)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_no_model_parameter_gets_a_gradient():
    from reneg.core.rewards import build_reward

    backend = load_tiny_backend("tiny", fresh=True)
    reward = build_reward("tiny")
    prompts, cond, _, latents = _setup(backend)
    neg = backend.encode_prompts([""]).float().clone().requires_grad_(True)
    rewards, _ = reneg_objective(backend, reward, prompts, cond, neg, latents.float(), 2, STEPS, 7.5)
    rewards.mean().backward()
    assert neg.grad is not None and neg.grad.abs().sum() > 0
    modules = {"unet": backend.unet, "vae": backend.vae, "text_encoder": backend.text_encoder,
               "reward": reward.model}
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            assert not p.requires_grad, f"{name}.{pname} is trainable"
            assert p.grad is None, f"{name}.{pname} received a gradient"
