"""PixArt-α conditionings in ComfyUI <-> the engine's 120-row negatives (plain torch, no ComfyUI import).

ComfyUI 0.3.64 runs PixArt-α without a T5 attention mask: ``comfy/model_base.py: PixArt.extra_conds`` hands the
transformer ``c_crossattn`` as is, and ``comfy/ldm/pixart/blocks.py: MultiHeadCrossAttention`` attends to every
row (``assert mask is None``). Its T5 tokenizer does not pad (``pad_to_max_length=False``), so a prompt's
conditioning is ``[1, L, 4096]``: exactly the rows diffusers attends to. A ReNeg PixArt negative, learned under a
mask over 120 rows, therefore goes to ComfyUI as **its attended rows only** (:func:`attended_rows`; the released
file: row 0, ``[1, 1, 4096]``), which is the same cross-attention (each image token's softmax over the attended
keys; masked keys get weight 0 in diffusers).

The engine works on ``[B, 120, 4096]`` tensors that carry the mask in-band
(:func:`~..core.pixart_backend.attention_mask_of`: zero rows are not attended); :func:`full_rows` pads a ComfyUI
conditioning with zero rows into that form and the adapter calls the model on the attended rows of each row.
"""
from __future__ import annotations

import torch

from ..core.errors import RenegError
from ..core.pixart_backend import FAMILY, MAX_SEQUENCE_LENGTH, attention_mask_of

#: Width of the T5-XXL conditioning of PixArt-α.
T5_WIDTH = 4096


def mask_from_metadata(metadata: dict | None, tokens: int) -> torch.Tensor | None:
    """The ``attention_mask`` a saved PixArt embedding records (a ``0``/``1`` string), or None when absent."""
    text = (metadata or {}).get("attention_mask")
    if not text:
        return None
    text = text.strip()
    if len(text) != tokens or set(text) - {"0", "1"} or "1" not in text:
        raise RenegError(f"The embedding's attention_mask metadata ({text[:20]!r}…, {len(text)} entries) does not "
                         f"fit its {tokens} rows: re-save the file with `reneg convert` or the Save ReNeg Embedding "
                         "node.")
    return torch.tensor([c == "1" for c in text])


def attended_rows(tensor: torch.Tensor, metadata: dict | None = None) -> torch.Tensor:
    """``[1, k, 4096]``: the rows of a PixArt negative that diffusers attends to (what ComfyUI must be given).

    The mask is the file's ``attention_mask`` metadata when it has one, else the in-band rule of
    :func:`~..core.pixart_backend.attention_mask_of` (the released file, which has no metadata: the empty
    prompt's mask, row 0 only).
    """
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise RenegError(f"A PixArt negative must be [1, tokens, 4096]; got {list(tensor.shape)}.")
    mask = mask_from_metadata(metadata, int(tensor.shape[1]))
    if mask is None:
        mask = attention_mask_of(tensor)[0]
    return tensor[:, mask.to(tensor.device)]


def full_rows(tensor: torch.Tensor, what: str, tokens: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
    """A ComfyUI PixArt conditioning ``[B, L, 4096]`` (attended rows only) as the engine's ``[B, 120, 4096]``
    with zero (not attended) rows after the first ``L``. Longer conditionings keep their first 120 rows, as
    diffusers' tokenizer truncates prompts to 120 tokens."""
    if tensor.dim() != 3 or tensor.shape[-1] != T5_WIDTH:
        raise RenegError(f"{what}: conditioning is {list(tensor.shape)}; a PixArt-α conditioning is "
                         f"[batch, tokens, {T5_WIDTH}] (T5-XXL). Connect PixArt's text encoder (CLIP Loader, type "
                         "pixart) or a PixArt ReNeg embedding.")
    rows = int(tensor.shape[1])
    if rows >= tokens:
        return tensor[:, :tokens]
    pad = tensor.new_zeros(tensor.shape[0], tokens - rows, tensor.shape[-1])
    return torch.cat([tensor, pad], dim=1)


def attended_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, k, 4096]``: the attended rows of engine negatives ``[B, 120, 4096]`` (every row the same mask)."""
    masks = attention_mask_of(tensor)
    if not bool((masks == masks[:1]).all()):
        raise RenegError("The refined PixArt negatives attend different rows; they cannot be one CONDITIONING.")
    return tensor[:, masks[0]]


def is_pixart_family(family: str) -> bool:
    return family == FAMILY
