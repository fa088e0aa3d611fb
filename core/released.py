"""Registry of the released ReNeg embeddings and their sha256-verified download."""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .embedding_io import sha256_file
from .errors import OutputError, RenegError
from .outputs import atomic_write, check_output_file

PACK_ROOT = Path(__file__).resolve().parent.parent
REGISTRY_PATH = PACK_ROOT / "embeddings" / "registry.json"
#: The pack's own embedding folder (CLI default download/save location).
PACK_EMBEDDINGS_DIR = PACK_ROOT / "embeddings"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


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
    try:
        data = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RenegError(f"The registry of released embeddings ({REGISTRY_PATH}) is unreadable ({exc}); "
                         "reinstall the pack.") from exc
    return {e["name"]: ReleasedEmbedding(**{**e, "shape": tuple(e["shape"])}) for e in data["embeddings"]}


def get_released(name: str) -> ReleasedEmbedding:
    reg = released_embeddings()
    key = name.removesuffix("_reneg_emb.bin")
    if key not in reg:
        raise RenegError(f"Unknown released embedding '{name}'. Available: {', '.join(reg)}.")
    return reg[key]


def verify_file(path: str | os.PathLike, entry: ReleasedEmbedding) -> bool:
    """True if ``path`` is a regular file with the pinned sha256."""
    p = Path(path)
    try:
        return p.is_file() and p.stat().st_size < 1 << 30 and sha256_file(p) == entry.sha256
    except OSError:
        return False


def download_released(name: str, directory: str | os.PathLike = PACK_EMBEDDINGS_DIR, *,
                      progress: Optional[Callable[[int, int], None]] = None, timeout: float = 60.0,
                      overwrite: bool = False) -> Path:
    """Download one released embedding into ``directory``; verify sha256 before renaming into place.

    An existing file with the right hash is kept (no network); a different file there is only replaced with
    ``overwrite``. Offline/unreachable, a full disk or an unwritable folder give one clear error.
    """
    entry = get_released(name)
    target = Path(directory).expanduser() / entry.filename
    if verify_file(target, entry):
        return target
    if os.path.lexists(target) and not overwrite:
        what = "a folder" if target.is_dir() else "a different file (its sha256 does not match the release)"
        raise OutputError(f"{target} exists and is {what}; pass --overwrite to replace it with the released "
                          f"{entry.name} embedding, or choose another --dir.")
    check_output_file(target, overwrite=True, what=f"{entry.name} download")

    def fetch(tmp: str) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout) as resp, open(tmp, "wb") as fh:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while block := resp.read(1 << 16):
                    if done + len(block) > MAX_DOWNLOAD_BYTES:
                        raise RenegError(f"{entry.url} sent more than {MAX_DOWNLOAD_BYTES:,} bytes; that is not "
                                         f"the {entry.name} embedding. Nothing was saved.")
                    fh.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except OSError as exc:
            if not isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError)) and \
                    exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # a local write problem: atomic_write names it
            raise RenegError(
                f"Could not download {entry.filename} from {entry.url} ({exc}). You seem to be offline: download "
                f"it by other means and place it at {target} (sha256 {entry.sha256}).") from exc
        except http.client.HTTPException as exc:
            raise RenegError(
                f"Could not download {entry.filename} from {entry.url} ({exc}). You seem to be offline: download "
                f"it by other means and place it at {target} (sha256 {entry.sha256}).") from exc
        if digest.hexdigest() != entry.sha256:
            raise RenegError(f"Downloaded {entry.filename} has sha256 {digest.hexdigest()}, expected "
                             f"{entry.sha256}; the file was discarded. Try again or report the source change.")

    return atomic_write(target, fetch, overwrite=True)
