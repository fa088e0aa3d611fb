"""Builders of hostile and careless inputs for the hostile-input suite (tests/test_hostile_*.py).

Each builder writes one file (or folder/FIFO/symlink) into ``d`` and returns its path.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch


class Payload:
    """A pickle that would run ``touch marker`` if anything ever executed it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def marker(d: Path) -> Path:
    return d / "PWNED"


def _w(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def random_bytes(d):
    return _w(d / "random.bin", bytes((i * 73 + 19) % 256 for i in range(4096)))


def passwd_text(d):
    return _w(d / "passwd.bin", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")


def hoot(d):
    return _w(d / "hoot.bin", b"hoot")


def short_binstring(d):
    return _w(d / "u.bin", b"U\x02\x84\xb0")


def symlink_to_text(d):
    (d / "notes.txt").write_text("just some notes\n")
    (d / "link.bin").symlink_to(d / "notes.txt")
    return d / "link.bin"


def html_page(d):
    return _w(d / "page.bin", b"<!DOCTYPE html>\n<html><head><title>sd1.5_reneg_emb.bin - GitHub</title></head>"
                              b"<body>\x1b[31mred\x1b[0m</body></html>\n")


def lfs_pointer(d):
    return _w(d / "lfs.bin", b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                             + b"ab" * 32 + b"\nsize 237739\n")


def empty_bin(d):
    return _w(d / "empty.bin", b"")


def empty_safetensors(d):
    return _w(d / "empty.safetensors", b"")


def truncated_zip(d):
    """The first half of a torch zip (an interrupted download of a released-style file)."""
    buf = io.BytesIO()
    torch.save(torch.randn(1, 77, 768), buf)
    data = buf.getvalue()
    return _w(d / "truncated.bin", data[: len(data) // 2])


def zip_without_pickle(d):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.md", "a zip of a repository, not a tensor")
    return _w(d / "repo.bin", buf.getvalue())


def evil_plain_pickle(d):
    return _w(d / "evil.bin", pickle.dumps({"emb": Payload(marker(d))}))


def evil_protocol0_pickle(d):
    return _w(d / "evil0.bin", pickle.dumps(Payload(marker(d)), protocol=0))


def evil_torch_zip(d):
    torch.save({"emb": Payload(marker(d)), "t": torch.zeros(1, 77, 768)}, d / "evil_zip.pt")
    return d / "evil_zip.pt"


def plain_pickle_of_ints(d):
    return _w(d / "ints.bin", pickle.dumps({"a": 1, "b": [1, 2, 3]}))


def fifo(d):
    os.mkfifo(d / "fifo.bin")
    return d / "fifo.bin"


def folder(d):
    (d / "folder.bin").mkdir()
    return d / "folder.bin"


def missing(d):
    return d / "missing.bin"


def broken_symlink(d):
    (d / "dangling.bin").symlink_to(d / "nowhere.bin")
    return d / "dangling.bin"


def _patched_pickle(shape, numel: int) -> bytes:
    stride = []
    acc = 1
    for s in reversed(shape):
        stride.insert(0, acc)
        acc *= s

    class _Storage:
        pass

    # the pickle torch writes: _rebuild_tensor_v2(persistent storage, offset, size, stride, requires_grad, hooks)
    buf = io.BytesIO()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is _Storage:
                return ("storage", torch.FloatStorage, "0", "cpu", numel)
            return None

    import collections

    import torch._utils as tu

    class _Rebuild:
        def __reduce__(self):
            return (tu._rebuild_tensor_v2, (_Storage, 0, tuple(shape), tuple(stride), False, collections.OrderedDict()))

    P(buf, protocol=2).dump(_Rebuild())
    return buf.getvalue()


def compressed_bomb(d):
    """~2 MB on disk, declares a [1,700000,768] float32 tensor (2.15 GB) deflate-compressed."""
    path = d / "bomb.pt"
    path.write_bytes(_compressed_zip((1, 700_000, 768)))
    return path


def _compressed_zip(shape) -> bytes:
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * 4
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", _patched_pickle(shape, numel))
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 22)
            left = nbytes
            while left > 0:
                fh.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    return out.getvalue()


def sparse_safetensors(d):
    """A sparse .safetensors whose header declares [1,3.5M,768] (10.8 GB apparent size, ~nothing on disk)."""
    path = d / "sparse.safetensors"
    shape = [1, 3_500_000, 768]
    nbytes = shape[0] * shape[1] * shape[2] * 4
    header = json.dumps({"reneg_negative": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + nbytes)
    return path


def lying_safetensors_header(d):
    """Small file whose header declares [1,3.5M,768]: the data is missing."""
    shape = [1, 3_500_000, 768]
    header = json.dumps({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, shape[1] * shape[2] * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    return _w(d / "liar.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 64)


def garbage_safetensors(d):
    return _w(d / "garbage.safetensors", struct.pack("<Q", 40) + b"{not json at all" + b"\xff" * 40)


def _st(d, name, tensor):
    from safetensors.torch import save_file

    save_file({"reneg_negative": tensor}, str(d / name))
    return d / name


def too_many_tokens(d):
    return _st(d, "tokens600.safetensors", torch.zeros(1, 600, 768))


def too_wide(d):
    return _st(d, "wide.safetensors", torch.zeros(1, 2, 10_000))


def empty_tensor(d):
    return _st(d, "empty_tensor.safetensors", torch.zeros(1, 0, 768))


def nan_tensor(d):
    t = torch.zeros(1, 77, 768)
    t[0, 3, 5] = float("nan")
    return _st(d, "nan.safetensors", t)


def huge_values(d):
    return _st(d, "huge.safetensors", torch.full((1, 77, 768), 1e30))


def fp16_overflow(d):
    return _st(d, "fp16_overflow.safetensors", torch.full((1, 77, 768), 70000.0))


def int_tensor(d):
    return _st(d, "int.safetensors", torch.zeros(1, 77, 768, dtype=torch.int32))


def four_d(d):
    return _st(d, "4d.safetensors", torch.zeros(1, 1, 77, 768))


def expanded_view(d):
    """torch.save of a 1-element storage viewed as [1,700000,768] (stride 0): tiny file, huge logical tensor."""
    torch.save(torch.zeros(1).expand(1, 700_000, 768), d / "expanded.pt")
    return d / "expanded.pt"


def wrong_extension(d):
    return _w(d / "emb.txt", b"0.1 0.2")


def safetensors_named_bin(d):
    _st(d, "_tmp.safetensors", torch.randn(1, 77, 768))
    os.replace(d / "_tmp.safetensors", d / "renamed.bin")
    return d / "renamed.bin"


def legacy_torch_format(d):
    torch.save(torch.randn(1, 77, 768), d / "legacy.pt", _use_new_zipfile_serialization=False)
    return d / "legacy.pt"


def single_value(d):
    return _st(d, "one.safetensors", torch.ones(1, 1, 1))
