"""What the *Load* and *Save ReNeg Embedding* nodes do with files (plain Python; tested without ComfyUI).

Loading: a broken, dangerous or oversized file is the core loader's one clear message, as a queue-time
validation error (the red node, no traceback) and, for linked names, as the node's error when it runs.
Saving: a new ``<prefix>_NNNNN.safetensors`` each time, written atomically and never over an existing file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..core.embedding_io import check_compatible, load_embedding, save_embedding
from ..core.errors import IncompatibleEmbeddingError, OutputError, RenegError
from ..core.file_check import embedding_problem
from . import files
from ..core.pixart_backend import MAX_SEQUENCE_LENGTH
from .pixart import T5_WIDTH, attended_rows, full_rows

#: Tries when another save takes the free name first.
SAVE_TRIES = 100


def file_problem(path: Optional[str | os.PathLike]) -> Optional[str]:
    """Why the embedding file at ``path`` cannot be loaded (None: it loads, or there is no local file yet)."""
    return None if path is None else embedding_problem(path)


def load_for_clip(path: str | os.PathLike, choice: str, width: int, released_usable: Mapping[str, Any]) -> torch.Tensor:
    """The embedding at ``path`` (dropdown entry ``choice``) if it fits a CLIP of ``width``; else one error that
    names the released files that would fit. A PixArt-α file (width 4096) comes back as its attended rows only
    (``[1, k, 4096]``; the released file: ``[1, 1, 4096]``), the form ComfyUI's unmasked PixArt needs; an SDXL
    file as its packed ``[1, 78, 2048]`` pair (see comfy_nodes/sdxl.py)."""
    emb = load_embedding(path)
    try:
        check_compatible(emb.tensor, width, where="connected CLIP")
    except IncompatibleEmbeddingError as exc:
        fits = files.released_for_width(released_usable, width)
        hint = f" Released files for this model: {', '.join(fits)}." if fits else ""
        raise IncompatibleEmbeddingError(f"{choice}: {exc}{hint}") from None
    if width == T5_WIDTH:
        return attended_rows(emb.tensor, emb.metadata)
    return emb.tensor


def save_new(directory: str | os.PathLike, prefix: str, tensor: torch.Tensor, **metadata) -> Path:
    """Save ``tensor`` as the first free ``<directory>/<prefix>_NNNNN.safetensors`` (never replacing a file).

    A PixArt conditioning (4096 wide, attended rows only) is saved as the 120-row form the CLI and the Load node
    read: zero rows after its own, ``attention_mask`` metadata saying which rows are attended."""
    if tensor.shape[-1] == T5_WIDTH and tensor.shape[-2] < MAX_SEQUENCE_LENGTH:
        tensor = full_rows(tensor, "Save ReNeg Embedding")
    for _ in range(SAVE_TRIES):
        path = files.next_free_path(directory, prefix)
        try:
            return save_embedding(path, tensor, overwrite=False, **metadata)
        except OutputError:
            if not os.path.lexists(path):
                raise  # not a name clash: a folder in the way, an unwritable folder, ...
    raise RenegError(f"No free file name for {prefix!r} in {directory} after {SAVE_TRIES} tries; choose another "
                     "filename_prefix.")
