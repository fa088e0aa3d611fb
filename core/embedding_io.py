"""Negative-embedding files: load (released pickles, plain or ReNeg safetensors), validate, save atomically.

Our format is a ``.safetensors`` file with one tensor under :data:`TENSOR_KEY` (``[1, T, D]`` float32) and string
metadata (see :func:`build_metadata`). An SDXL negative adds its pooled embedding ``[1, 1280]`` under
:data:`~.sdxl_backend.POOLED_KEY` (metadata ``family: sdxl``); in memory it is one tensor in the packed layout
``[1, 78, 2048]`` (:mod:`.sdxl_backend`), so everything that takes ``NegativeEmbedding.tensor`` handles it as is. Released ReNeg files are torch pickles of a bare tensor: they are only ever
read with ``torch.load(weights_only=True)``, so a pickle that tries to run code is refused, never executed.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .errors import (CorruptFileError, FileTooLargeError, IncompatibleEmbeddingError, NonFiniteError, RenegError,
                     UnsafeFileError)
from .outputs import atomic_write  # noqa: F401  (re-exported: hosts and modules import it from here)

FORMAT_NAME = "reneg-negative-embedding"
FORMAT_VERSION = "1"
TENSOR_KEY = "reneg_negative"
POOLED_KEY = "reneg_negative_pooled"     #: SDXL's pooled part (= :data:`.sdxl_backend.POOLED_KEY`)
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


def is_sdxl_pair(tensor: torch.Tensor) -> bool:
    """True for an SDXL negative in the engine's packed layout (context ``[1,77,2048]`` + pooled row)."""
    from .sdxl_backend import is_packed

    return is_packed(tensor)


@dataclass
class NegativeEmbedding:
    """A negative conditioning ``[1, T, D]`` (float32, CPU) and its string metadata.

    For SDXL, ``tensor`` is the packed pair ``[1, 78, 2048]`` (the form the engine takes); :attr:`context` and
    :attr:`pooled` are its two parts (``[1, 77, 2048]`` and ``[1, 1280]``); for other families ``context`` is
    ``tensor`` and ``pooled`` is None.
    """

    tensor: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def context(self) -> torch.Tensor:
        if is_sdxl_pair(self.tensor):
            from .sdxl_backend import unpack

            return unpack(self.tensor)[0]
        return self.tensor

    @property
    def pooled(self) -> torch.Tensor | None:
        if is_sdxl_pair(self.tensor):
            from .sdxl_backend import unpack

            return unpack(self.tensor)[1]
        return None

    @property
    def tokens(self) -> int:
        return int(self.context.shape[1])

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


