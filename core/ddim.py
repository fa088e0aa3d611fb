"""DDIM (eta = 0) with classifier-free guidance whose uncond branch is the negative embedding.

Math as small pure functions of (latents, alphas, model output), in the spirit of diffusers' schedulers; the
timestep tables come from :class:`diffusers.DDIMScheduler` itself. With the same inputs this reproduces
``StableDiffusionPipeline(..., negative_prompt_embeds=neg)`` with a DDIM scheduler.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .embedding_io import broadcast_negative, check_compatible
from .errors import ImageSizeError
from .model_boundary import DiffusionBackend

#: diffusers' SD1.x/SD2.x DDIM settings, used when a backend brings only its ``alphas_cumprod``.
SD_DDIM_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def make_scheduler(backend: DiffusionBackend):
    """A ``DDIMScheduler`` for ``backend``: its own config when it has one, else SD defaults + its alphas."""
    from diffusers import DDIMScheduler

    config = getattr(backend, "scheduler_config", None)
    if config is not None:
        sched = DDIMScheduler.from_config(config)
    else:
        ac = backend.alphas_cumprod.double()
        betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        cfg = dict(SD_DDIM_CONFIG, num_train_timesteps=len(ac), trained_betas=betas.float().tolist())
        sched = DDIMScheduler(**cfg)
        sched.alphas_cumprod = backend.alphas_cumprod.float().clone()
        sched.final_alpha_cumprod = sched.alphas_cumprod[0]
    if sched.config.thresholding:
        raise ValueError("DDIM thresholding is not supported by ReNeg (SD1.x/SD2.x do not use it).")
    sched.register_to_config(prediction_type=backend.prediction_type)
    return sched


def ddim_timesteps(scheduler, num_inference_steps: int) -> torch.Tensor:
    """The discrete timesteps (high to low) diffusers' DDIM visits for ``num_inference_steps``."""
    scheduler.set_timesteps(num_inference_steps)
    return scheduler.timesteps.clone()


def alpha_pair(scheduler, timestep: int, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ_t, ᾱ_prev) as 0-d fp32 tensors, exactly as ``DDIMScheduler.step`` picks them."""
    prev = int(timestep) - scheduler.config.num_train_timesteps // num_inference_steps
    a_t = scheduler.alphas_cumprod[int(timestep)]
    a_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    return a_t, a_prev


def guided_output(uncond_out: torch.Tensor, cond_out: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + g·(cond − uncond)``."""
    return uncond_out + guidance_scale * (cond_out - uncond_out)


