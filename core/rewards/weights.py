"""Finding reward weights offline-first, and freezing reward modules.

Lookup order for every reward file or folder:

1. the explicit path passed as ``weights=`` (a file, or a folder that contains the expected file name);
2. the folder named by the environment variable ``RENEG_REWARDS_DIR`` (files by their hub file name, e.g.
   ``$RENEG_REWARDS_DIR/HPS_v2.1_compressed.pt``; model folders by their repo name, e.g.
   ``$RENEG_REWARDS_DIR/PickScore_v1/``);
3. the Hugging Face hub (its local cache first; downloads only when online and ``HF_HUB_OFFLINE`` is unset).

If all fail, one ``MissingWeightsError`` says which file to fetch from where and how to pass it.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..embedding_io import check_torch_file, clean_cause
from ..errors import CorruptFileError, MissingWeightsError, UnsafeFileError

REWARDS_DIR_ENV = "RENEG_REWARDS_DIR"
M = TypeVar("M", bound=torch.nn.Module)
T = TypeVar("T")


def _how_to(what: str, repo_id: str, name: str, is_dir: bool) -> str:
    get = (f"hf download {repo_id} --local-dir <DIR>/{name}" if is_dir
           else f"hf download {repo_id} {name} --local-dir <DIR>")
    return (f"{what} weights not found: need {'folder' if is_dir else 'file'} '{name}' from "
            f"https://huggingface.co/{repo_id}. Download it elsewhere (`{get}`), then pass its path as the "
            f"reward weights argument, or put it in the folder named by ${REWARDS_DIR_ENV}.")


def _rewards_dir() -> Path | None:
    d = os.environ.get(REWARDS_DIR_ENV)
    return Path(d).expanduser() if d else None


def resolve_file(weights: str | os.PathLike | None, filename: str, repo_id: str, what: str) -> Path:
    """Path of a single weights file (explicit path -> ``$RENEG_REWARDS_DIR`` -> hub cache/download)."""
    if weights is not None:
        p = Path(weights).expanduser()
        p = p / filename if p.is_dir() else p
        if p.is_file():
            return p
        raise MissingWeightsError(f"{p} does not exist. " + _how_to(what, repo_id, filename, False))
    d = _rewards_dir()
    if d is not None and (d / filename).is_file():
        return d / filename
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename))
    except Exception as e:  # offline, not cached, no access, ...
        raise MissingWeightsError(_how_to(what, repo_id, filename, False) + f" (hub: {type(e).__name__})") from e


def load_pretrained(weights: str | os.PathLike | None, repo_id: str, what: str,
                    loader: Callable[[str], T]) -> T:
    """``loader(source)`` for a transformers-style model folder (explicit -> ``$RENEG_REWARDS_DIR/<repo
    name>`` -> hub id), turning a missing folder or failed download into ``MissingWeightsError``."""
    name = repo_id.split("/")[-1]
    if weights is not None:
        source = Path(weights).expanduser()
        if not source.is_dir():
            raise MissingWeightsError(f"{source} is not a folder. " + _how_to(what, repo_id, name, True))
    else:
        d = _rewards_dir()
        source = d / name if d is not None and (d / name).is_dir() else repo_id
    try:
        return loader(str(source))
    except OSError as e:  # transformers raises OSError (or subclasses) for missing/undownloadable files
        raise MissingWeightsError(_how_to(what, repo_id, name, True) + f" ({type(e).__name__}: {e})"[:600]) from e


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch pickle (``weights_only=True``: no code execution).

    Unwraps ``{"state_dict": {...}}`` (the HPSv2 checkpoint format). An empty, truncated or wrong file (an HTML
    page, a Git-LFS pointer) is a :class:`CorruptFileError` saying to re-download it; a pickle that would run
    code is an :class:`UnsafeFileError`.
    """
    path = Path(path)
    check_weights_file(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _corrupt(path, clean_cause(e)) from e
    try:
        obj = torch.serialization.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise _unsafe(path, e) from e
    except RuntimeError:  # legacy (non-zip) pickle: mmap unsupported, retry without
        obj = _torch_load(path)
    except Exception as e:
        raise _corrupt(path, clean_cause(e)) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeFileError(f"{path} does not hold a state dict (name -> tensor); got {type(obj).__name__}.")
    return obj


def check_weights_file(path: Path) -> None:
    """Name an empty file, an HTML page, a Git-LFS pointer or a dangerous pickle before torch/safetensors see it
    (cheap: nothing is loaded; the reward loaders and the A1111 install check use it)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(256).lstrip().lower()
    except OSError as e:
        raise MissingWeightsError(f"{path}: cannot be read ({e.strerror or e}).") from e
    if size == 0:
        raise _corrupt(path, "the file is empty (0 bytes)")
    if head.startswith(b"version https://git-lfs"):
        raise _corrupt(path, "it is a Git-LFS pointer, not the weights (`git lfs pull` or download the file itself)")
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise _corrupt(path, "it is a web page (HTML) saved instead of the file")
    if path.suffix != ".safetensors":
        try:
            check_torch_file(path)  # random bytes / text / a pickle that imports code, judged without loading
        except UnsafeFileError:
            raise
        except CorruptFileError as e:
            raise _corrupt(path, "it is not a torch checkpoint: " + str(e).split(": ", 1)[-1].split(". ")[0]) from e


def _torch_load(path: Path) -> object:
    try:
        return torch.serialization.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unsafe(path, e) from e
    except Exception as e:
        raise _corrupt(path, clean_cause(e)) from e


def _corrupt(path: Path, why: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: not readable reward weights ({why}). The file is damaged or incomplete: "
                            "download it again (see the reward's docs for the file name and source).")


def _unsafe(path: Path, e: Exception) -> UnsafeFileError:
    return UnsafeFileError(f"{path} was refused: it is not a plain tensor checkpoint ({clean_cause(e)}), and "
                           "pickles that build other objects are never run. Download the weights from their "
                           "official source.")


def freeze(module: M) -> M:
    """Eval mode, no parameter gradients."""
    module.eval()
    module.requires_grad_(False)
    return module