#: Limits checked before any tensor data is read; they fit every real family (sd1 [1,77,768], sd2
#: [1,77,1024], pixart [1,120,4096], SDXL [1,77,2048] + pooled [1,1280]) and multi-chunk prompts up to 512 tokens.
MAX_TOKENS = 512
MAX_DIM = 8192
MAX_ELEMENTS = 4 * 1024 * 1024            #: all tensors of one file together (16 MiB as float32)
MAX_FILE_BYTES = 64 * 1024 * 1024         #: on-disk size of an embedding file
MAX_PICKLE_BYTES = 1024 * 1024            #: the pickle part of a torch file (a bare tensor needs ~200 bytes)
MAX_ABS_VALUE = 1.0e4                     #: real embeddings stay below ~100; larger values make black images
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ALLOWED_IMPORT_PREFIXES = ("torch.", "torch ", "collections OrderedDict", "collections.OrderedDict",
                            "builtins set", "builtins.set", "_codecs encode", "_codecs.encode", "numpy")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def clean_cause(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception's message without terminal escapes or torch's 'weights_only=False' hint."""
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    first = lines[0] if lines else type(exc).__name__
    first = re.split(r"(?i)\s*(?:in pytorch 2\.6|please file an issue|if you trust|check the recommended)", first)[0]
    return first[:limit] or type(exc).__name__


def _preview(head: bytes) -> str:
    """A safe, printable preview of a file's first bytes (for messages)."""
    return repr(head[:24])[1:]


def check_declared_shape(shape: Sequence[int], path: Path, what: str = "tensor") -> None:
    """Refuse shapes no negative embedding has, by the limit they exceed (before the data is read)."""
    shape = [int(s) for s in shape]
    numel = math.prod(shape) if shape else 1
    if numel > MAX_ELEMENTS:
        raise FileTooLargeError(f"{path}: the {what} declares shape {shape} = {numel:,} values, over the limit of "
                                f"{MAX_ELEMENTS:,} values for a negative embedding; this is not an embedding file.")
    if len(shape) >= 2 and shape[-2] > MAX_TOKENS:
        raise FileTooLargeError(f"{path}: the {what} declares {shape[-2]:,} tokens (shape {shape}); negative "
                                f"embeddings have at most {MAX_TOKENS} tokens (e.g. [1,77,768] for SD1.x).")
    if shape and shape[-1] > MAX_DIM:
        raise FileTooLargeError(f"{path}: the {what} is {shape[-1]:,} wide (shape {shape}); text encoders are at "
                                f"most {MAX_DIM} wide.")


def _as_embedding_tensor(obj: Any, path: Path, saving: bool = False) -> torch.Tensor:
    if isinstance(obj, Mapping):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise RenegError(f"{path}: expected exactly one tensor, found keys {sorted(map(str, obj))[:20]}. "
                             "Pass a file holding a single [1,T,D] negative embedding.")
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise RenegError(f"{path}: holds a {type(obj).__name__}, not a tensor. "
                         "Pass a ReNeg negative embedding (.bin/.pt tensor or .safetensors).")
    check_declared_shape(obj.shape, path)  # before any operation that could materialise a huge (expanded) view
    t = obj.detach()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] != 1:
        raise RenegError(f"{path}: tensor shape {list(obj.shape)} is not a negative embedding; "
                         "expected [1, tokens, dim] (e.g. [1,77,768] for SD1.x).")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise RenegError(f"{path}: tensor shape {list(obj.shape)} is empty; a negative embedding has at least one "
                         "token of at least one value (e.g. [1,77,768]).")
    if not t.is_floating_point():
        raise RenegError(f"{path}: tensor dtype {t.dtype} is not floating point.")
    t = t.to(device="cpu", dtype=torch.float32).contiguous()
    if not torch.isfinite(t).all():
        if saving:
            raise NonFiniteError(f"{path}: not saved — the embedding holds NaN/Inf values (the run diverged); "
                                 "lower the learning rate or guidance.")
        raise NonFiniteError(f"{path}: tensor contains NaN/Inf values; the file is corrupt.")
    peak = float(t.abs().max())
    if peak > MAX_ABS_VALUE and saving:
        raise NonFiniteError(f"{path}: not saved — the embedding's values reach {peak:.3g} (limit "
                             f"{MAX_ABS_VALUE:g}; they would give black images). Lower the learning rate.")
    if peak > MAX_ABS_VALUE:
        raise NonFiniteError(f"{path}: tensor values reach {peak:.3g}, far beyond any real embedding (limit "
                             f"{MAX_ABS_VALUE:g}); they overflow in fp16 and give black images. The file is "
                             "corrupt or not an embedding.")
    return t


def _pickle_imports(data: bytes) -> list[str]:
    """Names a pickle would import (GLOBAL/STACK_GLOBAL/INST), found without running it; ValueError if the bytes
    are not one well-formed pickle."""
    names: list[str] = []
    strings: list[str] = []
    for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg))
        elif op.name == "STACK_GLOBAL":
            names.append(" ".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return names


def _scan_first_pickle(fh, limit: int = MAX_PICKLE_BYTES) -> tuple[list, bool]:
    """Opcodes of the first pickle in ``fh`` (read at most ``limit`` bytes) and whether it is well-formed."""
    ops: list = []
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(fh.read(limit))):
            ops.append((op.name, arg))
    except Exception:
        return ops, False
    return ops, True


