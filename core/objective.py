"""The ReNeg training forward (paper Sec. 3): reward of a one-step x0 prediction, differentiable in the negative.

DDIM runs from x_T to step ``step_index`` without grad (CFG with the *current* negative, detached); at that step
the conditional branch is evaluated without grad and the uncond branch (the negative) with grad; the guided output
gives a one-step ``x0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ`` (v- and x0-prediction handled), which is decoded and scored.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .ddim import alpha_pair, ddim_timesteps, guided_output, make_scheduler, sample, split_prediction
from .embedding_io import broadcast_negative, check_compatible
from .model_boundary import DiffusionBackend
from .rewards.base import Reward


def draw_step_index(num_inference_steps: int, last_k: int, generator: Optional[torch.Generator] = None) -> int:
    """A DDIM step index drawn uniformly from the last ``last_k`` of ``num_inference_steps`` steps."""
    last_k = max(1, min(last_k, num_inference_steps))
    return num_inference_steps - last_k + int(torch.randint(last_k, (1,), generator=generator))


def one_step_x0(backend: DiffusionBackend, x_t: torch.Tensor, timestep, cond: torch.Tensor,
                negative: torch.Tensor, guidance_scale: float, alpha_prod_t: torch.Tensor) -> torch.Tensor:
    """Guided x0 prediction at ``x_t``; the only place where the negative receives gradient."""
    with torch.no_grad():
        cond_out = backend.model_output(x_t, timestep, cond)
    neg = broadcast_negative(negative, x_t.shape[0]).to(cond.dtype)
    uncond_out = backend.model_output(x_t, timestep, neg)
    out = guided_output(uncond_out, cond_out, guidance_scale)
    x0, _ = split_prediction(out, x_t, alpha_prod_t.to(x_t.device), backend.prediction_type)
    return x0


def reneg_objective(backend: DiffusionBackend, reward: Reward, prompts: Sequence[str], cond: torch.Tensor,
                    negative: torch.Tensor, latents_T: torch.Tensor, step_index: int,
                    num_inference_steps: int = 30, guidance_scale: float = 7.5, *, scheduler=None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``[B]`` and decoded one-step images ``[B,3,H,W]`` for a batch; differentiable in ``negative``."""
    check_compatible(negative, backend.context_dim)
    if len(prompts) != latents_T.shape[0] or cond.shape[0] != latents_T.shape[0]:
        raise ValueError("prompts, cond and latents_T must have the same batch size.")
    sched = scheduler if scheduler is not None else make_scheduler(backend)
    x_t = sample(backend, cond, negative.detach(), latents_T, num_inference_steps, guidance_scale,
                 scheduler=sched, stop_index=step_index)
    t = ddim_timesteps(sched, num_inference_steps)[step_index]
    a_t, _ = alpha_pair(sched, t, num_inference_steps)
    x0 = one_step_x0(backend, x_t, t, cond, negative, guidance_scale, a_t)
    images = backend.decode(x0)
    return reward.score(images, list(prompts)), images
