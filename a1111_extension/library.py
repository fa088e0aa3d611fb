"""Finding and caching negative-embedding files for the webui dropdown (no webui import; tested directly).

Embeddings are listed from the webui's ``models/ReNeg/`` (or the folder set in Settings → ReNeg) and the pack's
own ``embeddings/`` folder (where ``reneg download`` puts the released files). ReNeg files never go into the
webui's ``embeddings/`` folder: A1111 would load a ``[77, 768]`` tensor there as a 77-vector textual inversion (and
reports an SDXL two-tensor file there as a broken embedding). SDXL files are handled as the packed pair
``[1, 78, 2048]`` (:mod:`..core.sdxl_backend`) everywhere here: loading, stacking refined rows, saving (two tensors).
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from ..core.embedding_io import NegativeEmbedding, load_embedding, save_embedding
from ..core.errors import OutputError, RenegError
from ..core.file_check import embedding_problem

SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: The pack's folder (repo root ``embeddings/``).
PACK_EMBEDDINGS_DIR = Path(__file__).resolve().parent.parent / "embeddings"
#: Sub-folder of the models folder for per-prompt refined embeddings (when saving them is enabled).
REFINED_SUBDIR = "refined"


@dataclass(frozen=True)
class EmbeddingFile:
    name: str     #: what the dropdown shows and the infotext records
    path: Path


def list_embeddings(dirs: Iterable[str | os.PathLike]) -> "OrderedDict[str, EmbeddingFile]":
    """All embedding files under ``dirs`` (recursive), keyed by a unique display name.

    The name is the path relative to its folder without suffix (``sd1.5_reneg_emb``, ``refined/cat-1a2b``); a
    name seen in an earlier folder wins over the same name in a later one (the user's folder comes first).
    """
    found: "OrderedDict[str, EmbeddingFile]" = OrderedDict()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in SUFFIXES or not path.is_file() or path.name.startswith("."):
                continue
            rel = path.relative_to(root).with_suffix("").as_posix()
            if rel not in found:
                found[rel] = EmbeddingFile(rel, path)
    return found


def check_file(path: str | os.PathLike) -> Optional[str]:
    """None if ``path`` loads as a negative embedding, else the loader's own error message (cached per
    path, size and mtime, so re-scanning the folder only re-reads changed files)."""
    return embedding_problem(path)


def scan_embeddings(dirs: Iterable[str | os.PathLike]
                    ) -> "tuple[OrderedDict[str, EmbeddingFile], OrderedDict[str, str]]":
    """(loadable files by display name, ``{name: why it is not listed}`` for files that do not load)."""
    good: "OrderedDict[str, EmbeddingFile]" = OrderedDict()
    bad: "OrderedDict[str, str]" = OrderedDict()
    for name, f in list_embeddings(dirs).items():
        reason = check_file(f.path)
        if reason is None:
            good[name] = f
        else:
            bad[name] = reason
    return good, bad


def problems_html(bad: "dict[str, str]") -> str:
    """A short HTML note listing the files left out of the dropdown and why ('' when there are none)."""
    if not bad:
        return ""
    import html

    items = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(r)}</li>" for n, r in bad.items())
    return (f"<div class='reneg-bad-files'><p>Not listed — {len(bad)} file(s) in the ReNeg folders could not be "
            f"loaded:</p><ul>{items}</ul></div>")


def resolve(name: str, dirs: Iterable[str | os.PathLike]) -> EmbeddingFile:
    """The file for a dropdown/infotext/API name; also accepts a file name with suffix or the bare stem."""
    if not name:
        raise RenegError("No negative embedding selected. Pick one in the ReNeg dropdown (or pass its name).")
    files = list_embeddings(dirs)
    key = name.strip()
    if key in files:
        return files[key]
    stem = Path(key).with_suffix("").as_posix() if Path(key).suffix.lower() in SUFFIXES else key
    if stem in files:
        return files[stem]
    by_base = [f for f in files.values() if f.path.stem == Path(stem).name]
    if len(by_base) == 1:
        return by_base[0]
    known = ", ".join(files) or "none"
    raise RenegError(f"Negative embedding '{name}' not found in {', '.join(map(str, dirs))}. Known: {known}. "
                     "Put the file in models/ReNeg/ (not in embeddings/) and press the refresh button.")


def short_hash(path: str | os.PathLike) -> str:
    """First 10 hex digits of the file's sha256 (recorded in the infotext)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:10]


class EmbeddingCache:
    """Loaded embeddings keyed by (path, size, mtime): re-reads a file only when it changed on disk."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._items: "OrderedDict[tuple, tuple[NegativeEmbedding, str]]" = OrderedDict()

    def load(self, path: str | os.PathLike) -> tuple[NegativeEmbedding, str]:
        """(embedding, short sha256) of ``path``."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            load_embedding(p)  # raises the loader's clear error (missing, broken symlink, ...)
            raise
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        embedding = load_embedding(p)
        try:
            digest = short_hash(p)
        except OSError as exc:
            raise RenegError(f"{p}: cannot be read ({exc.strerror or exc}).") from exc
        item = (embedding, digest)
        self._items[key] = item
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return item


class RefineCache:
    """Per-prompt refinement results (LRU): the same prompt, seed and settings are not refined twice."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._items: "OrderedDict[tuple, object]" = OrderedDict()

    def get(self, key: tuple) -> Optional[object]:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: tuple, value: object) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def refined_filename(base_name: str, prompt: str, seed: int, settings: Sequence = ()) -> str:
    """``refined/<base>-<hash of prompt+seed(+settings)>.safetensors`` (relative to the models folder)."""
    text = f"{prompt}\n{seed}" + (f"\n{tuple(settings)!r}" if settings else "")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(base_name).name)
    return f"{REFINED_SUBDIR}/{safe}-{digest}.safetensors"


def save_refined(folder: str | os.PathLike, base_name: str, prompt: str, seed: int, tensor: torch.Tensor,
                 settings: Sequence = (), /, **metadata) -> tuple[Path, bool]:
    """Save a per-prompt refined embedding under ``<folder>/refined/``, atomically and never replacing a file:
    ``(path, saved)``. The name digests prompt, seed and ``settings`` (model, embedding and refinement
    settings), so a file already there holds this same refinement and is kept as it is."""
    path = Path(folder) / refined_filename(base_name, prompt, seed, settings)
    if os.path.lexists(path):
        return path, False
    try:
        save_embedding(path, tensor, overwrite=False, **metadata)
    except OutputError:  # saved meanwhile by another generation (or a folder of that name): keep it
        return path, False
    return path, True


def stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """``[1, T, D]`` per batch row -> ``[1, T, D]`` if all rows are the same tensor, else ``[B, T, D]`` (SDXL: the
    packed ``[1, 78, 2048]`` rows, so row i's context and pooled part stay together)."""
    if all(r is rows[0] for r in rows):
        return rows[0]
    return torch.cat(rows, dim=0)
