"""Negative-embedding files: released pickles, safetensors, safety, validation, atomic save."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from reneg.core import embedding_io as eio
from reneg.core.errors import IncompatibleEmbeddingError, RenegError, UnsafeFileError
from reneg.core.released import released_embeddings

from conftest import RELEASED


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_files_load_with_right_shape_and_hash(released_dir, name):
    entry = released_embeddings()[name]
    path = released_dir / entry.filename
    emb = eio.load_embedding(path)
    assert tuple(emb.tensor.shape) == RELEASED[name] == entry.shape
    assert emb.tensor.dtype == torch.float32
    assert emb.family == entry.family
    assert eio.sha256_file(path) == entry.sha256


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_convert_round_trip_is_bit_exact(released_dir, tmp_path, name):
    src = released_dir / f"{name}_reneg_emb.bin"
    raw = torch.load(src, weights_only=True)
    out = eio.save_embedding(tmp_path / f"{name}.safetensors", eio.load_embedding(src), base_model=name)
    back = eio.load_embedding(out)
    assert torch.equal(back.tensor, raw)
    assert back.metadata["format"] == eio.FORMAT_NAME
    assert back.metadata["base_model"] == name
    assert back.metadata["context_dim"] == str(raw.shape[-1])
    assert back.metadata["tokens"] == str(raw.shape[-2])


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    evil = tmp_path / "evil_reneg_emb.bin"
    with open(evil, "wb") as fh:
        pickle.dump({"emb": payload}, fh)
    with pytest.raises(UnsafeFileError, match="refused"):
        eio.load_embedding(evil)
    assert not marker.exists()


def test_single_tensor_safetensors_from_a_hub_is_accepted(tmp_path):
    from safetensors.torch import save_file

    t = torch.randn(77, 768)
    save_file({"emb_params": t}, str(tmp_path / "hub.safetensors"))
    emb = eio.load_embedding(tmp_path / "hub.safetensors")
    assert emb.tensor.shape == (1, 77, 768) and torch.equal(emb.tensor[0], t)


@pytest.mark.parametrize("obj, match", [
    ({"a": torch.zeros(1, 77, 768), "b": torch.zeros(1)}, "exactly one tensor"),
    (torch.zeros(77), "not a negative embedding"),
    (torch.zeros(1, 77, 768, dtype=torch.int64), "not floating point"),
    (torch.full((1, 77, 768), float("nan")), "NaN"),
])
def test_bad_tensor_files_give_one_clear_error(tmp_path, obj, match):
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(RenegError, match=match):
        eio.load_embedding(tmp_path / "bad.pt")


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(RenegError, match="not found"):
        eio.load_embedding(tmp_path / "nope.bin")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(RenegError, match="unsupported extension"):
        eio.load_embedding(tmp_path / "x.txt")


def test_dim_mismatch_names_both_families():
    with pytest.raises(IncompatibleEmbeddingError) as err:
        eio.check_compatible(torch.zeros(1, 77, 1024), 768)
    msg = str(err.value)
    assert "1024" in msg and "768" in msg and "SD2" in msg and "SD1" in msg
    eio.check_compatible(torch.zeros(1, 77, 768), 768)


def test_batch_one_broadcasts_and_gradient_flows_to_the_single_row():
    neg = torch.randn(1, 77, 8, requires_grad=True)
    wide = eio.broadcast_negative(neg, 5)
    assert wide.shape == (5, 77, 8)
    wide.sum().backward()
    assert torch.equal(neg.grad, torch.full_like(neg, 5.0))
    with pytest.raises(RenegError):
        eio.broadcast_negative(torch.zeros(2, 77, 8), 3)


def test_interrupted_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import safetensors.torch as st

    target = tmp_path / "neg.safetensors"
    eio.save_embedding(target, torch.ones(1, 77, 768))
    before = target.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        eio.save_embedding(target, torch.zeros(1, 77, 768))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.safetensors"]


def test_save_refuses_non_safetensors_extension(tmp_path):
    with pytest.raises(RenegError, match=".safetensors"):
        eio.save_embedding(tmp_path / "x.bin", torch.zeros(1, 77, 768))
    assert list(tmp_path.iterdir()) == []


def test_saved_files_get_normal_permissions(tmp_path):
    out = eio.save_embedding(tmp_path / "perm.safetensors", torch.zeros(1, 77, 768))
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(RenegError, match="is a folder, not a negative embedding file"):
        eio.load_embedding(tmp_path)
