"""Replacing A1111/Forge's uncond conditioning with a ReNeg negative — pure functions, no webui import.

A1111 calls ``script_callbacks.on_cfg_denoiser`` callbacks inside ``CFGDenoiser.forward`` at every step of every
sampler (first pass, hires pass, img2img, refiner switch) and then reads ``params.text_uncond``. These functions
compute the replacement; :mod:`.callbacks` wires them to the webui.

Rules (also in ``docs/a1111.md``):

* **Gating**: only generations whose processing object ``params.denoiser.p`` carries a :class:`UncondPlan`
  (attribute :data:`PLAN_ATTR`, set by the ReNeg script) are touched; every other generation is left alone.
* **Tensor uncond** ``[B, 77·k, D]`` (SD1/SD2): replaced by the negative ``[1|B, T, D]`` broadcast to ``B`` rows,
  cast to the uncond's dtype and device. A new tensor is returned; A1111's cached conds are never mutated.
* **Token count**: the negative keeps its own ``T`` (77). A1111 already handles cond/uncond of different lengths
  (it pads with empty-prompt chunks when "pad prompt/negative prompt" is on, otherwise runs them as separate
  batches), so nothing is tiled: repeating the 77 vectors would change the attention distribution.
* **Dict uncond** (SDXL ``{'crossattn', 'vector'}``, A1111 and Forge alike): an SDXL ReNeg negative (the engine's
  packed ``[1|B, 78, 2048]``: context rows + pooled row, :mod:`~..core.sdxl_backend`) replaces ``crossattn`` with
  its context and ``vector[:, :1280]`` with its pooled embedding; ``vector[:, 1280:]`` — the size/crop embedding
  the webui computed for this generation — is kept. A context-only 2048-wide negative replaces ``crossattn`` only.
  Every other key is kept and the dict's class (A1111's ``DictWithShape``) is preserved.
* **Width mismatch** (e.g. an SD1.x embedding on an SDXL or SD2.x model), or a batch that cannot be broadcast:
  no-op plus one warning per generation.
* ``None`` uncond (Forge at CFG 1) is returned unchanged.
* **Strength** ``s`` in ``[0, 1]``: ``(1 − s)·uncond[:, :T] + s·negative``; ``s = 1`` is plain replacement. With
  ``s < 1`` a negative prompt longer than ``T`` tokens contributes its first ``T`` tokens only.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

log = logging.getLogger("reneg.a1111")

#: Attribute of A1111's processing object (``p``) that carries the plan for that generation.
PLAN_ATTR = "reneg_uncond_plan"

Warn = Callable[[str], None]


@dataclass
class UncondPlan:
    """What to put in place of the uncond for one generation (one ``p``)."""

    #: ``[1, T, D]`` (all rows) or ``[B, T, D]`` (one negative per batch row, e.g. per-prompt refinement); fp32.
    negative: torch.Tensor
    #: Blend factor with the original uncond; 1.0 replaces it.
    strength: float = 1.0
    #: Shown in warnings.
    name: str = "ReNeg"
    #: Warnings already given for this generation (one per distinct problem).
    warned: set = field(default_factory=set)
    #: Number of times the uncond was replaced (for tests and the infotext sanity check).
    applied: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def set_negative(self, negative: torch.Tensor) -> None:
        """Swap the negative (e.g. per-prompt refined rows for the next batch); drops converted copies."""
        self.negative = negative
        self._cache.clear()

    def negative_for(self, rows: int, device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The negative as ``[rows, T, D]`` on ``device``/``dtype`` (cached), or None if it cannot broadcast."""
        n = self.negative.shape[0]
        if n not in (1, rows):
            return None
        key = (rows, str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            neg = self.negative.detach().to(device=device, dtype=dtype)
            cached = neg.expand(rows, *neg.shape[1:]).contiguous() if n == 1 else neg.contiguous()
            self._cache.clear()  # the batch size or device changes rarely; keep one entry
            self._cache[key] = cached
        return cached


def _warn_once(plan: UncondPlan, key: str, message: str, warn: Optional[Warn]) -> None:
    if key in plan.warned:
        return
    plan.warned.add(key)
    (warn or log.warning)(message)


def _checked_negative(uncond: torch.Tensor, plan: UncondPlan, warn: Optional[Warn]) -> Optional[torch.Tensor]:
    """The plan's negative as ``[B, T, D]`` for a tensor uncond ``[B, T', D]`` (its device and dtype), or None
    (with one warning) when the rank, width or batch does not fit."""
    if uncond.dim() != 3:
        _warn_once(plan, f"rank{uncond.dim()}", f"ReNeg: uncond has shape {list(uncond.shape)}, expected "
                   f"[batch, tokens, dim]; '{plan.name}' not applied.", warn)
        return None
    dim, want = int(uncond.shape[-1]), int(plan.negative.shape[-1])
    if dim != want:
        _warn_once(plan, f"dim{dim}", f"ReNeg: '{plan.name}' is {want}-wide but this model's conditioning is "
                   f"{dim}-wide (different model family); negative embedding not applied. Use an embedding "
                   "trained for this model.", warn)
        return None
    rows = int(uncond.shape[0])
    neg = plan.negative_for(rows, uncond.device, uncond.dtype)
    if neg is None:
        _warn_once(plan, f"rows{rows}", f"ReNeg: '{plan.name}' has {plan.negative.shape[0]} rows, cannot "
                   f"broadcast to a batch of {rows}; negative embedding not applied.", warn)
    return neg


def _blend(uncond: torch.Tensor, neg: torch.Tensor, strength: float) -> torch.Tensor:
    """``(1 − s)·uncond[:, :T] + s·neg`` (a new tensor; ``s >= 1`` is ``neg``). A shorter uncond is padded with its
    last vector."""
    if strength >= 1.0:
        return neg.clone()
    tokens = neg.shape[1]
    base = uncond[:, :tokens]
    if base.shape[1] < tokens:  # shorter uncond than the embedding: pad with its last vector
        base = torch.cat([base, base[:, -1:].expand(base.shape[0], tokens - base.shape[1], base.shape[-1])], dim=1)
    s = float(strength)
    return base * (1.0 - s) + neg * s


def replace_tensor(uncond: torch.Tensor, plan: UncondPlan, warn: Optional[Warn] = None) -> torch.Tensor:
    """The replacement for a tensor uncond ``[B, T', D]``; ``uncond`` itself when it cannot apply."""
    neg = _checked_negative(uncond, plan, warn)
    if neg is None:
        return uncond
    plan.applied += 1
    return _blend(uncond, neg, plan.strength)


def replace_sdxl(uncond: dict, plan: UncondPlan, warn: Optional[Warn] = None) -> dict:
    """An SDXL ``{'crossattn', 'vector'}`` uncond with a packed SDXL negative: the context replaces ``crossattn``,
    the pooled embedding ``vector[:, :1280]``; the webui's size/crop part ``vector[:, 1280:]`` stays. Returns a
    copy of the dict (same class), or ``uncond`` itself when it cannot apply."""
    from ..core.sdxl_backend import POOLED_DIM, unpack

    cross, vector = uncond.get("crossattn"), uncond.get("vector")
    if not isinstance(vector, torch.Tensor) or vector.dim() != 2 or vector.shape[-1] <= POOLED_DIM:
        _warn_once(plan, "novector", f"ReNeg: '{plan.name}' is an SDXL negative (context + pooled) but this "
                   f"uncond has no SDXL 'vector' [batch, 2816] (keys {sorted(uncond)}); not applied.", warn)
        return uncond
    packed = _checked_negative(cross, plan, warn)
    if packed is None:
        return uncond
    if vector.shape[0] != cross.shape[0]:
        _warn_once(plan, f"vrows{vector.shape[0]}", f"ReNeg: the uncond's vector has {vector.shape[0]} rows for "
                   f"{cross.shape[0]} context rows; '{plan.name}' not applied.", warn)
        return uncond
    context, pooled = unpack(packed, POOLED_DIM)
    new_vector = vector.clone()
    new_vector[:, :POOLED_DIM] = _blend(vector[:, None, :POOLED_DIM], pooled[:, None].to(vector.dtype),
                                        plan.strength)[:, 0]
    out = copy.copy(uncond)  # same class (A1111's DictWithShape), same other entries
    out["crossattn"] = _blend(cross, context, plan.strength)
    out["vector"] = new_vector
    plan.applied += 1
    return out


def _is_packed(negative: torch.Tensor) -> bool:
    from ..core.sdxl_backend import is_packed

    return is_packed(negative)


def replace_uncond(uncond: Any, plan: UncondPlan, warn: Optional[Warn] = None) -> Any:
    """Replacement for ``params.text_uncond``: tensor, dict with ``crossattn``, or None (returned as is)."""
    if uncond is None:
        return None
    if isinstance(uncond, torch.Tensor):
        return replace_tensor(uncond, plan, warn)
    if isinstance(uncond, dict):
        cross = uncond.get("crossattn")
        if not isinstance(cross, torch.Tensor):
            _warn_once(plan, "nocrossattn", f"ReNeg: uncond dict has no 'crossattn' tensor (keys "
                       f"{sorted(uncond)}); '{plan.name}' not applied.", warn)
            return uncond
        if _is_packed(plan.negative):
            return replace_sdxl(uncond, plan, warn)
        new_cross = replace_tensor(cross, plan, warn)
        if new_cross is cross:
            return uncond
        out = copy.copy(uncond)  # same class (A1111's DictWithShape), same other entries ('vector')
        out["crossattn"] = new_cross
        return out
    _warn_once(plan, f"type{type(uncond).__name__}", f"ReNeg: unsupported uncond type {type(uncond).__name__}; "
               f"'{plan.name}' not applied.", warn)
    return uncond


def plan_for(params: Any) -> Optional[UncondPlan]:
    """The plan of the generation this denoiser call belongs to (``params.denoiser.p``), if any."""
    p = getattr(getattr(params, "denoiser", None), "p", None)
    plan = getattr(p, PLAN_ATTR, None) if p is not None else None
    return plan if isinstance(plan, UncondPlan) else None


def apply_to_params(params: Any, warn: Optional[Warn] = None) -> bool:
    """``on_cfg_denoiser`` body: replace ``params.text_uncond`` when gated in; True if it was replaced."""
    plan = plan_for(params)
    if plan is None:
        return False
    old = params.text_uncond
    new = replace_uncond(old, plan, warn)
    if new is old:
        return False
    params.text_uncond = new
    return True


def attach(p: Any, plan: Optional[UncondPlan]) -> None:
    """Set (or clear with None) the plan on a processing object."""
    if plan is None:
        if hasattr(p, PLAN_ATTR):
            delattr(p, PLAN_ATTR)
    else:
        setattr(p, PLAN_ATTR, plan)
