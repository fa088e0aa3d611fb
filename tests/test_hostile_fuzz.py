"""Bounded-time mutation fuzzer over the file loaders (issue 14).

Seeds: the released embeddings (when ``../shared/fixtures/released`` exists), our own ``.safetensors``, a
legacy-format torch file and a ``.state`` checkpoint. Each input is a seeded mutation (bit flips, byte runs,
truncation, insertion, splicing, zip-header and safetensors-header edits). For every input the loader must
either return a valid result or raise one :class:`RenegError` — never another exception, never run code,
never use unbounded memory. Torch-format inputs also go through the reward-weights check the hosts run when a
graph is queued / a reward is listed (:func:`~reneg.core.rewards.weights.check_weights_file`). ``RENEG_FUZZ_SECONDS`` sets the budget (default 30); the number of inputs is printed.
"""
from __future__ import annotations

import io
import os
import random
import resource
import struct
import time
from pathlib import Path

import torch

import hostile_cases as H
from reneg.core.checkpoint import load_state, save_state
from reneg.core.embedding_io import MAX_ELEMENTS, load_embedding, save_embedding
from reneg.core.errors import RenegError
from reneg.core.rewards.weights import check_weights_file

from conftest import RELEASED_DIR

BUDGET_S = float(os.environ.get("RENEG_FUZZ_SECONDS", "30"))
SEED = int(os.environ.get("RENEG_FUZZ_SEED", "1405"))
RSS_GROWTH_LIMIT_MB = 1024


def _seeds(d: Path) -> list[tuple[str, bytes]]:
    seeds = []
    for f in sorted(RELEASED_DIR.glob("*.bin")) if RELEASED_DIR.is_dir() else []:
        seeds.append((".bin", f.read_bytes()))
    ours = save_embedding(d / "ours.safetensors", torch.randn(1, 77, 768), base_model="tiny", reward="synthetic")
    seeds.append((".safetensors", ours.read_bytes()))
    seeds.append((".pt", H.legacy_torch_format(d).read_bytes()))
    small = io.BytesIO()
    torch.save({"emb": torch.randn(1, 8, 16)}, small)
    seeds.append((".pt", small.getvalue()))
    state = save_state(d / "x.safetensors.state", {"step": 1, "skipped": 0, "log": [], "negative": torch.zeros(1, 4, 8),
                                                   "optimizer": {}, "lr_scheduler": {},
                                                   "generator": torch.Generator().get_state(), "recipe": "{}",
                                                   "prompts_sha256": "0" * 64})
    seeds.append((".state", state.read_bytes()))
    return seeds


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(9)
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
        pos = rng.randrange(len(b))
        if op == 0:  # bit flip
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:  # random byte run
            n = rng.randrange(1, 32)
            b[pos:pos + n] = rng.randbytes(n)
        elif op == 2:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 3:  # insert
            b[pos:pos] = rng.randbytes(rng.randrange(1, 64))
        elif op == 4:  # duplicate a chunk
            n = rng.randrange(1, 256)
            b[pos:pos] = b[pos:pos + n]
        elif op == 5:  # interesting integers (sizes, lengths, counts)
            value = rng.choice((0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2 ** 40, 2 ** 63 - 1))
            width = rng.choice((1, 2, 4, 8))
            b[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif op == 6 and data[:8] and b"{" in data[:16]:  # safetensors header length
            b[0:8] = struct.pack("<Q", rng.choice((0, 1, len(b), len(b) * 2, 2 ** 40, rng.randrange(1, 512))))
        elif op == 7 and b[:2] == b"PK":  # zip local header sizes / compression method
            hdr = bytes(b).find(b"PK\x03\x04", rng.randrange(len(b)))
            if hdr >= 0 and hdr + 30 <= len(b):
                field = rng.choice((8, 18, 22, 26))
                b[hdr + field:hdr + field + 2] = rng.randbytes(2)
        elif op == 8:  # splice a value that makes a tensor huge / empty
            b[pos:pos + 2] = rng.choice((b"\x00\x00", b"\xff\xff", b"M\x00", b"J\xff\xff\xff\x7f"))
    return bytes(b)


def test_fuzzed_files_load_or_fail_with_one_clear_error(tmp_path, capsys):
    rng = random.Random(SEED)
    seeds = _seeds(tmp_path)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = {"inputs": 0, "loaded": 0, "refused": 0}
    ran_code = H.marker(tmp_path)
    deadline = time.monotonic() + BUDGET_S
    while time.monotonic() < deadline:
        suffix, data = rng.choice(seeds)
        blob = _mutate(data, rng)
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(blob)
        counts["inputs"] += 1
        try:
            if suffix in (".bin", ".pt"):
                try:
                    check_weights_file(path)
                except RenegError as exc:
                    assert str(exc) and "Traceback" not in str(exc), str(exc)
            if suffix == ".state":
                load_state(path)
            else:
                emb = load_embedding(path)
                t = emb.tensor
                assert t.dim() == 3 and t.shape[0] == 1 and 0 < t.numel() <= MAX_ELEMENTS
                assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
            counts["loaded"] += 1
        except RenegError as exc:
            msg = str(exc)
            assert msg and "Traceback" not in msg and "weights_only=False" not in msg and "\x1b" not in msg, msg
            counts["refused"] += 1
        except Exception as exc:  # pragma: no cover - the failure this test exists to find
            keep = tmp_path.parent / f"fuzz-crash{suffix}"
            keep.write_bytes(blob)
            raise AssertionError(f"input #{counts['inputs']} (saved to {keep}) raised {type(exc).__name__}: "
                                 f"{exc}") from exc
        assert not ran_code.exists(), "a fuzzed pickle ran code"
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) // 1024
    with capsys.disabled():
        print(f"\n[fuzz] {counts['inputs']} inputs in {BUDGET_S:.0f}s (seed {SEED}): {counts['loaded']} loaded, "
              f"{counts['refused']} refused with a RenegError; peak RSS growth {growth} MB")
    assert counts["inputs"] >= 100
    assert growth < RSS_GROWTH_LIMIT_MB
