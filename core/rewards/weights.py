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
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..errors import MissingWeightsError, UnsafeFileError

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

    Unwraps ``{"state_dict": {...}}`` (the HPSv2 checkpoint format).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.serialization.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickle: mmap unsupported, retry without
        obj = _torch_load(path)
    except Exception as e:
        raise _unsafe(path, e) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeFileError(f"{path} does not hold a state dict (name -> tensor); got {type(obj).__name__}.")
    return obj


def _torch_load(path: Path) -> object:
    try:
        return torch.serialization.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unsafe(path, e) from e


def _unsafe(path: Path, e: Exception) -> UnsafeFileError:
    return UnsafeFileError(f"{path} could not be loaded as a plain tensor checkpoint (torch.load with "
                           f"weights_only=True, no code execution): {type(e).__name__}: {str(e)[:300]}")


def freeze(module: M) -> M:
    """Eval mode, no parameter gradients."""
    module.eval()
    module.requires_grad_(False)
    return module
