"""Differentiable reward models: ``build_reward(name)`` -> ``Reward`` (``score(images, prompts) -> [B]``).

Names: ``hpsv2.1``, ``hpsv2`` (HPS x100), ``pickscore``, ``aesthetic``, ``toy`` (the trained toy-world preference model,
``core/toy_world``), ``tiny`` (random small CLIP for tests),
``synthetic`` (known optimum), or a weighted mix ``"hpsv2.1:1,aesthetic:0.5"``.
Weights: ``weights=`` a path (single reward) or ``{name: path}`` (mix); else ``$RENEG_REWARDS_DIR`` or the
Hugging Face hub cache (see ``weights.py``). Missing weights raise ``MissingWeightsError``.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from ..errors import RenegError
from .base import Reward
from .mix import MixReward

REWARD_NAMES = ("hpsv2.1", "hpsv2", "pickscore", "aesthetic", "toy", "tiny", "synthetic")
PathLike = str | os.PathLike


def _build_one(name: str, weights: PathLike | None, device: str | torch.device, dtype: torch.dtype) -> Reward:
    if name in ("hpsv2.1", "hpsv2"):
        from .hps import load_hps
        return load_hps(name, weights, device, dtype)
    if name == "pickscore":
        from .pickscore import load_pickscore
        return load_pickscore(weights, device, dtype)
    if name == "aesthetic":
        from .aesthetic import load_aesthetic
        return load_aesthetic(weights, device=device, dtype=dtype)
    if name == "toy":
        from ..toy_world import load_toy_reward
        return load_toy_reward(weights, device, dtype)
    if name == "tiny":
        from .tiny import load_tiny
        return load_tiny(weights, device, dtype)
    if name == "synthetic":
        if weights is not None:
            raise RenegError("The 'synthetic' reward has no weights; drop the weights argument.")
        from .synthetic import SyntheticReward
        return SyntheticReward(device=device, dtype=dtype)
    raise _unknown(name)


def _unknown(name: str) -> RenegError:
    return RenegError(f"Unknown reward {name!r}; valid names: {', '.join(REWARD_NAMES)} "
                      f"or a weighted mix like 'hpsv2.1:1,aesthetic:0.5'.")


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """``"hpsv2.1:1,aesthetic:0.5"`` -> ``[("hpsv2.1", 1.0), ("aesthetic", 0.5)]`` (weight defaults to 1)."""
    parts: list[tuple[str, float]] = []
    for item in spec.split(","):
        name, _, w = item.strip().partition(":")
        name = name.strip().lower()
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise RenegError(f"Bad weight {w!r} for reward {name!r} in {spec!r}; write e.g. 'hpsv2.1:1,aesthetic:0.5'.")
        if name not in REWARD_NAMES:
            raise _unknown(name)
        if name in dict(parts):
            raise RenegError(f"Reward {name!r} appears twice in {spec!r}; give each reward once.")
        parts.append((name, weight))
    return parts


def build_reward(name: str, weights: PathLike | Mapping[str, PathLike | None] | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Reward:
    """Build a reward by name or mix spec; see the module docstring."""
    spec = str(name).strip().lower()
    if "," not in spec and ":" not in spec:
        if isinstance(weights, Mapping):
            weights = weights.get(spec)
        return _build_one(spec, weights, device, dtype)
    parts = parse_reward_spec(spec)
    if weights is not None and not isinstance(weights, Mapping):
        raise RenegError(f"For a reward mix pass weights as a dict name -> path (e.g. {{'hpsv2.1': path}}), "
                         f"not one path; mix: {spec!r}.")
    wmap = dict(weights or {})
    unknown = set(wmap) - {n for n, _ in parts}
    if unknown:
        raise RenegError(f"Weights given for {sorted(unknown)} which are not in the mix {spec!r}.")
    return MixReward([(_build_one(n, wmap.get(n), device, dtype), w) for n, w in parts])


__all__ = ["REWARD_NAMES", "Reward", "MixReward", "build_reward", "parse_reward_spec"]
