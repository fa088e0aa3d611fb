"""Where the ComfyUI nodes find and put files (plain Python; ComfyUI's ``folder_paths`` is passed in).

* Embeddings: ComfyUI folder name ``reneg`` = ``models/reneg/`` (downloads and saves go there), any
  ``reneg:`` paths from ``extra_model_paths.yaml``, and the pack's own ``embeddings/`` folder. Not
  ``models/embeddings/``: that folder holds textual-inversion *token* embeddings, a different thing.
* Reward weights: folder name ``reneg_rewards`` = ``models/reneg_rewards/`` (+ ``reneg_rewards:`` extra paths).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..core.errors import RenegError

EMBEDDING_FOLDER = "reneg"
REWARD_FOLDER = "reneg_rewards"
EMBEDDING_EXTENSIONS = frozenset({".safetensors", ".bin", ".pt", ".pth"})
REWARD_FILE_EXTENSIONS = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt"})
#: Reward dropdown entry meaning "find the weights by name" ($RENEG_REWARDS_DIR, then the Hugging Face cache).
AUTO_WEIGHTS = "auto"


def register_folders(folder_paths, pack_embeddings_dir: str | os.PathLike) -> None:
    """Register ``reneg`` and ``reneg_rewards`` with ComfyUI, keeping paths ``extra_model_paths.yaml`` added.

    ``models/<name>`` becomes the first (default) path; the pack's ``embeddings/`` is appended for ``reneg``.
    """
    defaults = {
        EMBEDDING_FOLDER: ([os.path.join(folder_paths.models_dir, EMBEDDING_FOLDER), str(pack_embeddings_dir)],
                           EMBEDDING_EXTENSIONS),
        REWARD_FOLDER: ([os.path.join(folder_paths.models_dir, REWARD_FOLDER)], REWARD_FILE_EXTENSIONS),
    }
    for name, (paths, extensions) in defaults.items():
        for i, path in enumerate(paths):
            folder_paths.add_model_folder_path(name, path, is_default=(i == 0))
        current, _ = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (current, set(extensions))


#: Released-embedding families the nodes can use: SD1.x / SD2.x UNets and PixArt-α (ComfyUI's PixArt MODEL with
#: its T5-XXL text encoder; see comfy_nodes/pixart.py).
NODE_FAMILIES = frozenset({"sd1", "sd2", "pixart-alpha"})


def usable_released(released: Mapping[str, Any]) -> dict[str, Any]:
    """``{filename: entry}`` of the released embeddings a ComfyUI graph can use (entries have ``family``)."""
    return {name: e for name, e in released.items() if e.family in NODE_FAMILIES}


def embedding_choices(found: Iterable[str], released: Mapping[str, Any]) -> list[str]:
    """Dropdown entries: files found in the embedding folders plus the usable released files (downloaded on
    first use). Released files of families no ComfyUI model here can use are not offered, even when on disk."""
    unusable = {name for name, e in released.items() if e.family not in NODE_FAMILIES}
    return sorted((set(found) | set(usable_released(released))) - unusable, key=str.lower)


def released_for_width(released: Mapping[str, Any], width: int) -> list[str]:
    """File names of the usable released embeddings that are ``width`` wide (e.g. 768: the SD1.x files)."""
    return sorted(name for name, e in usable_released(released).items() if int(e.shape[-1]) == width)


def embedding_problem(choice: str, released: Mapping[str, Any], find_local: Callable[[str], Any],
                      directories: Iterable[str]) -> str | None:
    """Why the Load node cannot use ``choice`` (checked when a graph is queued), or None if it can: a file in
    the embedding folders (``find_local(name)`` is not None) or a usable released file (downloaded on first use)."""
    try:
        name = check_relative_name(choice, "embedding name")
    except RenegError as exc:
        return str(exc)
    entry = released.get(name)
    if entry is not None and entry.family not in NODE_FAMILIES:
        usable = ", ".join(sorted(usable_released(released)))
        return (f"'{name}' is a released embedding for another kind of model ({entry.base_model}), not "
                f"SD1.x/SD2.x/PixArt-α: these nodes cannot use it. Pick one of {usable}.")
    if entry is not None or find_local(name) is not None:
        return None
    return (f"Embedding '{name}' not found in {list(directories)}. Put the file into models/reneg/, press R in "
            "the graph to refresh the list, and pick it again.")


def check_relative_name(name: str, what: str = "file name") -> str:
    """A plain relative name (subfolders allowed) that cannot escape its folder."""
    cleaned = name.strip().replace("\\", "/")
    parts = [p for p in cleaned.split("/") if p]
    if not cleaned or cleaned.startswith("/") or re.match(r"^[A-Za-z]:", cleaned) or ".." in parts or not parts:
        raise RenegError(f"Invalid {what} {name!r}: use a plain name such as 'my_negative' (subfolders allowed, "
                         "no absolute paths or '..').")
    return "/".join(parts)


def with_suffix(name: str, suffix: str = ".safetensors") -> str:
    return name if name.lower().endswith(suffix) else name + suffix


def next_free_path(directory: str | os.PathLike, prefix: str, suffix: str = ".safetensors") -> Path:
    """``<directory>/<prefix>_00001.safetensors`` with the first counter not taken (ComfyUI's save style)."""
    directory = Path(directory)
    prefix = check_relative_name(prefix, "filename prefix")
    pattern = re.compile(re.escape(Path(prefix).name) + r"_(\d{5})" + re.escape(suffix) + "$")
    parent = (directory / prefix).parent
    taken = [int(m.group(1)) for p in (parent.iterdir() if parent.is_dir() else []) if (m := pattern.match(p.name))]
    return directory / f"{prefix}_{max(taken, default=0) + 1:05d}{suffix}"


def reward_weight_choices(directories: Iterable[str | os.PathLike]) -> list[str]:
    """``auto`` + weight files (any depth) + model folders (holding ``config.json``) under the reward folders."""
    found: set[str] = set()
    for d in directories:
        root = Path(d)
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and path.suffix.lower() in REWARD_FILE_EXTENSIONS and not _inside_model_folder(path, root):
                found.add(rel)
            elif path.is_dir() and (path / "config.json").is_file():
                found.add(rel + "/")
    return [AUTO_WEIGHTS] + sorted(found, key=str.lower)


def _inside_model_folder(path: Path, root: Path) -> bool:
    return any((parent / "config.json").is_file() for parent in path.parents if parent != root and root in parent.parents)


def resolve_in(directories: Iterable[str | os.PathLike], relative: str) -> Path | None:
    """First ``<dir>/<relative>`` that exists (file or folder)."""
    relative = check_relative_name(relative.rstrip("/"))
    for d in directories:
        candidate = Path(d) / relative
        if candidate.exists():
            return candidate
    return None
