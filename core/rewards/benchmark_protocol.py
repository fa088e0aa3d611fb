"""The official HPSv2 benchmark's scoring path, beside the differentiable one used for training.

``hpsv2/evaluation.py`` (tgxs002/HPSv2, ``evaluate_benchmark``) reads every generated image from a ``.jpg`` file
with ``PIL.Image.open`` and applies the fork's ``preprocess_val`` (``light_augmentation=True``): ``ResizeMaxSize``
on the PIL image (torchvision ``F.resize``, bicubic: PIL's own antialiased bicubic; new sides ``round(side *
224 / max(h, w))``; padded with 0 to 224², ``pad // 2`` before), RGB conversion, ``ToTensor`` and the OpenAI-CLIP
normalisation; the score is the image-text cosine x 100 (CUDA autocast there; fp32 here).

:class:`BenchmarkProtocol` scores ``[0,1]`` image tensors that way: quantise to 8 bits, JPEG round trip (PIL's
default quality 75 -- ``Image.save("x.jpg")`` without options, as a generation script writes them), PIL
preprocessing. No gradient. For rewards that are not HPS-style (PickScore, aesthetic) it applies the 8-bit JPEG
round trip and then the reward's own preprocessing.
"""
from __future__ import annotations

import io
from typing import Sequence

import torch

from .base import Reward
from .preprocess import OPENAI_MEAN, OPENAI_STD, check_images, hps_preprocess

JPEG_QUALITY = 75
SUFFIX = "@benchmark"


def jpeg_round_trip(images: torch.Tensor, quality: int = JPEG_QUALITY) -> list:
    """``[B,3,H,W]`` in [0,1] -> PIL RGB images after 8-bit rounding and a JPEG encode/decode."""
    from PIL import Image

    from ..images import to_pil_images

    out = []
    for pil in to_pil_images(images):
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out.append(Image.open(buf).convert("RGB"))
    return out


def resize_max_size(pil, max_size: int):
    """The HPSv2 fork's ``ResizeMaxSize`` on a PIL image (fill 0), quirks included (no pad when scale is 1)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    width, height = pil.size
    scale = max_size / float(max(height, width))
    if scale == 1.0:
        return pil
    new_size = tuple(round(dim * scale) for dim in (height, width))
    pil = TF.resize(pil, list(new_size), InterpolationMode.BICUBIC)
    pad_h, pad_w = max_size - new_size[0], max_size - new_size[1]
    return TF.pad(pil, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)


def hps_benchmark_tensor(pils: Sequence, size: int) -> torch.Tensor:
    """``preprocess_val`` of the official benchmark: ResizeMaxSize, ToTensor, OpenAI normalisation -> ``[B,3,s,s]``."""
    import torchvision.transforms.functional as TF

    return torch.stack([TF.normalize(TF.to_tensor(resize_max_size(p, size)), OPENAI_MEAN, OPENAI_STD)
                        for p in pils])


class BenchmarkProtocol:
    """``<reward>@benchmark``: the reward scored as the official HPSv2 benchmark code reads images (no gradient)."""

    def __init__(self, reward: Reward, quality: int = JPEG_QUALITY) -> None:
        self.reward, self.quality = reward, int(quality)
        self.name = f"{getattr(reward, 'name', type(reward).__name__)}{SUFFIX}"

    def to(self, device=None, dtype=None) -> "BenchmarkProtocol":
        self.reward.to(device, dtype)
        return self

    @property
    def hps_style(self) -> bool:
        from .hps import OpenClipReward

        return isinstance(self.reward, OpenClipReward) and self.reward.preprocess is hps_preprocess

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_images(images)
        pils = jpeg_round_trip(images, self.quality)
        if not self.hps_style:
            import torchvision.transforms.functional as TF

            decoded = torch.stack([TF.to_tensor(p) for p in pils]).to(images.device)
            return self.reward.score(decoded, prompts).float()
        from .cosine import match_prompts

        r = self.reward
        x = hps_benchmark_tensor(pils, r.image_size).to(r.device, r.dtype)
        features = r.model.encode_image(x, normalize=True).float()
        text = r.text_features(match_prompts(prompts, images.shape[0]))
        return (r.logit_scale() * (features * text).sum(-1)).float()


def with_protocol(metrics: dict, protocol: str) -> dict:
    """Metrics for an evaluation protocol: ``"differentiable"`` (as given), ``"benchmark"`` (each replaced by its
    ``@benchmark`` form) or ``"both"`` (each followed by its ``@benchmark`` form)."""
    from ..errors import RenegError

    if protocol == "differentiable":
        return dict(metrics)
    if protocol not in ("benchmark", "both"):
        raise RenegError(f"protocol must be 'differentiable', 'benchmark' or 'both' (got {protocol!r}).")
    out = {}
    for name, reward in metrics.items():
        if protocol == "both":
            out[name] = reward
        out[f"{name}{SUFFIX}"] = BenchmarkProtocol(reward)
    return out
