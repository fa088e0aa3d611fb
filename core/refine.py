"""Per-prompt refinement (paper Algorithm 1): start from a (global) negative, take a few reward-ascent steps for
one prompt, keep the best iterate -- for one prompt (:func:`refine_negative`) or B prompts at once
(:func:`refine_batch`).

Each iterate is judged on the SAME x_T (from the row's seed). Two selection rules:

* ``"final"`` (default): the iterate's own no-grad CFG-DDIM trajectory is run from x_T to the end, decoded and
  scored. Selection, patience and the returned image use that score, so the returned image is the engine's
  DDIM render of the returned embedding with that seed and its reward is >= the start embedding's (the start is
  iterate 0). The gradient step is the training forward's (one-step x0 at the row's DDIM step index).
* ``"proxy"``: the iterate is scored by the one-step x0 prediction at the step index (the training forward
  itself; cheaper). "Never worse than the start" then holds for that proxy score, not for the final image.

The optimiser is Adam(W) at ``lr`` (weight decay 0 by default). A row stops after ``max_steps`` updates, when its
score has not improved for ``patience`` consecutive iterates, or when its gradient is not finite (an unchanged
embedding would repeat the same iterate); all rows stop when ``should_stop()`` returns true.

Batching: one ``[B,T,D]`` parameter, each row with its own prompt, x_T, step index, patience and stop mask. Adam
is elementwise and every active row has taken the same number of updates, so a batch equals B independent runs
(up to float differences of batched kernels). Rows that stopped are frozen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .ddim import make_scheduler, sample_rows
from .embedding_io import check_compatible
from .errors import RenegError
from .model_boundary import DiffusionBackend, frozen_entries
from .objective import draw_step_index, one_step_images, states_at
from .rewards.base import Reward
from .train import ProgressFn, autocast_context, batch_latents, for_precision, render

SELECTION_RULES = ("final", "proxy")


@dataclass
class RefineConfig:
    """Settings of a refinement (paper defaults: <= 10 steps, patience 3, lr 5e-3, DDIM 30, CFG 7.5)."""

    max_steps: int = 10
    patience: int = 3
    lr: float = 5e-3
    weight_decay: float = 0.0       #: AdamW decoupled decay (0: plain Adam, as Algorithm 1)
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    last_k: int = 10                #: the step index is drawn from the last ``last_k`` DDIM steps with the seed
    mixed_precision: str = "no"
    selection: str = "final"        #: "final" (score the finished image) or "proxy" (one-step x0 score)
    freeze_pooled: bool = False     #: SDXL: refine the context only, the pooled part stays the start's

    def validate(self) -> None:
        if self.max_steps < 0 or self.patience < 1:
            raise RenegError(f"max_steps must be >= 0 and patience >= 1 (got {self.max_steps}, {self.patience}).")
        if self.selection not in SELECTION_RULES:
            raise RenegError(f"selection must be one of {', '.join(SELECTION_RULES)} (got {self.selection!r}).")


@dataclass
class RefineResult:
    best: torch.Tensor             #: ``[1, T, D]`` fp32 on CPU: the best iterate (the start if none beat it)
    trace: list[float]             #: selection score of iterate 0 (start), 1, 2, ...
    best_step: int                 #: index into ``trace`` of ``best`` (0 = the start)
    start_reward: float
    best_reward: float
    step_index: int = 0            #: the DDIM step the gradient (and the proxy score) was taken at
    stopped: bool = False          #: interrupted by ``should_stop``
    image: Optional[torch.Tensor] = field(default=None, repr=False)  #: final image ``[1,3,H,W]`` of ``best``
    selection: str = "final"
    proxy_trace: list[float] = field(default_factory=list)  #: one-step proxy score of each iterate that took a step
    seed: int = 0
    prompt: Optional[str] = None


def refinement_step_index(seed: int, num_inference_steps: int, last_k: int = 10) -> int:
    """The fixed DDIM step index used for one refinement: drawn like training's, from the seed."""
    return draw_step_index(num_inference_steps, last_k, torch.Generator("cpu").manual_seed(int(seed)))


BatchCallback = Callable[[int, int, list, Optional[torch.Tensor]], None]


