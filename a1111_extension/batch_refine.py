"""'Refine for this prompt' over a webui batch — one refined negative per image, no webui import.

Each image (batch row) is refined for its own prompt and seed; the rows not already in the cache are refined
together by ONE :func:`~..core.refine.refine_batch` call (optionally in chunks of ``max_rows`` images, for GPU
memory). The script (:mod:`.script`) puts row ``i``'s negative into row ``i`` of the uncond
(:class:`~.uncond.UncondPlan` with ``[B, T, D]``) and records each image's own result in its infotext
(:class:`PerImage`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ..core.refine import RefineConfig, RefineResult, refine_batch

Key = tuple


@dataclass
class BatchRefinement:
    """Outcome for one webui batch."""

    rows: list[torch.Tensor]                      #: ``[1, T, D]`` fp32 CPU per row (the base where not refined;
    #: SDXL: the packed ``[1, 78, 2048]``)
    results: list[Optional[RefineResult]]         #: per row; None where it was not refined (interrupted)
    fresh: list[RefineResult] = field(default_factory=list)  #: refined now (not from the cache), to save
    stopped: bool = False                          #: interrupted: the rows refined now use the base
    calls: int = 0                                 #: refine_batch calls made (0 when everything was cached)


def stack_conds(tensors: Sequence[torch.Tensor], pooled_row: bool = False) -> torch.Tensor:
    """``[1, T_i, D]`` rows -> ``[B, max T, D]``, a shorter one padded with its last vector: how the webui
    batches prompts of different 75-token chunk counts for sampling (``modules.prompt_parser.stack_conds``).

    ``pooled_row``: SDXL's packed conds (last row = pooled embedding): the context rows are padded and the pooled
    row stays last, as the webui pads ``crossattn`` and keeps ``vector``."""
    if pooled_row:
        contexts = stack_conds([t[:, :-1] for t in tensors])
        return torch.cat([contexts, torch.cat([t[:, -1:] for t in tensors])], dim=1)
    tokens = max(int(t.shape[1]) for t in tensors)
    out = []
    for t in tensors:
        if t.shape[1] < tokens:
            t = torch.cat([t, t[:, -1:].expand(t.shape[0], tokens - t.shape[1], t.shape[2])], dim=1)
        out.append(t)
    return torch.cat(out)


def refine_rows(backend, reward, prompts: Sequence[str], seeds: Sequence[int], base: torch.Tensor,
                config: RefineConfig, *, key_of: Callable[[str, int], Key], cache: Any,
                progress: Optional[Callable[[int, int, list], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None, max_rows: int = 0,
                refine: Callable[..., list[RefineResult]] = refine_batch) -> BatchRefinement:
    """One refined negative per (prompt, seed) row; cached rows are reused, the others refined batched.

    ``cache``: ``get(key)``/``put(key, result)`` (:class:`~.library.RefineCache`); ``key_of(prompt, seed)`` its
    key. Rows with the same key share one refinement. ``progress(iterate, max_steps, scores)`` after each
    iterate of a refine_batch call. An interrupt (``should_stop``) stops the batch; nothing from it is cached and
    its rows keep ``base``.
    """
    prompts, seeds = [str(p) for p in prompts], [int(s) for s in seeds]
    keys = [key_of(p, s) for p, s in zip(prompts, seeds)]
    found: dict[Key, RefineResult] = {}
    todo: dict[Key, tuple[str, int]] = {}
    for key, prompt, seed in zip(keys, prompts, seeds):
        hit = cache.get(key)
        if hit is not None:
            found[key] = hit
        elif key not in found:
            todo.setdefault(key, (prompt, seed))
    outcome = BatchRefinement([], [])
    pending = list(todo.items())
    step = max_rows if max_rows and max_rows > 0 else max(1, len(pending))
    base = base.detach().reshape(1, *base.shape[-2:]).float()
    for start in range(0, len(pending), step):
        chunk = pending[start:start + step]
        chunk_prompts = [p for _, (p, _) in chunk]
        conds = stack_conds([backend.encode_prompts([p]) for p in chunk_prompts],
                            pooled_row=getattr(backend, "family", None) == "sdxl")
        outcome.calls += 1
        results = refine(backend, reward, chunk_prompts, base.to(backend.device), [s for _, (_, s) in chunk],
                         config, conds=conds,
                         callback=None if progress is None else (lambda k, n, scores, _p: progress(k, n, scores)),
                         should_stop=should_stop)
        if any(r.stopped for r in results):
            outcome.stopped = True
            break
        for (key, _), result in zip(chunk, results):
            cache.put(key, result)
            found[key] = result
            outcome.fresh.append(result)
    for key in keys:
        result = found.get(key)
        outcome.results.append(result)
        outcome.rows.append(base if result is None else result.best.detach().cpu().float())
    return outcome


#: The webui's extra-network tag (``<lora:name:0.8>``): removed from ``p.prompts`` before ``process_batch``
#: (``modules.extra_networks.re_extra_net``), still in the prompts ``create_infotext`` receives.
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


class PerImage(str):
    """An infotext value that differs per image.

    It is a plain string for the API (``info["extra_generation_params"]``: ``text``), and A1111/Forge's
    ``create_infotext`` calls it with its locals (``all_prompts``, ``all_seeds``, ``index``) for each image, so
    each image's PNG info shows its own value (None: the key is left out of that image's infotext). ``values``
    are keyed by (prompt as ``process_batch`` saw it, seed); an image is found by its seed, and by its prompt
    (with extra-network tags removed, as the webui does before ``process_batch``) when several share the seed.
    """

    values: dict

    def __new__(cls, text: str, values: Optional[dict] = None):
        obj = super().__new__(cls, text)
        obj.values = dict(values or {})
        return obj

    def __reduce__(self):
        return (PerImage, (str(self), self.values))

    def __call__(self, all_prompts=None, all_seeds=None, index=0, **_kwargs) -> Optional[str]:
        try:
            prompt, seed = str(all_prompts[index]), int(all_seeds[index])
        except (TypeError, IndexError, ValueError):
            return str(self)
        same_seed = {p: v for (p, s), v in self.values.items() if s == seed}
        if len(set(same_seed.values())) <= 1:
            return next(iter(same_seed.values()), None)
        if prompt in same_seed:
            return same_seed[prompt]
        return same_seed.get(EXTRA_NETWORK.sub("", prompt))


def summary(result: RefineResult) -> str:
    """``0.2210->0.2391 (step 4)``."""
    return f"{float(result.start_reward):.4f}->{float(result.best_reward):.4f} (step {int(result.best_step)})"


__all__ = ["BatchRefinement", "PerImage", "refine_rows", "stack_conds", "summary"]
