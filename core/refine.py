"""Per-prompt refinement (paper Algorithm 1): start from a (global) negative, take a few reward-ascent steps for one
prompt, keep the best iterate.

Every iterate is scored by the same forward as training (:func:`~.objective.reneg_objective`) on the SAME x_T
(from ``seed``) and the SAME DDIM step index, so scores are comparable and the returned embedding never scores
below the start: the start is iterate 0 and the best iterate is returned. The optimiser is AdamW at ``lr``
(weight decay 0, i.e. Adam). Stops after ``max_steps`` updates, or when the score has not improved for
``patience`` consecutive iterates, or when ``should_stop()`` returns true.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .ddim import make_scheduler
from .embedding_io import check_compatible
from .errors import RenegError
from .model_boundary import DiffusionBackend
from .objective import draw_step_index, reneg_objective
from .rewards.base import Reward
from .train import ProgressFn, autocast_context, batch_latents, for_precision, render


@dataclass
class RefineResult:
    best: torch.Tensor             #: ``[1, T, D]`` fp32 on CPU: the best iterate (the start if none beat it)
    trace: list[float]             #: score of iterate 0 (start), 1, 2, ...
    best_step: int                 #: index into ``trace`` of ``best`` (0 = the start)
    start_reward: float
    best_reward: float
    step_index: int = 0            #: the DDIM step the scores were taken at
    stopped: bool = False          #: interrupted by ``should_stop``
    image: Optional[torch.Tensor] = field(default=None, repr=False)  #: final image ``[1,3,H,W]`` if asked


def refinement_step_index(seed: int, num_inference_steps: int, last_k: int = 10) -> int:
    """The fixed DDIM step index used for one refinement: drawn like training's, from the seed."""
    return draw_step_index(num_inference_steps, last_k, torch.Generator("cpu").manual_seed(int(seed)))


def refine_negative(backend: DiffusionBackend, reward: Reward, prompt: Optional[str], init_negative: torch.Tensor,
                    seed: int = 0, max_steps: int = 10, patience: int = 3, lr: float = 5e-3,
                    num_inference_steps: int = 30, guidance_scale: float = 7.5, height: int = 512,
                    width: int = 512, callback: Optional[ProgressFn] = None,
                    should_stop: Optional[Callable[[], bool]] = None, cond: Optional[torch.Tensor] = None, *,
                    step_index: Optional[int] = None, last_k: int = 10, mixed_precision: str = "no",
                    final_image: bool = False) -> RefineResult:
    """Refine ``init_negative`` for one prompt (see module docstring).

    ``prompt``: the text (used by the reward, and encoded unless ``cond`` ``[1,T,D]`` is given; hosts may pass
    their own conditioning). ``callback(step, max_steps, score, None)`` after each scored iterate.
    ``step_index``: DDIM step to score at (default: drawn from the last ``last_k`` with ``seed``).
    ``final_image``: also render the full CFG-DDIM image of the best embedding from the same x_T.
    """
    if max_steps < 0 or patience < 1:
        raise RenegError(f"max_steps must be >= 0 and patience >= 1 (got {max_steps}, {patience}).")
    if prompt is None and cond is None:
        raise RenegError("refine_negative needs a prompt (or its conditioning via cond=).")
    check_compatible(init_negative, backend.context_dim, where=f"model '{backend.name}'")
    init = init_negative.detach().reshape(1, *init_negative.shape[-2:]).to(backend.device, torch.float32)
    if cond is None:
        cond = backend.encode_prompts([prompt])
    cond = cond.to(backend.device)
    if cond.shape[0] != 1:
        raise RenegError(f"cond must be one prompt's conditioning [1, T, D]; got {list(cond.shape)}.")
    prompts = [prompt if prompt is not None else ""]
    t_index = refinement_step_index(seed, num_inference_steps, last_k) if step_index is None else int(step_index)
    if not 0 <= t_index < num_inference_steps:
        raise RenegError(f"step_index {t_index} is outside 0..{num_inference_steps - 1}.")
    reward = for_precision(reward, mixed_precision)
    scheduler = make_scheduler(backend)
    latents = batch_latents(backend, [seed], height, width)

    negative = torch.nn.Parameter(init.clone())
    optimizer = torch.optim.AdamW([negative], lr=lr, weight_decay=0.0)
    trace: list[float] = []
    best, best_reward, best_step, since_best, stopped = init.clone(), -math.inf, 0, 0, False
    for k in range(max_steps + 1):
        if k > 0 and should_stop is not None and should_stop():
            stopped = True
            break
        last = k == max_steps
        optimizer.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(not last), autocast_context(backend.device, mixed_precision):
            rewards, _ = reneg_objective(backend, reward, prompts, cond, negative if not last else negative.detach(),
                                         latents, t_index, num_inference_steps, guidance_scale, scheduler=scheduler)
        score = float(rewards.detach().float().mean())
        trace.append(score)
        if k == 0 and not math.isfinite(score):
            raise RenegError("The reward of the initial embedding is NaN/Inf; check the model, reward and dtype.")
        if math.isfinite(score) and score > best_reward:
            best, best_reward, best_step, since_best = negative.detach().clone(), score, k, 0
        elif k > 0:
            since_best += 1
        if callback is not None:
            callback(k, max_steps, score, None)
        if last or since_best >= patience:
            break
        (-rewards.float().mean()).backward()
        if torch.isfinite(negative.grad).all():
            optimizer.step()
        # a non-finite gradient leaves the embedding unchanged: the next iterate scores the same, no better
    image = None
    if final_image:
        image = render(backend, cond, best, latents, num_inference_steps, guidance_scale, mixed_precision,
                       scheduler).cpu()
    return RefineResult(best.cpu(), trace, best_step, trace[0], best_reward, t_index, stopped, image)
