"""ComfyUI ``CONDITIONING`` values <-> ReNeg negative-embedding tensors (plain torch, no ComfyUI import).

A ComfyUI conditioning is ``[[tensor [B, T, D], {"pooled_output": tensor [B, P] | None, ...}], ...]``. For
SD1.x/SD2.x the UNet reads only the tensor (cross-attention context); ``pooled_output`` is carried for nodes
that expect the key. Incoming tensors are ComfyUI inference tensors: callers that need autograd clone them
under ``torch.inference_mode(False)`` (:func:`row_tensors` does).
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.errors import RenegError


def pack(tensor: torch.Tensor, pooled: torch.Tensor | None = None) -> list[list[Any]]:
    """A one-entry CONDITIONING holding ``tensor`` ``[1, T, D]`` (detached, CPU, fp32)."""
    if tensor.dim() != 3:
        raise RenegError(f"A conditioning tensor must be [batch, tokens, dim]; got {list(tensor.shape)}.")
    if pooled is None:
        # SD1.x/SD2.x UNets ignore pooled_output; zeros keep nodes that read the key working.
        pooled = torch.zeros(tensor.shape[0], tensor.shape[-1])
    return [[tensor.detach().to("cpu", torch.float32), {"pooled_output": pooled.detach().to("cpu", torch.float32)}]]


def row_tensors(conditioning: Any, what: str) -> list[torch.Tensor]:
    """Each row ``[1, T, D]`` of a one-entry conditioning ``[B, T, D]`` (e.g. ReNeg Refine's batch output), as
    normal fp32 CPU clones."""
    tensor = plain(entry_tensor(conditioning, what))
    return [tensor[i:i + 1].clone() for i in range(tensor.shape[0])]


def entry_tensor(conditioning: Any, what: str) -> torch.Tensor:
    """The ``[rows, T, D]`` tensor of a one-entry conditioning (as given: may be an inference tensor)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise RenegError(f"{what}: expected a CONDITIONING (list of [tensor, dict]); got {type(conditioning).__name__}.")
    if len(conditioning) != 1:
        raise RenegError(f"{what}: got {len(conditioning)} conditioning entries (combined/concatenated "
                         "conditionings). ReNeg needs one: connect a single CLIP Text Encode or ReNeg loader.")
    entry = conditioning[0]
    if not isinstance(entry, (list, tuple)) or len(entry) < 1 or not isinstance(entry[0], torch.Tensor):
        raise RenegError(f"{what}: malformed conditioning entry; expected [tensor, dict].")
    tensor = entry[0]
    if tensor.dim() != 3 or tensor.shape[0] < 1:
        raise RenegError(f"{what}: conditioning tensor has shape {list(tensor.shape)}; ReNeg needs [rows, tokens, "
                         "dim].")
    return tensor


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (autograd-capable) fp32 CPU clone of a (possibly inference) tensor."""
    with torch.inference_mode(False):
        return tensor.detach().to("cpu", torch.float32).clone()


def pooled_of(conditioning: Any) -> torch.Tensor | None:
    """``pooled_output`` of the first entry (a normal fp32 CPU clone), or ``None``."""
    try:
        pooled = conditioning[0][1].get("pooled_output")
    except (IndexError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(pooled, torch.Tensor):
        return None
    with torch.inference_mode(False):
        return pooled.detach().to("cpu", torch.float32).clone()


def apply_strength(embedding: torch.Tensor, null: torch.Tensor | None, strength: float) -> torch.Tensor:
    """``null + strength·(embedding − null)``: 0 gives the plain null-text negative, 1 the embedding itself.

    ``strength == 1`` returns ``embedding`` untouched (no CLIP needed, bit-exact); otherwise ``null`` (the
    null-text conditioning of the model's CLIP) is required and must have the same shape.
    """
    if strength == 1.0:
        return embedding
    if null is None:
        raise RenegError("strength != 1 blends with the empty-prompt conditioning: connect the CLIP input.")
    if null.shape != embedding.shape:
        raise RenegError(f"The CLIP's empty-prompt conditioning is {list(null.shape)} but the embedding is "
                         f"{list(embedding.shape)}: the embedding does not belong to this model family.")
    return torch.lerp(null.to(embedding.dtype), embedding, float(strength))


def fit_tokens(tensor: torch.Tensor, tokens: int, what: str) -> torch.Tensor:
    """Use the first ``tokens`` of a longer (multi-chunk) conditioning; refuse a shorter one."""
    if tensor.shape[1] == tokens:
        return tensor
    if tensor.shape[1] > tokens and tensor.shape[1] % tokens == 0:
        return tensor[:, :tokens]
    raise RenegError(f"{what}: {tensor.shape[1]} tokens cannot be matched to the {tokens}-token negative.")
