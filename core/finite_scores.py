"""Evaluation scores must be finite: a NaN/Inf score is an error naming its image, never a row in a table."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .errors import NonFiniteError

#: What to do, by cause.
FIX_IMAGE = "Lower the guidance, render in fp32 (--dtype fp32, --mixed-precision no), or drop that negative"
FIX_METRIC = "Re-download that metric's weights (they may be damaged) or drop the metric"


def check_finite_scores(images: torch.Tensor, scores: Mapping[str, torch.Tensor], prompts: Sequence[str],
                        seeds: Sequence[int], negative: str, kept: str) -> None:
    """Raise :class:`NonFiniteError` for the first image whose image or score is NaN/Inf.

    ``images``: ``[B,3,H,W]``; ``scores``: metric -> ``[B]``; ``kept``: what the caller keeps on disk (said in
    the message, e.g. "nothing was written").
    """
    for b, (prompt, seed) in enumerate(zip(prompts, seeds)):
        bad = {m: float(v[b]) for m, v in scores.items() if not math.isfinite(float(v[b]))}
        image_bad = not bool(torch.isfinite(images[b]).all())
        if not bad and not image_bad:
            continue
        what = ", ".join(f"{m} = {v}" for m, v in bad.items()) or "no finite score"
        cause, fix = (("the image itself holds NaN/Inf (the sampler diverged)", FIX_IMAGE) if image_bad
                      else ("the image is finite, so the metric failed on it", FIX_METRIC))
        short = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        raise NonFiniteError(f"Negative '{negative}' gave a non-finite score ({what}) for prompt {short!r}, "
                             f"seed {seed}: {cause}. {kept[0].upper()}{kept[1:]}. {fix}.")
