"""SDXL conditionings in ComfyUI <-> the engine's packed SDXL negatives (plain torch, no ComfyUI import).

ComfyUI's SDXL conditioning is ``[[context [B, 77, 2048], {"pooled_output": [B, 1280], ...}]]``: the KSampler
hands the context to the UNet as cross-attention and ``comfy/model_base.py: SDXL.encode_adm`` builds the UNet's
``y`` (adm) from ``pooled_output`` plus its own size/crop embedding of the image size. The engine carries the
SDXL negative as one packed tensor ``[B, 78, 2048]`` (:mod:`~..core.sdxl_backend`: rows 0..76 the context, row
77 the pooled embedding in its first 1280 columns); :func:`packed_of` / :func:`conditioning_of` convert.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.errors import RenegError
from ..core.sdxl_backend import CONTEXT_DIM, CONTEXT_TOKENS, POOLED_DIM, is_packed, pack, unpack

#: Width of SDXL's cross-attention context (CLIP-L 768 + OpenCLIP-bigG 1280).
SDXL_WIDTH = CONTEXT_DIM


def is_sdxl_width(width: int) -> bool:
    return int(width) == SDXL_WIDTH


def packed_of(tensor: torch.Tensor, pooled: Any, what: str) -> torch.Tensor:
    """A ComfyUI SDXL context ``[B, 77·k, 2048]`` (first 77-token chunk used) + ``pooled_output`` ``[1|B, 1280]``
    as the engine's packed ``[B, 78, 2048]`` (fp32, CPU, autograd-capable)."""
    if tensor.dim() != 3 or tensor.shape[-1] != SDXL_WIDTH:
        raise RenegError(f"{what}: conditioning is {list(tensor.shape)}; an SDXL conditioning is [batch, 77, "
                         f"{SDXL_WIDTH}] (CLIP-L + OpenCLIP-bigG).")
    if tensor.shape[1] < CONTEXT_TOKENS or tensor.shape[1] % CONTEXT_TOKENS:
        raise RenegError(f"{what}: {tensor.shape[1]} tokens is not a whole number of 77-token CLIP chunks.")
    if not isinstance(pooled, torch.Tensor) or pooled.dim() != 2 or pooled.shape[-1] != POOLED_DIM \
            or pooled.shape[0] not in (1, tensor.shape[0]):
        shape = list(pooled.shape) if isinstance(pooled, torch.Tensor) else None
        raise RenegError(f"{what}: this SDXL conditioning has no usable pooled_output (got {shape}; SDXL needs "
                         f"[1, {POOLED_DIM}]): connect a CLIP Text Encode of the SDXL checkpoint's CLIP or a Load "
                         "ReNeg Embedding of an SDXL file.")
    with torch.inference_mode(False):
        context = tensor[:, :CONTEXT_TOKENS].detach().to("cpu", torch.float32).clone()
        pool = pooled.detach().to("cpu", torch.float32).clone()
        if pool.shape[0] != context.shape[0]:
            pool = pool.expand(context.shape[0], -1).clone()
        return pack(context, pool)


def conditioning_of(packed: torch.Tensor) -> list[list[Any]]:
    """The packed ``[B, 78, 2048]`` negative(s) as a ComfyUI SDXL CONDITIONING (detached fp32 CPU)."""
    if not is_packed(packed):
        raise RenegError(f"Not an SDXL negative in the packed layout [B, 78, {SDXL_WIDTH}]: {list(packed.shape)}.")
    with torch.inference_mode(False):
        context, pooled = unpack(packed.detach().to("cpu", torch.float32))
        return [[context.clone(), {"pooled_output": pooled.clone()}]]
