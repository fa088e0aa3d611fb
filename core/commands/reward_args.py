"""Reward arguments shared by ``train``, ``refine`` and ``evaluate``: names and local weight files."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from ..errors import RenegError


def add_reward_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward-weights", action="append", default=[], metavar="[NAME=]PATH",
                   help="local reward weights: a file/folder for a single reward, or NAME=PATH per reward "
                        "(repeatable). Default: $RENEG_REWARDS_DIR or the Hugging Face cache")


def parse_weights(values: list[str]) -> Optional[str | dict[str, str]]:
    """``[]`` -> None; ``["path"]`` -> "path"; ``["hpsv2.1=a", "aesthetic=b"]`` -> dict."""
    if not values:
        return None
    named = [v for v in values if "=" in v and not v.startswith(("/", ".", "~"))]
    if len(values) == 1 and not named:
        return values[0]
    if len(named) != len(values):
        raise RenegError("With several --reward-weights give each as NAME=PATH (e.g. hpsv2.1=/models/HPS.pt).")
    return {k.strip().lower(): v for k, _, v in (x.partition("=") for x in named)}


#: Rewards compute in fp32 whatever ``--dtype`` the diffusion model uses (issue 10: an fp16 ViT-H reward rounds
#: scores and gradients; the fp32 copy costs ~4 GB for HPSv2's ViT-H-14).
REWARD_DTYPE = torch.float32


def build_reward_from_args(name: str, weights: list[str], device: torch.device, model_dtype: torch.dtype = None):
    """The reward named on the command line, on ``device``, in fp32 (``model_dtype`` is not used for it)."""
    from ..rewards import build_reward

    return build_reward(name, parse_weights(weights), device=device, dtype=REWARD_DTYPE)


def build_metrics(names: str, weights: list[str], device: torch.device, model_dtype: torch.dtype = None) -> dict:
    """``"hpsv2.1,pickscore,aesthetic"`` -> {name: Reward} in fp32; each metric is one reward (no mixes)."""
    from ..rewards import build_reward

    wmap = parse_weights(weights)
    names_ = [n.strip().lower() for n in names.split(",") if n.strip()]
    if isinstance(wmap, str) and len(names_) > 1:
        raise RenegError("With several metrics give --reward-weights as NAME=PATH per metric.")
    metrics = {}
    for name in names_:
        if ":" in name:
            raise RenegError(f"Metric {name!r}: metrics are single reward names (e.g. hpsv2.1,pickscore), not mixes.")
        w = wmap.get(name) if isinstance(wmap, dict) else wmap
        metrics[name] = build_reward(name, w, device=device, dtype=REWARD_DTYPE)
    if not metrics:
        raise RenegError("No metrics given; e.g. --metrics hpsv2.1,pickscore,aesthetic")
    return metrics
