"""Negative-embedding files: load (released pickles, plain or ReNeg safetensors), validate, save atomically.

Our format is a ``.safetensors`` file with one tensor under :data:`TENSOR_KEY` (``[1, T, D]`` float32) and string
metadata (see :func:`build_metadata`). Released ReNeg files are torch pickles of a bare tensor: they are only ever
read with ``torch.load(weights_only=True)``, so a pickle that tries to run code is refused, never executed.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import IncompatibleEmbeddingError, RenegError, UnsafeFileError

FORMAT_NAME = "reneg-negative-embedding"
FORMAT_VERSION = "1"
TENSOR_KEY = "reneg_negative"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

#: (context dim, token count or None) -> (family id, text encoder description)
FAMILIES: dict[tuple[int, int | None], tuple[str, str]] = {
    (768, None): ("sd1", "CLIP ViT-L/14 (SD1.x)"),
    (1024, None): ("sd2", "OpenCLIP ViT-H/14 (SD2.x)"),
    (2048, None): ("sdxl", "CLIP-L + OpenCLIP bigG (SDXL)"),
    (4096, 120): ("pixart-alpha", "T5-v1.1-XXL, 120 tokens (PixArt-alpha)"),
    (4096, None): ("t5-xxl", "T5-v1.1-XXL"),
}


def family_of(context_dim: int, tokens: int | None = None) -> tuple[str, str]:
    """Guess the text-encoder family from the embedding width (and token count)."""
    return FAMILIES.get((context_dim, tokens)) or FAMILIES.get((context_dim, None)) or (
        "unknown", f"unknown text encoder ({context_dim}-wide)")


@dataclass
class NegativeEmbedding:
    """A negative conditioning ``[1, T, D]`` (float32, CPU) and its string metadata."""

    tensor: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def tokens(self) -> int:
        return int(self.tensor.shape[1])

    @property
    def context_dim(self) -> int:
        return int(self.tensor.shape[2])

    @property
    def family(self) -> str:
        return family_of(self.context_dim, self.tokens)[0]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _as_embedding_tensor(obj: Any, path: Path) -> torch.Tensor:
    if isinstance(obj, Mapping):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise RenegError(f"{path}: expected exactly one tensor, found keys {sorted(map(str, obj))}. "
                             "Pass a file holding a single [1,T,D] negative embedding.")
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise RenegError(f"{path}: holds a {type(obj).__name__}, not a tensor. "
                         "Pass a ReNeg negative embedding (.bin/.pt tensor or .safetensors).")
    t = obj.detach()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] != 1:
        raise RenegError(f"{path}: tensor shape {list(obj.shape)} is not a negative embedding; "
                         "expected [1, tokens, dim] (e.g. [1,77,768] for SD1.x).")
    if not t.is_floating_point():
        raise RenegError(f"{path}: tensor dtype {t.dtype} is not floating point.")
    if not torch.isfinite(t).all():
        raise RenegError(f"{path}: tensor contains NaN/Inf values; the file is corrupt.")
    return t.to(device="cpu", dtype=torch.float32).contiguous()


def load_embedding(path: str | os.PathLike) -> NegativeEmbedding:
    """Load a negative embedding from a released pickle, a single-tensor or a ReNeg ``.safetensors``."""
    p = Path(path)
    if p.is_dir():
        raise RenegError(f"{p} is a folder, not a negative embedding file; name a .safetensors/.bin/.pt file in it.")
    if not p.is_file():
        raise RenegError(f"Negative embedding not found: {p}. Check the path (or run `reneg download`).")
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                keys = list(fh.keys())
                tensors = {k: fh.get_tensor(k) for k in keys}
        except (SafetensorError, OSError, ValueError) as exc:
            raise RenegError(f"{p}: not a readable .safetensors file ({exc}).") from exc
        obj = tensors[TENSOR_KEY] if TENSOR_KEY in tensors else tensors
        return NegativeEmbedding(_as_embedding_tensor(obj, p), metadata, str(p))
    if p.suffix.lower() in PICKLE_SUFFIXES:
        try:
            obj = torch.serialization.load(str(p), map_location="cpu", weights_only=True)  # not torch.load: webuis patch it
        except pickle.UnpicklingError as exc:
            raise UnsafeFileError(
                f"{p}: refused to load — the pickle asks to run code or build non-tensor objects "
                f"({str(exc).splitlines()[0] if str(exc) else exc!r}). ReNeg files are plain tensors; "
                "get the file from its official source or convert a trusted copy to .safetensors.") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise RenegError(f"{p}: not a readable torch file ({exc}).") from exc
        return NegativeEmbedding(_as_embedding_tensor(obj, p), {}, str(p))
    raise RenegError(f"{p}: unsupported extension '{p.suffix}'. Use .safetensors, .bin, .pt or .pth.")


def check_compatible(tensor: torch.Tensor, context_dim: int, where: str = "model") -> None:
    """Raise :class:`IncompatibleEmbeddingError` if the embedding width does not match the model."""
    dim = int(tensor.shape[-1])
    if dim != context_dim:
        emb_family = family_of(dim, int(tensor.shape[-2]) if tensor.dim() >= 2 else None)[1]
        model_family = family_of(context_dim)[1]
        raise IncompatibleEmbeddingError(
            f"Negative embedding is {dim}-wide ({emb_family}) but the {where} expects {context_dim}-wide "
            f"conditioning ({model_family}). Use an embedding trained for this model family"
            + (" (PixArt-α embeddings need a PixArt-α model, e.g. PixArt-alpha/PixArt-XL-2-512x512)."
               if dim == 4096 else "."))


def broadcast_negative(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Expand a batch-1 negative to ``batch`` rows (a view; gradients flow back to the single row)."""
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] != 1:
        raise RenegError(f"Negative embedding batch {tensor.shape[0]} cannot broadcast to batch {batch}.")
    return tensor.expand(batch, *tensor.shape[1:])