def _dangerous(path: Path, names: Sequence[str]) -> UnsafeFileError:
    shown = ", ".join(sorted(set(n.replace(" ", ".") for n in names))[:5])
    return UnsafeFileError(
        f"{path}: refused — this is a pickle that would import and run {shown} when loaded. ReNeg files are plain "
        "tensors, so this file is not one and may be malicious; it was not loaded. Delete it and get the embedding "
        "from its official source (`reneg download`).")


def _broken(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: {what}. The file is damaged or not an embedding: re-download it "
                            "(`reneg download NAME` for the released ones) or check the path.")


def _check_torch_zip(path: Path, limits: bool = True) -> None:
    """Validate a torch zip archive by its directory alone: one data.pkl, storages within the limits, and a
    pickle that imports nothing but torch's tensor rebuilders."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pkls = [i for i in infos if i.filename.endswith("data.pkl")]
            if len(pkls) != 1:
                raise _broken(path, "is a zip archive but not a torch tensor file (no single data.pkl inside)")
            pkl = pkls[0]
            if limits and pkl.file_size > MAX_PICKLE_BYTES:
                raise FileTooLargeError(f"{path}: its pickle part is {pkl.file_size:,} bytes (limit "
                                        f"{MAX_PICKLE_BYTES:,}); a single embedding tensor needs a few hundred.")
            storage = sum(i.file_size for i in infos if "/data/" in i.filename)
            if limits and storage > MAX_ELEMENTS * 8:
                raise FileTooLargeError(f"{path}: declares {storage:,} bytes of tensor data (limit "
                                        f"{MAX_ELEMENTS * 8:,}: {MAX_ELEMENTS:,} values); not an embedding file.")
            if pkl.file_size > 64 * MAX_PICKLE_BYTES:
                raise FileTooLargeError(f"{path}: its pickle part is {pkl.file_size:,} bytes; not a weights file.")
            data = zf.read(pkl)
    except zipfile.BadZipFile as exc:
        raise _broken(path, f"is a damaged zip/torch archive ({clean_cause(exc)})") from exc
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError, zlib.error, OSError) as exc:
        raise _broken(path, f"is a damaged zip/torch archive ({clean_cause(exc)})") from exc
    try:
        names = _pickle_imports(data)
    except Exception as exc:  # pickletools raises ValueError (and others) on malformed bytes
        raise _broken(path, f"has a damaged pickle inside ({clean_cause(exc)})") from exc
    bad = [n for n in names if not n.startswith(_ALLOWED_IMPORT_PREFIXES)]
    if bad:
        raise _dangerous(path, bad)


def sniff_torch_file(path: Path) -> str:
    """``"zip"``, ``"legacy"`` (or ``"safetensors"``) for a torch file judged by its bytes without loading it; a
    :class:`CorruptFileError` for HTML pages, Git-LFS pointers, text and random bytes, an
    :class:`UnsafeFileError` for a pickle that would import code."""
    with open(path, "rb") as fh:
        head = fh.read(512)
        if head.startswith(b"PK\x03\x04"):
            return "zip"
        text = head.lstrip().lower()
        if text.startswith(b"version https://git-lfs"):
            raise CorruptFileError(f"{path}: is a Git-LFS pointer (a small text file standing in for the real one), "
                                   "not the embedding: the download fetched the pointer. Re-download the real file "
                                   "(`git lfs pull`, or `reneg download NAME` for the released embeddings).")
        if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--")):
            raise CorruptFileError(f"{path}: is a web page (HTML), not an embedding: a browser or a 'blob' link "
                                   "saved the page around the file. Download the raw file again "
                                   "(`reneg download NAME` for the released embeddings).")
        if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < MAX_PICKLE_BYTES * 100:
            return "safetensors"  # a .safetensors file with a pickle extension
        fh.seek(0)
        ops, well_formed = _scan_first_pickle(fh)
    names, strings = [], []
    for op, arg in ops:
        if op in ("GLOBAL", "INST"):
            names.append(str(arg))
        elif op == "STACK_GLOBAL":
            names.append(" ".join(strings[-2:]) or "a global")
        elif isinstance(arg, str):
            strings.append(arg)
    if well_formed and ops[0][0] == "PROTO" and any(op == "LONG1" and arg == _TORCH_LEGACY_MAGIC for op, arg in ops):
        return "legacy"
    if names or (well_formed and any(op in ("REDUCE", "OBJ", "NEWOBJ", "NEWOBJ_EX") for op, _ in ops)):
        raise _dangerous(path, names or ["a Python object constructor"])
    if well_formed:
        raise _broken(path, "is a Python pickle but not a torch tensor file")
    kind = "text" if _looks_like_text(head) else "unrecognised bytes"
    raise _broken(path, f"is not a torch or safetensors file ({kind}, starting {_preview(head)})")


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_file(p: Path) -> None:
    """The path names a regular file of a plausible size (before anything is opened for loading)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise RenegError(f"{p} is a broken symlink (its target {os.readlink(p)} does not exist).") from None
        raise RenegError(f"Negative embedding not found: {p}. Check the path (or run `reneg download`).") from None
    except OSError as exc:
        raise RenegError(f"{p}: cannot be read ({exc.strerror or exc}).") from exc
    if stat.S_ISDIR(st.st_mode):
        raise RenegError(f"{p} is a folder, not a negative embedding file; name a .safetensors/.bin/.pt file in it.")
    if not stat.S_ISREG(st.st_mode):
        raise RenegError(f"{p} is not a regular file (a FIFO, socket or device); pass an embedding file.")
    if st.st_size == 0:
        raise _broken(p, "is empty (0 bytes), e.g. an interrupted download")
    if st.st_size > MAX_FILE_BYTES:
        raise FileTooLargeError(f"{p}: the file is {st.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for "
                                "negative embeddings (the largest real ones are ~2 MB); it is not an embedding.")
    if not os.access(p, os.R_OK):
        raise RenegError(f"{p}: permission denied; make the file readable.")


