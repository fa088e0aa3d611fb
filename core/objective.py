"""The ReNeg training forward (paper Sec. 3): reward of a one-step x0 prediction, differentiable in the negative.

DDIM runs from x_T to step ``step_index`` without grad (CFG with the *current* negative, detached); at that step
the conditional branch is evaluated without grad and the uncond branch (the negative) with grad; the guided output
gives a one-step ``x0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ`` (v- and x0-prediction handled), which is decoded and scored.

``step_index`` may be one index for the batch or one per row: the no-grad prefix then runs to the largest index
(a row leaves the batch at its own index, :func:`~.ddim.sample_rows`) and the grad step uses per-row timesteps.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .ddim import alpha_pair, ddim_timesteps, guided_output, make_scheduler, sample_rows, split_prediction
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


StepIndex = Union[int, Sequence[int]]


def row_indices(step_index: StepIndex, batch: int, num_inference_steps: int) -> list[int]:
    """``step_index`` as one validated index per row."""
    idx = [int(step_index)] * batch if isinstance(step_index, int) or torch.is_tensor(step_index) and \
        step_index.dim() == 0 else [int(s) for s in step_index]
    if len(idx) != batch:
        raise ValueError(f"step_index has {len(idx)} entries for a batch of {batch}.")
    bad = [s for s in idx if not 0 <= s < num_inference_steps]
    if bad:
        raise ValueError(f"step_index {bad[0]} is outside 0..{num_inference_steps - 1}.")
    return idx


def states_at(backend: DiffusionBackend, cond: torch.Tensor, negative: torch.Tensor, latents_T: torch.Tensor,
              step_index: StepIndex, num_inference_steps: int = 30, guidance_scale: float = 7.5, *,
              scheduler=None) -> torch.Tensor:
    """No-grad CFG-DDIM prefix: each row's x_t at its own step index (``negative`` detached, shared or per row)."""
    idx = row_indices(step_index, latents_T.shape[0], num_inference_steps)
    return sample_rows(backend, cond, negative.detach(), latents_T, [0] * len(idx), idx, num_inference_steps,
                       guidance_scale, scheduler=scheduler)


def one_step_images(backend: DiffusionBackend, x_t: torch.Tensor, step_index: StepIndex, cond: torch.Tensor,
                    negative: torch.Tensor, num_inference_steps: int, guidance_scale: float, scheduler
                    ) -> torch.Tensor:
    """Decoded one-step x0 predictions ``[B,3,H,W]`` at each row's step; differentiable in ``negative``."""
    idx = row_indices(step_index, x_t.shape[0], num_inference_steps)
    timesteps = ddim_timesteps(scheduler, num_inference_steps)
    if len(set(idx)) == 1:
        t = timesteps[idx[0]]
        a_t, _ = alpha_pair(scheduler, t, num_inference_steps)
    else:  # per-row timesteps: a [B] timestep tensor and per-row alphas
        t = timesteps[idx].to(x_t.device)
        a_t = torch.stack([alpha_pair(scheduler, int(ti), num_inference_steps)[0] for ti in t.tolist()])
        a_t = a_t.view(-1, *([1] * (x_t.dim() - 1)))
    x0 = one_step_x0(backend, x_t, t, cond, negative, guidance_scale, a_t)
    return backend.decode(x0)


def reneg_objective(backend: DiffusionBackend, reward: Reward, prompts: Sequence[str], cond: torch.Tensor,
                    negative: torch.Tensor, latents_T: torch.Tensor, step_index: StepIndex,
                    num_inference_steps: int = 30, guidance_scale: float = 7.5, *, scheduler=None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``[B]`` and decoded one-step images ``[B,3,H,W]`` for a batch; differentiable in ``negative``.

    ``negative``: ``[1,T,D]`` (shared) or ``[B,T,D]``; ``step_index``: one DDIM step index or one per row.
    """
    check_compatible(negative, backend.context_dim)
    if len(prompts) != latents_T.shape[0] or cond.shape[0] != latents_T.shape[0]:
        raise ValueError("prompts, cond and latents_T must have the same batch size.")
    sched = scheduler if scheduler is not None else make_scheduler(backend)
    x_t = states_at(backend, cond, negative, latents_T, step_index, num_inference_steps, guidance_scale,
                    scheduler=sched)
    images = one_step_images(backend, x_t, step_index, cond, negative, num_inference_steps, guidance_scale, sched)
    return reward.score(images, list(prompts)), images
