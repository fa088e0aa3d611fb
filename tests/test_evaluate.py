"""Evaluation: shared seeds, per-group means, win-rates, output files; negative spec parsing."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from reneg.core.embedding_io import save_embedding
from reneg.core.errors import IncompatibleEmbeddingError, RenegError
from reneg.core.evaluate import (ALL, MEAN_OF_GROUPS, EvalConfig, NegativeSpec, evaluate_negatives,
                                 parse_negative_specs, resolve_negative)
from reneg.core.prompts import PromptItem
from reneg.core.rewards import build_reward
from reneg.core.tiny_models import load_tiny_backend
from reneg.core.train import batch_latents, render

ITEMS = [PromptItem("a cat", "photo"), PromptItem("a dog", "photo"), PromptItem("a castle", "anime")]
CONFIG = EvalConfig(num_inference_steps=3, height=64, width=64, seed=5, images_per_prompt=2, batch_size=4,
                    grid_prompts=2, grid_thumb=64, save_images=True)


@pytest.fixture(scope="module")
def backend():
    return load_tiny_backend("tiny")


def test_parse_negative_specs(tmp_path):
    f = tmp_path / "mine.safetensors"
    save_embedding(f, torch.zeros(1, 77, 768))
    specs = parse_negative_specs([f"null,text:low quality, blurry, jpeg artifacts,{f}", "text:ugly", "null"])
    assert [(s.kind, s.value) for s in specs] == [
        ("null", ""), ("text", "low quality, blurry, jpeg artifacts"), ("file", str(f)), ("text", "ugly"),
        ("null", "")]
    assert [s.label for s in specs] == ["null", "text:low quality, blurry, jpe", "mine", "text:ugly", "null#2"]
    with pytest.raises(RenegError, match="not 'null'"):
        parse_negative_specs("blurry")
    with pytest.raises(RenegError, match="No negatives"):
        parse_negative_specs(" , ")


def test_resolve_negative(backend, tmp_path):
    assert torch.equal(resolve_negative(backend, NegativeSpec("null")), backend.encode_prompts([""]).float())
    text = resolve_negative(backend, NegativeSpec("text", "blurry"))
    assert torch.equal(text, backend.encode_prompts(["blurry"]).float())
    wide = tmp_path / "sd2.safetensors"
    save_embedding(wide, torch.zeros(1, 77, 1024))
    with pytest.raises(IncompatibleEmbeddingError):
        resolve_negative(backend, NegativeSpec("file", str(wide)))


def test_evaluate_negatives_end_to_end(backend, tmp_path):
    null = backend.encode_prompts([""]).float()
    text = backend.encode_prompts(["low quality"]).float()
    metrics = {"tiny": build_reward("tiny"), "synthetic": build_reward("synthetic")}
    negatives = {"null": null, "text": text, "null-again": null.clone()}
    progress = []
    res = evaluate_negatives(backend, negatives, ITEMS, metrics, CONFIG, out_dir=tmp_path,
                             callback=lambda done, total: progress.append((done, total)), info={"model": "tiny"})
    assert progress[-1] == (6, 6) and len(res.rows) == 3 * 6
    # same seeds for every negative: identical negatives give identical images, hence identical scores
    by = {(r["negative"], r["prompt_id"], r["seed"]): r for r in res.rows}
    assert {k[1:] for k in by if k[0] == "null"} == {k[1:] for k in by if k[0] == "text"}
    assert {(i, s) for (_, i, s) in by} == {(i, 5 + 2 * i + j) for i in range(3) for j in range(2)}
    for (neg, i, s), row in by.items():
        if neg == "null":
            assert row["tiny"] == by[("null-again", i, s)]["tiny"]
    # an image equals a standalone render with that seed
    row = by[("text", 2, 10)]
    image = render(backend, backend.encode_prompts(["a castle"]), text, batch_latents(backend, [10], 64, 64), 3, 7.5)
    assert metrics["tiny"].score(image, ["a castle"]).item() == pytest.approx(row["tiny"], rel=1e-5)

    for m in metrics:
        for neg in negatives:
            vals = [r[m] for r in res.rows if r["negative"] == neg]
            photo = [r[m] for r in res.rows if r["negative"] == neg and r["group"] == "photo"]
            assert res.means[m][neg][ALL] == pytest.approx(sum(vals) / len(vals))
            assert res.means[m][neg]["photo"] == pytest.approx(sum(photo) / len(photo))
            assert res.means[m][neg][MEAN_OF_GROUPS] == pytest.approx(
                (res.means[m][neg]["photo"] + res.means[m][neg]["anime"]) / 2)
        assert res.win_rates[m]["null"]["null-again"] == 0.5  # all ties
        assert res.win_rates[m]["text"]["null"] + res.win_rates[m]["null"]["text"] == pytest.approx(1.0)
        wins = sum(by[("text", i, s)][m] > by[("null", i, s)][m] for (_, i, s) in by if _ == "null")
        assert res.win_rates[m]["text"]["null"] == pytest.approx(wins / 6)

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["negatives"] == ["null", "text", "null-again"] and saved["groups"] == ["photo", "anime"]
    assert saved["model"] == "tiny" and saved["n_images_per_negative"] == 6
    with open(tmp_path / "scores.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 18
    with open(tmp_path / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert {r["group"] for r in summary} == {"photo", "anime", ALL, MEAN_OF_GROUPS}
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[0] > 3 * 64 and grid.size[1] >= 2 * 64  # 3 negative columns, 2 prompt rows
    assert Image.open(tmp_path / "bars.png").size[0] > 100
    assert len(list((tmp_path / "images" / "text").glob("*.png"))) == 6


def test_evaluate_stop_and_input_errors(backend):
    null = backend.encode_prompts([""]).float()
    metrics = {"synthetic": build_reward("synthetic")}
    polls = []
    res = evaluate_negatives(backend, {"null": null}, ITEMS, metrics, CONFIG,
                             should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert res.stopped and len(res.rows) == 4  # the first batch of 4 (prompt, seed) pairs
    with pytest.raises(IncompatibleEmbeddingError):
        evaluate_negatives(backend, {"sd2": torch.zeros(1, 77, 1024)}, ITEMS, metrics, CONFIG)
    with pytest.raises(RenegError, match="metric"):
        evaluate_negatives(backend, {"null": null}, ITEMS, {}, CONFIG)


def test_ungrouped_prompts_give_one_summary_row_per_negative_and_metric(backend, tmp_path):
    """A plain .txt prompt file has the single group 'all': summary.csv must not list it twice."""
    items = [PromptItem("a cat"), PromptItem("a dog")]
    config = EvalConfig(num_inference_steps=2, height=64, width=64, grid_prompts=1, grid_thumb=64)
    res = evaluate_negatives(backend, {"null": backend.encode_prompts([""]).float()}, items,
                             {"tiny": build_reward("tiny")}, config, out_dir=tmp_path)
    assert res.groups == [ALL]
    with open(tmp_path / "summary.csv") as fh:
        groups = [r["group"] for r in csv.DictReader(fh)]
    assert groups == [ALL, MEAN_OF_GROUPS]


def test_a_group_named_all_beside_others_keeps_its_own_mean(backend):
    """A prompt folder with all.txt next to photo.txt: the 'all' group must not overwrite the overall mean."""
    items = [PromptItem("a cat", "all"), PromptItem("a dog", "photo"), PromptItem("a car", "photo")]
    config = EvalConfig(num_inference_steps=2, height=64, width=64, grid_prompts=1, grid_thumb=64)
    res = evaluate_negatives(backend, {"null": backend.encode_prompts([""]).float()}, items,
                             {"synthetic": build_reward("synthetic")}, config)
    assert res.groups == ["all (group)", "photo"]
    means = res.means["synthetic"]["null"]
    scores = {r["prompt"]: r["synthetic"] for r in res.rows}
    assert means["all (group)"] == pytest.approx(scores["a cat"])
    assert means[ALL] == pytest.approx(sum(scores.values()) / 3)


def test_per_sample_refinement_in_evaluation_never_loses_to_its_start(backend):
    """``refine:FILE`` negatives: refined per (prompt, seed) with the final-image rule on the metric itself, so
    each image scores >= the start negative's image of the same seed."""
    from reneg.core.evaluate import PerSampleNegative

    reward = build_reward("tiny")
    null = backend.encode_prompts([""]).float()
    specs = parse_negative_specs("null,refine:null")
    assert [s.kind for s in specs] == ["null", "refine"] and specs[1].label == "refined:null"
    assert torch.equal(resolve_negative(backend, specs[1]), null)
    config = EvalConfig(num_inference_steps=3, height=64, width=64, seed=2, batch_size=3, grid_thumb=64)
    res = evaluate_negatives(backend, {"null": null, "refined": PerSampleNegative(null, reward, max_steps=2, lr=0.05)},
                             ITEMS, {"tiny": reward}, config)
    by = {(r["negative"], r["prompt_id"]): r["tiny"] for r in res.rows}
    assert all(by[("refined", i)] >= by[("null", i)] for i in range(3))
    assert any(by[("refined", i)] > by[("null", i)] for i in range(3))