def _load_safetensors(p: Path) -> NegativeEmbedding:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            keys = list(fh.keys())
            total = 0
            for k in keys:  # shapes come from the header: nothing is read yet
                shape = fh.get_slice(k).get_shape()
                check_declared_shape(shape, p, f"tensor {k!r}")
                total += math.prod(shape) if shape else 1
            if total > MAX_ELEMENTS:
                raise FileTooLargeError(f"{p}: its {len(keys)} tensors hold {total:,} values together, over the "
                                        f"limit of {MAX_ELEMENTS:,}; this is not an embedding file.")
            if TENSOR_KEY in keys:
                keys = [TENSOR_KEY] + [k for k in keys if k == POOLED_KEY]
            tensors = {k: fh.get_tensor(k) for k in keys}
    except RenegError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise _broken(p, f"is not a readable .safetensors file ({clean_cause(exc)})") from exc
    if not keys:
        raise _broken(p, "is a .safetensors file without tensors")
    meta = {str(k): str(v) for k, v in metadata.items()}
    if POOLED_KEY in tensors:  # an SDXL pair: context + pooled, packed for the engine
        return NegativeEmbedding(_as_sdxl_pair(tensors[TENSOR_KEY], tensors[POOLED_KEY], p), meta, str(p))
    if meta.get("format") == FORMAT_NAME and meta.get("family") == "sdxl":
        raise _broken(p, f"says family sdxl but holds no pooled embedding ({POOLED_KEY!r})")
    obj = tensors[TENSOR_KEY] if TENSOR_KEY in tensors else tensors
    return NegativeEmbedding(_as_embedding_tensor(obj, p), meta, str(p))