def split_prediction(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor,
                     prediction_type: str, clip_sample_range: float | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) from a model output in ``prediction_type`` units; differentiable."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
        eps = model_output
    elif prediction_type == "v_prediction":
        x0 = (alpha_prod_t ** 0.5) * sample - (beta_prod_t ** 0.5) * model_output
        eps = (alpha_prod_t ** 0.5) * model_output + (beta_prod_t ** 0.5) * sample
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_prod_t ** 0.5 * x0) / beta_prod_t ** 0.5
    else:
        raise ValueError(f"Unknown prediction type {prediction_type!r}; expected epsilon, v_prediction or sample.")
    if clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    return x0, eps


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_prod_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update ``x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε``."""
    return alpha_prod_prev ** 0.5 * x0 + (1 - alpha_prod_prev) ** 0.5 * eps


def cfg_model_output(backend: DiffusionBackend, latents: torch.Tensor, timestep, cond: torch.Tensor,
                     negative: Optional[torch.Tensor], guidance_scale: float) -> torch.Tensor:
    """One guided network evaluation; uncond and cond go through the network as one batch (like diffusers).

    ``guidance_scale <= 1`` evaluates the conditional branch only, as ``StableDiffusionPipeline`` does.
    """
    if guidance_scale <= 1 or negative is None:
        return backend.model_output(latents, timestep, cond)
    batch = latents.shape[0]
    neg = broadcast_negative(negative, batch).to(cond.dtype)
    if neg.shape[1] == cond.shape[1]:
        out = backend.model_output(torch.cat([latents] * 2), timestep, torch.cat([neg, cond]))
        uncond_out, cond_out = out.chunk(2)
    else:  # e.g. a positive longer than 77 tokens: cross-attention takes any length, but not in one batch
        uncond_out = backend.model_output(latents, timestep, neg)
        cond_out = backend.model_output(latents, timestep, cond)
    return guided_output(uncond_out, cond_out, guidance_scale)


StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def sample(backend: DiffusionBackend, cond: torch.Tensor, negative: Optional[torch.Tensor], latents: torch.Tensor,
           num_inference_steps: int = 30, guidance_scale: float = 7.5, *, scheduler=None,
           start_index: int = 0, stop_index: Optional[int] = None,
           callback: Optional[StepCallback] = None) -> torch.Tensor:
    """CFG-DDIM from ``latents`` at step ``start_index`` up to (not including) ``stop_index``; returns latents.

    ``callback(i, n, latents, x0)`` is called after each step (progress bars, previews, interrupt checks).
    """
    if negative is not None:
        check_compatible(negative, backend.context_dim)
    sched = scheduler if scheduler is not None else make_scheduler(backend)
    timesteps = ddim_timesteps(sched, num_inference_steps)
    stop = len(timesteps) if stop_index is None else stop_index
    clip = sched.config.clip_sample_range if sched.config.clip_sample else None
    for i in range(start_index, stop):
        t = timesteps[i]
        out = cfg_model_output(backend, latents, t, cond, negative, guidance_scale)
        a_t, a_prev = alpha_pair(sched, t, num_inference_steps)
        x0, eps = split_prediction(out, latents, a_t, backend.prediction_type, clip)
        latents = ddim_step(x0, eps, a_prev).to(latents.dtype)
        if callback is not None:
            callback(i, stop, latents, x0)
    return latents


def take_rows(tensor: Optional[torch.Tensor], rows: torch.Tensor) -> Optional[torch.Tensor]:
    """Rows ``rows`` of a per-row ``[B, ...]`` tensor; a batch-1 tensor (one shared negative) is returned as is."""
    if tensor is None or tensor.shape[0] == 1:
        return tensor
    return tensor.index_select(0, rows.to(tensor.device))


@torch.no_grad()
def sample_rows(backend: DiffusionBackend, cond: torch.Tensor, negative: Optional[torch.Tensor],
                latents: torch.Tensor, start: Sequence[int], stop: Sequence[int], num_inference_steps: int = 30,
                guidance_scale: float = 7.5, *, scheduler=None) -> torch.Tensor:
    """Per-row CFG-DDIM: row ``b`` runs steps ``start[b]`` up to (not including) ``stop[b]``.

    At each step the rows whose range covers it go through the network as one batch; a row that is done leaves
    the batch. ``negative`` is ``[1,T,D]`` (shared) or ``[B,T,D]`` (one per row). With equal ranges this is
    exactly :func:`sample` on the whole batch.
    """
    starts, stops = [int(s) for s in start], [int(s) for s in stop]
    if len(starts) != latents.shape[0] or len(stops) != latents.shape[0]:
        raise ValueError("start and stop need one entry per latent row.")
    sched = scheduler if scheduler is not None else make_scheduler(backend)
    if len(set(starts)) == 1 and len(set(stops)) == 1:
        return sample(backend, cond, negative, latents, num_inference_steps, guidance_scale, scheduler=sched,
                      start_index=starts[0], stop_index=stops[0])
    out = latents.clone()
    for i in range(min(starts), max(stops)):
        rows = [b for b in range(len(starts)) if starts[b] <= i < stops[b]]
        if not rows:
            continue
        idx = torch.tensor(rows, device=out.device)
        step = sample(backend, cond.index_select(0, idx.to(cond.device)), take_rows(negative, idx),
                      out.index_select(0, idx), num_inference_steps, guidance_scale, scheduler=sched,
                      start_index=i, stop_index=i + 1)
        out.index_copy_(0, idx, step)
    return out


def initial_latents(backend: DiffusionBackend, batch: int, height: int, width: int, seed: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T drawn exactly as diffusers does: ``torch.Generator("cpu").manual_seed(seed)`` then moved."""
    from diffusers.utils.torch_utils import randn_tensor

    f = backend.vae_scale_factor
    if height % f or width % f:
        raise ImageSizeError(f"Image height and width must be multiples of {f} (got {height}x{width}); use e.g. "
                             f"{max(f, height // f * f)}x{max(f, width // f * f)}.")
    shape = (batch, backend.latent_channels, height // f, width // f)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(shape, generator=gen, device=backend.device, dtype=dtype)