def refine_batch(backend: DiffusionBackend, reward: Reward, prompts: Sequence[Optional[str]],
                 init_negative: torch.Tensor, seeds: Sequence[int], config: Optional[RefineConfig] = None, *,
                 conds: Optional[torch.Tensor] = None, step_indices: Optional[Sequence[int]] = None,
                 latents: Optional[torch.Tensor] = None, callback: Optional[BatchCallback] = None, should_stop: Optional[Callable[[], bool]] = None,
                 final_image: bool = False) -> list[RefineResult]:
    """Refine one negative per prompt, all prompts in one batch; returns one :class:`RefineResult` per row.

    ``init_negative``: ``[1,T,D]`` (the same start for every row, e.g. the global embedding) or ``[B,T,D]``.
    ``seeds``: x_T seed per row (as ``reneg generate --seed``). ``conds``: ``[B,T,D]`` conditioning (hosts pass
    their own; default: ``encode_prompts(prompts)``). ``step_indices``: per row (default: drawn from its seed).
    ``latents``: x_T per row ``[B,C,h,w]`` (hosts whose sampler draws a batch's noise its own way pass it, e.g.
    ComfyUI's KSampler draws all rows from one seed; default: each row drawn from its seed).
    ``callback(iterate, max_steps, scores, None)`` after each iterate; ``scores[b]`` is row b's score or None
    when the row has stopped. ``final_image`` (proxy rule only): also render each best embedding's image; the
    final rule always returns it.
    """
    config = config or RefineConfig()
    config.validate()
    batch = len(prompts)
    if batch == 0:
        raise RenegError("refine_batch needs at least one prompt.")
    if len(seeds) != batch:
        raise RenegError(f"Got {batch} prompts but {len(seeds)} seeds; give one seed per prompt.")
    if conds is None and any(p is None for p in prompts):
        raise RenegError("refine_negative needs a prompt (or its conditioning via cond=).")
    check_compatible(init_negative, backend.context_dim, where=f"model '{backend.name}'")
    init = init_negative.detach().reshape(-1, *init_negative.shape[-2:]).to(backend.device, torch.float32)
    if init.shape[0] not in (1, batch):
        raise RenegError(f"init_negative has {init.shape[0]} rows for {batch} prompts; give 1 or {batch}.")
    init = init.expand(batch, *init.shape[1:]).clone()
    if conds is None:
        conds = backend.encode_prompts([str(p) for p in prompts])
    conds = conds.to(backend.device)
    if conds.shape[0] != batch:
        raise RenegError(f"cond must hold one conditioning per prompt ([{batch}, T, D]); got {list(conds.shape)}.")
    texts = [p if p is not None else "" for p in prompts]
    n = config.num_inference_steps
    if step_indices is None:
        t_idx = [refinement_step_index(s, n, config.last_k) for s in seeds]
    else:
        t_idx = [int(s) for s in step_indices]
        if len(t_idx) != batch:
            raise RenegError(f"Got {len(t_idx)} step indices for {batch} prompts.")
    for s in t_idx:
        if not 0 <= s < n:
            raise RenegError(f"step_index {s} is outside 0..{n - 1}.")
    rew = for_precision(reward, config.mixed_precision)
    scheduler = make_scheduler(backend)
    if latents is None:
        latents = batch_latents(backend, list(seeds), config.height, config.width)
    else:
        f = backend.vae_scale_factor
        want = [batch, backend.latent_channels, config.height // f, config.width // f]
        if list(latents.shape) != want:
            raise RenegError(f"latents must be x_T for {batch} rows at {config.width}x{config.height} "
                             f"({want}); got {list(latents.shape)}.")
        latents = latents.detach().to(backend.device, backend.dtype)
    final_rule = config.selection == "final"

    fixed = frozen_entries(backend, init, config.freeze_pooled)  # SDXL: entries that stay the start's (or None)
    negative = torch.nn.Parameter(init.clone())
    optimizer = torch.optim.AdamW([negative], lr=config.lr, weight_decay=config.weight_decay)
    traces: list[list[float]] = [[] for _ in range(batch)]
    proxies: list[list[float]] = [[] for _ in range(batch)]
    best = init.clone()
    best_reward = [-math.inf] * batch
    best_step, since_best = [0] * batch, [0] * batch
    images: list[Optional[torch.Tensor]] = [None] * batch
    active = [True] * batch
    stopped = False
    device = backend.device

    for k in range(config.max_steps + 1):
        rows = [b for b in range(batch) if active[b]]
        if not rows:
            break
        if k > 0 and should_stop is not None and should_stop():
            stopped = True
            break
        idx = torch.tensor(rows, device=device)
        cond_r, lat_r = conds.index_select(0, idx), latents.index_select(0, idx)
        t_r = [t_idx[b] for b in rows]
        text_r = [texts[b] for b in rows]
        last = k == config.max_steps
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, config.mixed_precision):
            x_t = states_at(backend, cond_r, negative.detach().index_select(0, idx), lat_r, t_r, n,
                            config.guidance_scale, scheduler=scheduler)
            proxy = None
            if final_rule:
                with torch.no_grad():
                    final = sample_rows(backend, cond_r, negative.detach().index_select(0, idx), x_t, t_r,
                                        [n] * len(rows), n, config.guidance_scale, scheduler=scheduler)
                    final_images = backend.decode(final).float()
                    scores = rew.score(final_images, text_r).detach().float().cpu()
            else:
                with torch.set_grad_enabled(not last):
                    proxy = rew.score(one_step_images(backend, x_t, t_r, cond_r, negative.index_select(0, idx), n,
                                                      config.guidance_scale, scheduler), text_r)
                scores = proxy.detach().float().cpu()
        continuing = []
        for j, b in enumerate(rows):
            score = float(scores[j])
            traces[b].append(score)
            if k == 0 and not math.isfinite(score):
                raise RenegError(f"The reward of the initial embedding is NaN/Inf for prompt {texts[b]!r}; check "
                                 "the model, reward and dtype.")
            if math.isfinite(score) and score > best_reward[b]:
                best[b] = negative.detach()[b]
                best_reward[b], best_step[b], since_best[b] = score, k, 0
                if final_rule:
                    images[b] = final_images[j:j + 1].detach().cpu()
            elif k > 0:
                since_best[b] += 1
            if last or since_best[b] >= config.patience:
                active[b] = False
            else:
                continuing.append(j)
        if callback is not None:
            callback(k, config.max_steps, [traces[b][-1] if b in rows else None for b in range(batch)], None)
        if not continuing:
            continue
        keep = torch.tensor(continuing, device=device)
        rows_c = [rows[j] for j in continuing]
        with autocast_context(device, config.mixed_precision):
            if final_rule:
                idx_c = torch.tensor(rows_c, device=device)
                proxy = rew.score(one_step_images(backend, x_t.index_select(0, keep), [t_idx[b] for b in rows_c],
                                                  conds.index_select(0, idx_c), negative.index_select(0, idx_c),
                                                  n, config.guidance_scale, scheduler), [texts[b] for b in rows_c])
                proxy_c = proxy
            else:
                proxy_c = proxy.index_select(0, keep.to(proxy.device))
        for j, b in enumerate(rows_c):
            proxies[b].append(float(proxy_c[j].detach()))
        (-proxy_c.float().sum()).backward()  # sum, not mean: each row's gradient is its own run's
        grad = negative.grad
        frozen = negative.detach().clone()
        updated = torch.zeros(batch, dtype=torch.bool)
        for b in rows_c:
            if grad is not None and bool(torch.isfinite(grad[b]).all()):
                updated[b] = True
            else:  # non-finite gradient: the unchanged embedding would repeat this iterate; stop the row
                active[b] = False
        if grad is not None:
            grad.nan_to_num_(0.0, 0.0, 0.0)
        if bool(updated.any()):
            optimizer.step()
        with torch.no_grad():
            hold = (~updated).to(device)
            negative.data[hold] = frozen[hold]
            if fixed is not None:
                negative.data.copy_(torch.where(fixed, init, negative.data))

    results = []
    renders = None
    if not final_rule and final_image:
        renders = render(backend, conds, best, latents, n, config.guidance_scale, config.mixed_precision,
                         scheduler).cpu()
    for b in range(batch):
        image = images[b] if final_rule else (renders[b:b + 1] if renders is not None else None)
        results.append(RefineResult(best[b:b + 1].detach().cpu().clone(), traces[b], best_step[b], traces[b][0],
                                    best_reward[b], t_idx[b], stopped, image, config.selection, proxies[b],
                                    int(seeds[b]), prompts[b]))
    return results