def _as_sdxl_pair(context: Any, pooled: Any, path: Path, saving: bool = False) -> torch.Tensor:
    """Validate an SDXL context ``[1,77,2048]`` + pooled ``[1,1280]`` and return them packed ``[1,78,2048]``."""
    from .sdxl_backend import CONTEXT_DIM, CONTEXT_TOKENS, POOLED_DIM, pack

    ctx = _as_embedding_tensor(context, path, saving)
    if not isinstance(pooled, torch.Tensor):
        raise RenegError(f"{path}: the pooled part is a {type(pooled).__name__}, not a tensor.")
    pool = pooled.detach()
    pool = pool.unsqueeze(0) if pool.dim() == 1 else pool if pool.dim() == 2 and pool.shape[0] == 1 else None
    if tuple(ctx.shape) != (1, CONTEXT_TOKENS, CONTEXT_DIM) or pool is None or pool.shape[1] != POOLED_DIM:
        raise RenegError(f"{path}: an SDXL negative is a [1,{CONTEXT_TOKENS},{CONTEXT_DIM}] context with a "
                         f"[1,{POOLED_DIM}] pooled embedding; this file holds {list(ctx.shape)} and "
                         f"{list(pooled.shape)}.")
    pool = _as_embedding_tensor(pool.unsqueeze(0), path, saving)[0]
    return pack(ctx, pool)


def check_torch_file(path: Path) -> str:
    """:func:`sniff_torch_file` plus, for zip archives, the import check of their pickle (no size limits):
    for large weight files (reward checkpoints) that must not be embeddings-sized."""
    kind = sniff_torch_file(path)
    if kind == "zip":
        _check_torch_zip(path, limits=False)
    return kind


def _load_torch(p: Path) -> NegativeEmbedding:
    kind = sniff_torch_file(p)
    if kind == "safetensors":
        return _load_safetensors(p)
    if kind == "zip":
        _check_torch_zip(p)
    try:
        obj = torch.serialization.load(str(p), map_location="cpu", weights_only=True)  # not torch.load: webuis patch it
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"{p}: refused — not a plain tensor file ({clean_cause(exc)}); it was not loaded. "
                              "ReNeg files are plain tensors: get the file from its official source or convert a "
                              "trusted copy to .safetensors.") from exc
    except MemoryError as exc:
        raise FileTooLargeError(f"{p}: declares more tensor data than fits in memory; not an embedding.") from exc
    except Exception as exc:  # truncated archives, bad records, wrong storage sizes, ...
        raise _broken(p, f"is not a readable torch file ({clean_cause(exc)})") from exc
    return NegativeEmbedding(_as_embedding_tensor(obj, p), {}, str(p))


def load_embedding(path: str | os.PathLike) -> NegativeEmbedding:
    """Load a negative embedding from a released pickle, a single-tensor or a ReNeg ``.safetensors``.

    Sizes and shapes are checked before data is read (:data:`MAX_FILE_BYTES`, :data:`MAX_ELEMENTS`,
    :data:`MAX_TOKENS`, :data:`MAX_DIM`); pickles are only read by torch's weights-only loader, after their
    imports were checked without running them. Every failure is one :class:`RenegError` naming the problem.
    """
    p = Path(path).expanduser()
    _check_file(p)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(p)
    if suffix in PICKLE_SUFFIXES:
        return _load_torch(p)
    raise RenegError(f"{p}: unsupported extension '{p.suffix}'. Use .safetensors, .bin, .pt or .pth.")