def build_metadata(tensor: torch.Tensor, *, base_model: str = "", reward: str = "", recipe: Mapping | str = "",
                   steps: int | str = "", created_by: str = "reneg", **extra: Any) -> dict[str, str]:
    """String metadata of our format (safetensors metadata must be ``str -> str``)."""
    tokens, dim = int(tensor.shape[-2]), int(tensor.shape[-1])
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "context_dim": str(dim),
        "tokens": str(tokens),
        "family": family_of(dim, tokens)[0],
        "base_model": str(base_model),
        "reward": str(reward),
        "recipe": recipe if isinstance(recipe, str) else json.dumps(recipe, sort_keys=True),
        "steps": str(steps),
        "created_by": str(created_by),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    if meta["family"] == "pixart-alpha":  # the T5 mask the tensor carries (see core/pixart_backend.py)
        from .pixart_backend import mask_metadata

        meta["attention_mask"] = mask_metadata(tensor)
    return meta


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``; on any failure the temp file is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; saved files get the usual permissions
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def save_embedding(path: str | os.PathLike, embedding: NegativeEmbedding | torch.Tensor,
                   **metadata: Any) -> Path:
    """Save in our ``.safetensors`` format, atomically. Extra keyword metadata overrides stored metadata."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise RenegError(f"{p}: ReNeg embeddings are saved as .safetensors; change the extension.")
    if isinstance(embedding, NegativeEmbedding):
        tensor, stored = embedding.tensor, dict(embedding.metadata)
    else:
        tensor, stored = embedding, {}
    tensor = _as_embedding_tensor(tensor, p)
    keep = {k: v for k, v in stored.items() if k not in ("format", "format_version", "context_dim", "tokens",
                                                          "family", "created_at")}
    meta = build_metadata(tensor, **{**keep, **metadata})
    return atomic_write(p, lambda tmp: save_file({TENSOR_KEY: tensor}, tmp, metadata=meta))


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """The facts ``reneg info`` prints: shape, dtype, context dim, family guess, sha256, metadata."""
    p = Path(path)
    emb = load_embedding(p)
    fam, desc = family_of(emb.context_dim, emb.tokens)
    t = emb.tensor
    return {
        "path": str(p), "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
        "context_dim": emb.context_dim, "tokens": emb.tokens, "family": fam, "text_encoder": desc,
        "sha256": sha256_file(p), "norm": round(float(t.norm()), 6), "mean": round(float(t.mean()), 6),
        "std": round(float(t.std()), 6), "metadata": emb.metadata,
    }
