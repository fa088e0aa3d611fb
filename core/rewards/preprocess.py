"""Differentiable (torch-only) image preprocessing for CLIP-family rewards.

Inputs are float BCHW images in ``[0, 1]``; outputs are normalised BCHW tensors of the model's input size.
Bicubic resizing uses ``antialias=True`` (what torchvision's tensor ``Resize`` does), so results match the
reference transforms on tensors and gradients flow back to the pixels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import RenegError

#: OpenAI CLIP normalisation (also used by HPSv2, PickScore and the LAION aesthetic predictor).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: torch.Tensor) -> None:
    """Raise ``RenegError`` unless ``images`` is a float ``[B, 3, H, W]`` tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RenegError(f"Rewards need images shaped [B, 3, H, W] in [0, 1]; got {shape}. Decode latents first.")
    if not images.is_floating_point():
        raise RenegError(f"Rewards need float images in [0, 1]; got dtype {images.dtype}. Use images.float() / 255.")


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize to ``(height, width)``; identity when the size already matches."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def normalize(images: torch.Tensor, mean: Sequence[float] = OPENAI_MEAN,
              std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


def hps_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = OPENAI_MEAN,
                   std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """HPSv2 eval transform: longest side to ``size`` (bicubic), centred zero-pad to ``size``², normalise.

    Mirrors ``ResizeMaxSize`` of the HPSv2 open_clip fork (applied after ``ToTensor``): new side lengths are
    ``round(side * size / max(h, w))``, padding is split ``pad // 2`` before / the rest after, and the fill
    (0) is applied before normalisation.
    """
    check_images(images)
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = resize(images, (nh, nw))
    ph, pw = size - nh, size - nw
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    return normalize(x, mean, std)


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """OpenAI CLIP transform: shortest side to ``size`` (bicubic), centre crop ``size``², normalise.

    Output sizes and crop offsets follow torchvision's ``Resize(int)`` / ``CenterCrop``.
    """
    check_images(images)
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    x = resize(images, (nh, nw))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return normalize(x[..., top:top + size, left:left + size], mean, std)