def check_compatible(tensor: torch.Tensor, context_dim: int, where: str = "model") -> None:
    """Raise :class:`IncompatibleEmbeddingError` if the embedding width does not match the model.

    The family is judged by the text-encoder widths alone, so a negative learned on one checkpoint applies to every
    checkpoint with the same text encoders (e.g. all SDXL fine-tunes); an SDXL model also needs the pooled part.
    """
    from .sdxl_backend import CONTEXT_DIM as SDXL_DIM, check_packed

    dim = int(tensor.shape[-1])
    if dim != context_dim:
        emb_family = family_of(dim, int(tensor.shape[-2]) if tensor.dim() >= 2 else None)[1]
        model_family = family_of(context_dim)[1]
        hint = "."
        if dim == 4096:
            hint = " (PixArt-α embeddings need a PixArt-α model, e.g. PixArt-alpha/PixArt-XL-2-512x512)."
        elif dim == SDXL_DIM:
            hint = " (SDXL embeddings need an SDXL model or fine-tune, e.g. stabilityai/stable-diffusion-xl-base-1.0)."
        elif context_dim == SDXL_DIM:
            hint = (" (this is an SDXL model: use an SDXL negative, e.g. one learned with "
                    "`reneg train --model <SDXL model>`; SD1.x/SD2.x files do not apply to it).")
        raise IncompatibleEmbeddingError(
            f"Negative embedding is {dim}-wide ({emb_family}) but the {where} expects {context_dim}-wide "
            f"conditioning ({model_family}). Use an embedding trained for this model family" + hint)
    if context_dim == SDXL_DIM:
        check_packed(tensor, where)


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
    sdxl = is_sdxl_pair(tensor)
    if sdxl:
        tokens -= 1  # the packed pooled row is not a token
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
    if sdxl:
        from .sdxl_backend import FAMILY, POOLED_DIM

        meta["family"], meta["pooled_dim"] = FAMILY, str(POOLED_DIM)
    if meta["family"] == "pixart-alpha":  # the T5 mask the tensor carries (see core/pixart_backend.py)
        from .pixart_backend import mask_metadata

        meta["attention_mask"] = mask_metadata(tensor)
    return meta


def save_embedding(path: str | os.PathLike, embedding: NegativeEmbedding | torch.Tensor, *, overwrite: bool = False,
                   **metadata: Any) -> Path:
    """Save in our ``.safetensors`` format, atomically. Extra keyword metadata overrides stored metadata.

    An existing file is only replaced with ``overwrite=True`` (else :class:`~.errors.OutputError`, atomically:
    two concurrent saves never both succeed); NaN/Inf or overflowing values are refused.
    """
    from safetensors.torch import save_file

    p = Path(path).expanduser()
    if p.suffix.lower() != ".safetensors":
        raise RenegError(f"{p}: ReNeg embeddings are saved as .safetensors; change the extension.")
    if isinstance(embedding, NegativeEmbedding):
        tensor, stored = embedding.tensor, dict(embedding.metadata)
    else:
        tensor, stored = embedding, {}
    tensor = _as_embedding_tensor(tensor, p, saving=True)
    keep = {k: v for k, v in stored.items() if k not in ("format", "format_version", "context_dim", "tokens",
                                                          "family", "created_at", "pooled_dim")}
    meta = build_metadata(tensor, **{**keep, **metadata})
    tensors = {TENSOR_KEY: tensor}
    if is_sdxl_pair(tensor):  # the pair as two tensors: context [1,77,2048] + pooled [1,1280]
        from .sdxl_backend import unpack

        context, pooled = unpack(tensor)
        tensors = {TENSOR_KEY: context.contiguous(), POOLED_KEY: pooled.contiguous()}
    return atomic_write(p, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """The facts ``reneg info`` prints: shape, dtype, context dim, family guess, sha256, metadata."""
    p = Path(path).expanduser()
    emb = load_embedding(p)
    fam, desc = family_of(emb.context_dim, emb.tokens)
    t = emb.context
    facts = {
        "path": str(p), "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
        "context_dim": emb.context_dim, "tokens": emb.tokens, "family": fam, "text_encoder": desc,
        "sha256": sha256_file(p), "norm": round(float(t.norm()), 6), "mean": round(float(t.mean()), 6),
        "std": round(float(t.std()) if t.numel() > 1 else 0.0, 6), "metadata": emb.metadata,
    }
    if emb.pooled is not None:  # SDXL: the pooled part's facts beside the context's
        facts.update(pooled_shape=list(emb.pooled.shape), pooled_norm=round(float(emb.pooled.norm()), 6))
    return facts
