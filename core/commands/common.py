"""Arguments and helpers shared by subcommands (model, device, dtype, seeds, image output)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from ..errors import RenegError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="'tiny'/'tiny-v'/'tiny-pixart' (random test models), a diffusers folder (SD or PixArt-α), "
                        "a .safetensors checkpoint or a hub id")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="network dtype (default: fp16 on cuda, fp32 on cpu)")


def resolve_device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    if name:
        return DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.float32


def load_backend_from_args(args: argparse.Namespace):
    """The backend named by ``--model/--device/--dtype``."""
    from ..diffusers_backend import load_backend

    device = resolve_device(args.device)
    return load_backend(args.model, device=device, dtype=resolve_dtype(args.dtype, device))


def resolve_negative(backend, negative_file: Optional[str], negative_prompt: Optional[str]) -> torch.Tensor:
    """The negative conditioning ``[1,T,D]`` fp32: a file, a text prompt, or the null text ("")."""
    from ..embedding_io import check_compatible, load_embedding

    if negative_file and negative_prompt is not None:
        raise RenegError("Give either --negative FILE or --negative-prompt TEXT, not both.")
    if negative_file:
        tensor = load_embedding(negative_file).tensor
        check_compatible(tensor, backend.context_dim, where=f"model '{backend.name}'")
        return tensor
    return backend.encode_prompts([negative_prompt or ""]).float().cpu()


def save_images(images: torch.Tensor, out: str | Path) -> list[Path]:
    """Save ``[B,3,H,W]`` images in [0,1] as PNG(s), each atomically; ``out`` gets ``-i`` suffixes for B > 1."""
    from ..images import save_png, to_pil_images

    out = Path(out)
    pils = to_pil_images(images)
    paths = [out] if len(pils) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(pils))]
    return [save_png(pil, path) for pil, path in zip(pils, paths)]
