"""Image tensors to PIL and PNG files: one conversion for the CLI, evaluation and both hosts."""
from __future__ import annotations

from pathlib import Path

import torch

from .embedding_io import atomic_write


def to_pil_images(images: torch.Tensor) -> list:
    """``[B,3,H,W]`` (or ``[3,H,W]``) float in [0, 1] -> list of PIL RGB images (values rounded like diffusers)."""
    from PIL import Image

    if images.dim() == 3:
        images = images.unsqueeze(0)
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def save_png(image, path: str | Path, overwrite: bool = True) -> Path:
    """Write one image (PIL, or a ``[3,H,W]``/``[1,3,H,W]`` tensor) as PNG, atomically (an existing file is only
    replaced with ``overwrite``)."""
    pil = to_pil_images(image)[0] if isinstance(image, torch.Tensor) else image
    return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"), overwrite=overwrite)
