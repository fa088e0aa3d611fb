"""`reneg reproduce` end to end on the tiny model: tables, grids, image-level resume; benchmark protocol gap."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from reneg.core.cli import main
from reneg.core.embedding_io import save_embedding
from reneg.core.evaluate import HANDCRAFTED_PRESETS, EvalConfig, evaluate_negatives, parse_negative_specs
from reneg.core.prompts import PromptItem
from reneg.core.reproduce import PER_SAMPLE, _read_done
from reneg.core.rewards import build_reward
from reneg.core.rewards.benchmark_protocol import BenchmarkProtocol, hps_benchmark_tensor, jpeg_round_trip

ARGS = ["--model", "tiny", "--reward", "tiny", "--metrics", "tiny", "--prompts", "builtin:mini", "--limit", "1",
        "--ddim-steps", "3", "--height", "64", "--width", "64", "--refine-steps", "2", "--batch-size", "2",
        "--refine-lr", "0.05"]


@pytest.fixture()
def global_file(tmp_path, backend):
    path = tmp_path / "global.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_embedding(path, backend.encode_prompts([""]).float() + 0.05 * torch.randn(1, 77, 768, generator=gen))
    return path


def test_reproduce_tiny_end_to_end_and_resume(tmp_path, global_file, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", *ARGS, "--global", str(global_file), "--out", str(out)]) == 0
    table = (out / "table2.md").read_text()
    for title in ("Null-text", "Handcrafted negative prompt", "ReNeg (global)", "ReNeg (per-sample)"):
        assert title in table
    assert "not sourced" in table and "## tiny@benchmark" in table and "mini: average" in table
    assert "ReNeg (per-sample) vs Null-text" in (out / "table3.md").read_text()
    rows = list(csv.DictReader(open(out / "mini" / "scores.csv")))
    assert len(rows) == 4 * 4  # 4 negatives x (4 styles x limit 1)
    assert len(list((out / "mini" / "images" / PER_SAMPLE).glob("*.png"))) == 4
    assert len(list((out / "mini" / "refined").glob("*.safetensors"))) == 4
    # per-sample refinement never loses to its start (the global embedding) on the refinement reward
    by = {(r["negative"], r["prompt_id"]): float(r["tiny"]) for r in rows}
    for i in range(4):
        # (>= its start image's score exactly; that start image equals the global row's render up to batched
        # kernel rounding, hence the 1e-4)
        assert by[(PER_SAMPLE, str(i))] >= by[("reneg-global", str(i))] - 1e-4
    results = json.loads((out / "mini" / "results.json").read_text())
    assert results["complete"] and "tiny" in results["protocol_gaps"]

    # kill simulation: drop the last logged rows and one image's row; the rerun redoes exactly those
    log = out / "mini" / "scores.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])  # a torn last line too
    before = {k: v["tiny"] for k, v in _read_done(log).items()}
    assert len(before) == 13
    capsys.readouterr()
    assert main(["reproduce", *ARGS, "--global", str(global_file), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "resumed: 13/16" in err
    after = _read_done(log)
    assert len(after) == 16 and all(after[k]["tiny"] == v for k, v in before.items())
    again = {(r["negative"], r["prompt_id"]): float(r["tiny"]) for r in csv.DictReader(open(out / "mini" / "scores.csv"))}
    assert again == pytest.approx(by, rel=1e-5)

    # other settings into the same folder: refused with the difference named
    assert main(["reproduce", *ARGS, "--global", str(global_file), "--out", str(out), "--seed", "5"]) == 2
    assert "config.seed" in capsys.readouterr().err


def test_reproduce_offline_hub_and_missing_global_are_clear_errors(tmp_path, capsys, monkeypatch):
    from reneg.core import prompts

    def offline(repo, filename):
        raise OSError("offline mode")

    monkeypatch.setattr(prompts, "hub_download", offline)
    assert main(["reproduce", "--model", "tiny", "--reward", "tiny", "--metrics", "tiny", "--limit", "4",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "HPSv2 prompt set" in err and "--repo-type dataset" in err


def test_handcrafted_preset_is_named_with_its_source():
    text, source = HANDCRAFTED_PRESETS["reneg-readme"]
    assert text.startswith("distorted, ugly, blurry") and "AMD-AIG-AIMA/ReNeg" in source
    (spec,) = parse_negative_specs("preset:reneg-readme")
    assert spec.kind == "text" and spec.value == text


def test_benchmark_protocol_matches_the_official_reading_and_the_gap_is_measured(backend, tmp_path):
    from PIL import Image

    reward = build_reward("tiny")
    proto = BenchmarkProtocol(reward)
    images = torch.rand(2, 3, 96, 72, generator=torch.Generator().manual_seed(0))  # -> 64x48, padded to 64x64
    # the official path: save .jpg, Image.open, ResizeMaxSize + ToTensor + normalise
    paths = []
    from reneg.core.images import to_pil_images

    for k, pil in enumerate(to_pil_images(images)):
        paths.append(tmp_path / f"{k:05d}.jpg")
        pil.save(paths[-1])
    from_files = hps_benchmark_tensor([Image.open(p) for p in paths], 64)
    assert torch.equal(hps_benchmark_tensor(jpeg_round_trip(images), 64), from_files)
    from reneg.core.rewards.preprocess import OPENAI_MEAN, OPENAI_STD

    assert from_files.shape == (2, 3, 64, 64)
    for c in range(3):  # zero padding (8 columns each side), then normalised
        pad = torch.tensor((0 - OPENAI_MEAN[c]) / OPENAI_STD[c])
        assert torch.allclose(from_files[:, c, :, :8], pad) and torch.allclose(from_files[:, c, :, -8:], pad)
        assert not torch.allclose(from_files[:, c, :, 8:9], pad)
    scores = proto.score(images, ["a cat", "a dog"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    diff = reward.score(images, ["a cat", "a dog"])
    assert not torch.equal(scores, diff)  # JPEG + 8-bit + PIL resize differ from the float path

    null = backend.encode_prompts([""]).float()
    res = evaluate_negatives(backend, {"null": null, "text": backend.encode_prompts(["blurry"]).float()},
                             [PromptItem("a cat", "photo"), PromptItem("a castle", "anime")], {"tiny": reward},
                             EvalConfig(num_inference_steps=3, height=64, width=64, protocol="both", grid_thumb=64),
                             out_dir=tmp_path / "ev")
    gap = res.protocol_gaps["tiny"]
    assert res.metrics == ["tiny", "tiny@benchmark"] and gap["n"] == 4
    rows = res.rows
    assert gap["mean_gap"] == pytest.approx(sum(r["tiny@benchmark"] - r["tiny"] for r in rows) / 4)
    assert 0 < gap["mean_abs_gap"] <= gap["max_abs_gap"]
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["protocol_gaps"]["tiny"]["n"] == 4
