"""Does a file load as a negative embedding? The loader's own one-line message, cached per file version.

Host dropdowns (A1111) and queue-time node checks (ComfyUI) ask this for every listed file; a file is only
read again when its size or modification time changed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .embedding_io import load_embedding
from .errors import RenegError

_validity: dict[tuple, Optional[str]] = {}


def embedding_problem(path: str | os.PathLike) -> Optional[str]:
    """None if ``path`` loads as a negative embedding, else why not (the loader's message)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        try:
            load_embedding(p)  # the loader words it (missing, broken symlink, ...)
        except RenegError as exc:
            return str(exc)
        return f"{p} cannot be read."
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _validity:
        try:
            load_embedding(p)
            _validity[key] = None
        except RenegError as exc:
            _validity[key] = str(exc)
    return _validity[key]
