"""Arguments and helpers shared by subcommands (model, device, dtype, seeds, image output, overwrite flag).

Numeric arguments are validated by argparse (``int_in``, ``float_in``): a bad value is one usage error, exit 2.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import RenegError
from ..outputs import OVERWRITE_FLAG, check_output_file

SEED_MAX = 2 ** 64 - 1      #: torch.Generator.manual_seed accepts 0 .. 2**64-1
MAX_IMAGE_SIDE = 8192
MAX_DDIM_STEPS = 1000       #: the schedulers' training timesteps


def int_in(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    """argparse type: an integer in ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            value = int(text, 0) if text.strip().lower().startswith(("0x", "0o", "0b")) else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range; use {lo}..{hi}" if hi is not None else f"{value} must be >= {lo}")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < lo or value > hi or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; use {'>' if lo_open else ''}{lo:g}..{hi:g}")
        return value
    parse.__name__ = "number"
    return parse


seed_arg = int_in(0, SEED_MAX)
side_arg = int_in(8, MAX_IMAGE_SIDE)
ddim_steps_arg = int_in(1, MAX_DDIM_STEPS)
guidance_arg = float_in(0.0, 100.0)
lr_arg = float_in(0.0, 10.0, lo_open=True)


def device_arg(text: str) -> str:
    """argparse type: a torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (no GPU, or a torch build "
                                             "without CUDA); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA "
                                             f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: Apple MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: ReNeg runs on cpu, cuda or mps")
    return text


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    """The one overwrite flag of every command that writes files."""
    p.add_argument(OVERWRITE_FLAG, action="store_true", help=f"replace {what} (default: refuse and exit)")


def image_paths(out: str | Path, count: int) -> list[Path]:
    """The PNG paths :func:`save_images` writes for ``count`` images."""
    out = Path(out).expanduser()
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def check_image_outputs(out: str | Path, count: int, *, overwrite: bool, inputs: Sequence = ()) -> list[Path]:
    """Every PNG an image-writing command will produce may be written (checked before any work)."""
    return [check_output_file(p, overwrite=overwrite, inputs=inputs, what="PNG image", suffix=".png")
            for p in image_paths(out, count)]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="'tiny'/'tiny-v'/'tiny-pixart'/'tiny-xl' (random test models), 'toy'/'toy-2' (trained toy "
                        "world), a diffusers folder (SD, SDXL or PixArt-α), a .safetensors checkpoint or a hub id")
    p.add_argument("--device", type=device_arg, default=None,
                   help="torch device (default: cuda if available, else cpu)")
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
    from ..model_boundary import encode_fp32

    return encode_fp32(backend, [negative_prompt or ""]).cpu()


def save_images(images: torch.Tensor, out: str | Path, overwrite: bool = True) -> list[Path]:
    """Save ``[B,3,H,W]`` images in [0,1] as PNG(s), each atomically; ``out`` gets ``-i`` suffixes for B > 1."""
    from ..images import save_png, to_pil_images

    if not bool(torch.isfinite(images).all()):
        from ..errors import NonFiniteError

        raise NonFiniteError("The generated image holds NaN/Inf values (the sampler diverged: guidance too high, "
                             "an embedding with extreme values, or fp16 overflow); nothing was saved. Lower the "
                             "guidance or use --dtype fp32.")
    pils = to_pil_images(images)
    return [save_png(pil, path, overwrite=overwrite) for pil, path in zip(pils, image_paths(out, len(pils)))]
