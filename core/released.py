"""Registry of the released ReNeg embeddings and their sha256-verified download."""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .embedding_io import atomic_write, sha256_file
from .errors import RenegError

PACK_ROOT = Path(__file__).resolve().parent.parent
REGISTRY_PATH = PACK_ROOT / "embeddings" / "registry.json"
#: The pack's own embedding folder (CLI default download/save location).
PACK_EMBEDDINGS_DIR = PACK_ROOT / "embeddings"


@dataclass(frozen=True)
class ReleasedEmbedding:
    name: str
    family: str
    base_model: str
    shape: tuple[int, ...]
    filename: str
    url: str
    sha256: str


def released_embeddings() -> dict[str, ReleasedEmbedding]:
    """All registry entries by name."""
    data = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    return {e["name"]: ReleasedEmbedding(**{**e, "shape": tuple(e["shape"])}) for e in data["embeddings"]}


def get_released(name: str) -> ReleasedEmbedding:
    reg = released_embeddings()
    key = name.removesuffix("_reneg_emb.bin")
    if key not in reg:
        raise RenegError(f"Unknown released embedding '{name}'. Available: {', '.join(reg)}.")
    return reg[key]


def verify_file(path: str | os.PathLike, entry: ReleasedEmbedding) -> bool:
    """True if ``path`` exists and has the pinned sha256."""
    return Path(path).is_file() and sha256_file(path) == entry.sha256


def download_released(name: str, directory: str | os.PathLike = PACK_EMBEDDINGS_DIR, *,
                      progress: Optional[Callable[[int, int], None]] = None, timeout: float = 60.0) -> Path:
    """Download one released embedding into ``directory``; verify sha256 before renaming into place.

    An existing file with the right hash is kept (no network). Offline/unreachable gives one clear error.
    """
    entry = get_released(name)
    target = Path(directory) / entry.filename
    if verify_file(target, entry):
        return target

    def fetch(tmp: str) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout) as resp, open(tmp, "wb") as fh:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while block := resp.read(1 << 16):
                    fh.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise RenegError(
                f"Could not download {entry.filename} from {entry.url} ({exc}). You seem to be offline: download "
                f"it by other means and place it at {target} (sha256 {entry.sha256}).") from exc
        if digest.hexdigest() != entry.sha256:
            raise RenegError(f"Downloaded {entry.filename} has sha256 {digest.hexdigest()}, expected "
                             f"{entry.sha256}; the file was discarded. Try again or report the source change.")

    return atomic_write(target, fetch)
