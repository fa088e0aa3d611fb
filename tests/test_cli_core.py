"""CLI: info, convert, generate, download (offline-safe) on the tiny model and released files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reneg.core import released
from reneg.core.cli import main
from reneg.core.embedding_io import load_embedding, sha256_file


def test_info_prints_json(released_dir, capsys):
    assert main(["info", str(released_dir / "sd2.1_reneg_emb.bin")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [1, 77, 1024] and info["family"] == "sd2" and info["context_dim"] == 1024
    assert info["sha256"] == "ed766ee46458683bebe53b4a66abb8b1d5541d38dbcf5fb4d4980264c9d25f11"
    assert info["dtype"] == "float32"


def test_convert_then_info_roundtrip(released_dir, tmp_path, capsys):
    src = released_dir / "sd1.4_reneg_emb.bin"
    dst = tmp_path / "sd14.safetensors"
    assert main(["convert", str(src), str(dst), "--base-model", "CompVis/stable-diffusion-v1-4"]) == 0
    assert torch.equal(load_embedding(dst).tensor, torch.load(src, weights_only=True))
    assert main(["convert", str(src), str(dst)]) == 2  # refuses to overwrite without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    capsys.readouterr()
    main(["info", str(dst)])
    meta = json.loads(capsys.readouterr().out)["metadata"]
    assert meta["base_model"] == "CompVis/stable-diffusion-v1-4" and meta["source_sha256"] == sha256_file(src)


def test_generate_tiny_equals_the_diffusers_pipeline_pixel_for_pixel(released_dir, tiny_backend, tmp_path):
    neg_file = released_dir / "sd1.5_reneg_emb.bin"
    out = tmp_path / "img.png"
    args = ["generate", "--model", "tiny", "--prompt", "a lighthouse at dusk", "--negative", str(neg_file),
            "--seed", "5", "--steps", "8", "--width", "64", "--height", "48", "--out", str(out)]
    assert main(args) == 0
    ours = np.asarray(Image.open(out))
    assert ours.shape == (48, 64, 3)
    pipe = tiny_backend.pipeline()
    pipe.set_progress_bar_config(disable=True)
    neg = torch.load(neg_file, weights_only=True)
    ref = pipe(prompt="a lighthouse at dusk", negative_prompt_embeds=neg, num_inference_steps=8, guidance_scale=7.5,
               width=64, height=48, generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.array_equal(ours, np.asarray(ref))


def test_generate_batch_and_negative_prompt(tmp_path):
    out = tmp_path / "b.png"
    assert main(["generate", "--model", "tiny-v", "--prompt", "x", "--negative-prompt", "blurry", "--steps", "3",
                 "--width", "64", "--height", "64", "--batch-size", "2", "--out", str(out)]) == 0
    assert (tmp_path / "b-0.png").is_file() and (tmp_path / "b-1.png").is_file()


def test_generate_rejects_wrong_family(released_dir, tmp_path, capsys):
    rc = main(["generate", "--model", "tiny", "--prompt", "x", "--negative", str(released_dir / "sd2.1_reneg_emb.bin"),
               "--steps", "2", "--width", "64", "--height", "64", "--out", str(tmp_path / "x.png")])
    assert rc == 2
    assert "1024" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_download_verifies_sha256_before_rename(released_dir, tmp_path, monkeypatch):
    entry = released.get_released("sd1.5")
    local = dict(entry.__dict__, url=(released_dir / entry.filename).as_uri())
    monkeypatch.setattr(released, "get_released", lambda name: released.ReleasedEmbedding(**local))
    assert main(["download", "sd1.5", "--dir", str(tmp_path / "ok")]) == 0
    assert sha256_file(tmp_path / "ok" / entry.filename) == entry.sha256
    bad = dict(local, sha256="0" * 64)
    monkeypatch.setattr(released, "get_released", lambda name: released.ReleasedEmbedding(**bad))
    with pytest.raises(Exception, match="sha256"):
        released.download_released("sd1.5", tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []


def test_download_offline_gives_clear_error_and_no_file(tmp_path, monkeypatch, capsys):
    entry = released.get_released("sd2.1")
    dead = dict(entry.__dict__, url="http://127.0.0.1:9/nothing.bin")
    monkeypatch.setattr(released, "get_released", lambda name: released.ReleasedEmbedding(**dead))
    assert main(["download", "sd2.1", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and entry.sha256 in err
    assert list(tmp_path.iterdir()) == []
    assert main(["download"]) == 2


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "reneg", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("info", "convert", "generate", "download", "train", "refine", "evaluate"):
        assert cmd in res.stdout


def test_generate_from_a_local_diffusers_folder_equals_tiny(tmp_path, monkeypatch):
    from reneg.core.tiny_models import save_tiny_pipeline

    folder = save_tiny_pipeline("tiny", tmp_path / "sd-folder")
    common = ["--prompt", "a red kite", "--seed", "3", "--steps", "4", "--width", "64", "--height", "64"]
    assert main(["generate", "--model", str(folder), *common, "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", "--model", "tiny", *common, "--out", str(tmp_path / "b.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


@pytest.mark.parametrize("kind", ["folder", "bad-file", "hub-id", "nonsense"])
def test_unloadable_models_give_one_clear_error(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if kind == "folder":
        model = tmp_path
    elif kind == "bad-file":
        model = tmp_path / "broken.safetensors"
        model.write_bytes(b"not a checkpoint")
    elif kind == "hub-id":
        model = "someone/not-cached-model"
    else:
        model = "./no/such/path"
    rc = main(["generate", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("reneg generate: error:") and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_image_size_not_a_multiple_of_8_is_one_clear_error(tmp_path, capsys):
    rc = main(["generate", "--model", "tiny", "--prompt", "x", "--steps", "2", "--width", "60", "--height", "64",
               "--out", str(tmp_path / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "multiples of 8 (got 64x60)" in err and "64x56" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_every_subcommand_option_has_help_and_a_description():
    from reneg.core.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert parser.description, f"reneg {name} --help has no description"
        undocumented = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
                        if not a.help and a.dest != "help"]
        assert not undocumented, f"reneg {name}: options without help: {undocumented}"
