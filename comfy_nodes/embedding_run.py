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

#: Tries when another save takes the free name first.
SAVE_TRIES = 100


def file_problem(path: Optional[str | os.PathLike]) -> Optional[str]:
    """Why the embedding file at ``path`` cannot be loaded (None: it loads, or there is no local file yet)."""
    return None if path is None else embedding_problem(path)


def load_for_clip(path: str | os.PathLike, choice: str, width: int, released_usable: Mapping[str, Any]) -> torch.Tensor:
    """The embedding at ``path`` (dropdown entry ``choice``) if it fits a CLIP of ``width``; else one error that
    names the released files that would fit."""
    emb = load_embedding(path)  # an SDXL file: its packed [1, 78, 2048] pair (see comfy_nodes/sdxl.py)
    try:
        check_compatible(emb.tensor, width, where="connected CLIP")
    except IncompatibleEmbeddingError as exc:
        fits = files.released_for_width(released_usable, width)
        hint = f" Released files for this model: {', '.join(fits)}." if fits else ""
        raise IncompatibleEmbeddingError(f"{choice}: {exc}{hint}") from None
    return emb.tensor


def save_new(directory: str | os.PathLike, prefix: str, tensor: torch.Tensor, **metadata) -> Path:
    """Save ``tensor`` as the first free ``<directory>/<prefix>_NNNNN.safetensors`` (never replacing a file)."""
    for _ in range(SAVE_TRIES):
        path = files.next_free_path(directory, prefix)
        try:
            return save_embedding(path, tensor, overwrite=False, **metadata)
        except OutputError:
            if not os.path.lexists(path):
                raise  # not a name clash: a folder in the way, an unwritable folder, ...
    raise RenegError(f"No free file name for {prefix!r} in {directory} after {SAVE_TRIES} tries; choose another "
                     "filename_prefix.")