def refine_negative(backend: DiffusionBackend, reward: Reward, prompt: Optional[str], init_negative: torch.Tensor,
                    seed: int = 0, max_steps: int = 10, patience: int = 3, lr: float = 5e-3,
                    num_inference_steps: int = 30, guidance_scale: float = 7.5, height: int = 512,
                    width: int = 512, callback: Optional[ProgressFn] = None,
                    should_stop: Optional[Callable[[], bool]] = None, cond: Optional[torch.Tensor] = None, *,
                    step_index: Optional[int] = None, last_k: int = 10, mixed_precision: str = "no",
                    final_image: bool = False, selection: str = "final",
                    weight_decay: float = 0.0, freeze_pooled: bool = False) -> RefineResult:
    """Refine ``init_negative`` for one prompt (see module docstring); :func:`refine_batch` with B = 1.

    ``prompt``: the text (used by the reward, and encoded unless ``cond`` ``[1,T,D]`` is given; hosts may pass
    their own conditioning). ``callback(step, max_steps, score, None)`` after each scored iterate.
    ``step_index``: DDIM step of the gradient (default: drawn from the last ``last_k`` with ``seed``).
    ``selection``: ``"final"`` (default; ``result.image`` is the final image of ``best``) or ``"proxy"``
    (``final_image=True`` then renders it).
    """
    if prompt is None and cond is None:
        raise RenegError("refine_negative needs a prompt (or its conditioning via cond=).")
    if cond is not None and cond.shape[0] != 1:
        raise RenegError(f"cond must be one prompt's conditioning [1, T, D]; got {list(cond.shape)}.")
    if init_negative.dim() == 3 and init_negative.shape[0] != 1:
        raise RenegError(f"init_negative must be one embedding [1, T, D]; got {list(init_negative.shape)}.")
    config = RefineConfig(max_steps=max_steps, patience=patience, lr=lr, weight_decay=weight_decay,
                          freeze_pooled=freeze_pooled,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                          width=width, last_k=last_k, mixed_precision=mixed_precision, selection=selection)
    def cb(k, total, scores, _preview):
        callback(k, total, scores[0], None)
    (result,) = refine_batch(backend, reward, [prompt], init_negative, [seed], config, conds=cond,
                             step_indices=None if step_index is None else [step_index],
                             callback=cb if callback is not None else None,
                             should_stop=should_stop, final_image=final_image)
    return result


__all__ = ["RefineConfig", "RefineResult", "SELECTION_RULES", "refine_batch", "refine_negative",
           "refinement_step_index"]
