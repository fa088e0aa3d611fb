"""Careless re-runs and diverging runs (issue 14): a new training run never replaces an earlier run's previews,
log or curve (a resume keeps updating its own), and evaluate/reproduce never write a NaN/Inf score."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from test_hostile_inputs import _prompts, _train, assert_one_clear_error, assert_unchanged, run, snapshot
from reneg.core import finite_scores
from reneg.core.errors import NonFiniteError
from reneg.core.rewards.synthetic import SyntheticReward


def _no_model(monkeypatch):
    from reneg.core import diffusers_backend

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(diffusers_backend, "load_backend", no_model)


# ------------------------------------------------------------------------------------------------ training files
#: files an earlier run of neg.safetensors left (without its state), and the words the refusal must contain.
EARLIER_RUN_FILES = {
    "preview": (["neg.previews/step_000001.png"], ["neg.previews/step_000001.png", "--overwrite"]),
    "previews-many": ([f"neg.previews/step_{i:06d}.png" for i in range(1, 8)], ["and 3 more", "--overwrite"]),
    "curve": (["neg.rewards.png"], ["neg.rewards.png", "--overwrite"]),
    "log": (["neg.log.csv"], ["neg.log.csv", "--overwrite"]),
    "curve-and-preview": (["neg.rewards.png", "neg.previews/step_000005.png"],
                          ["neg.rewards.png", "neg.previews/step_000005.png"]),
}


@pytest.mark.parametrize("case", list(EARLIER_RUN_FILES))
def test_a_new_run_refuses_an_earlier_runs_previews_curve_and_log(tmp_path, capsys, monkeypatch, case):
    names, words = EARLIER_RUN_FILES[case]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"an earlier run's file")
    _prompts(tmp_path)
    _no_model(monkeypatch)
    before = snapshot(tmp_path)
    rc, err = run(_train(tmp_path, "--out", tmp_path / "neg.safetensors", "--preview-every", "1"), capsys)
    assert_one_clear_error(rc, err, "earlier run", *words)
    assert_unchanged(tmp_path, before)


def test_a_previews_path_that_is_a_file_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "neg.previews").write_bytes(b"not a folder")
    _prompts(tmp_path)
    _no_model(monkeypatch)
    before = snapshot(tmp_path)
    rc, err = run(_train(tmp_path, "--out", tmp_path / "neg.safetensors", "--overwrite"), capsys)
    assert_one_clear_error(rc, err, "neg.previews is a file")
    assert_unchanged(tmp_path, before)


def _stop_after_first_preview(monkeypatch):
    """Ctrl-C (a real SIGINT to this process) right after the first preview is saved."""
    from reneg.core.commands import common

    real = common.save_images

    def save_then_interrupt(images, out, overwrite=True):
        paths = real(images, out, overwrite)
        os.kill(os.getpid(), signal.SIGINT)
        return paths

    monkeypatch.setattr(common, "save_images", save_then_interrupt)
    return real


def test_a_resume_keeps_updating_its_own_previews_and_overwrite_starts_them_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "neg.safetensors"
    previews = tmp_path / "neg.previews"
    args = _train(tmp_path, "--out", out, "--steps", "2", "--preview-every", "1", "--save-every", "1")
    real = _stop_after_first_preview(monkeypatch)
    rc, err = run(args, capsys)
    assert rc == 128 + signal.SIGINT, err
    first = (previews / "step_000001.png").read_bytes()
    assert sorted(p.name for p in previews.iterdir()) == ["step_000001.png"]

    from reneg.core.commands import common
    monkeypatch.setattr(common, "save_images", real)
    rc, err = run(args + ["--resume"], capsys)  # the same run: its previews are its own to update
    assert rc == 0, err
    assert sorted(p.name for p in previews.iterdir()) == ["step_000001.png", "step_000002.png"]
    assert (previews / "step_000001.png").read_bytes() == first

    (previews / "step_000009.png").write_bytes(b"a stale preview of some older run")
    rc, err = run(_train(tmp_path, "--out", out, "--steps", "1", "--preview-every", "1", "--overwrite"), capsys)
    assert rc == 0, err  # starting over (explicitly): the earlier previews are gone, this run's are there
    assert sorted(p.name for p in previews.iterdir()) == ["step_000001.png"]


# ------------------------------------------------------------------------------------------------ NaN scores
class NaNForDogs(SyntheticReward):
    """A metric that fails (NaN) on one prompt's images: a damaged reward model, an fp16 overflow inside it."""

    name = "synthetic"

    def score(self, images, prompts):
        s = super().score(images, prompts)
        return torch.where(torch.tensor(["dog" in p for p in prompts]), torch.full_like(s, float("nan")), s)


def _eval_args(tmp_path, *extra):
    return ["evaluate", "--model", "tiny", "--negatives", "null", "--prompts", _prompts(tmp_path), "--metrics",
            "synthetic", "--ddim-steps", "2", "--height", "64", "--width", "64", "--batch-size", "1",
            "--out", tmp_path / "ev", *extra]


@pytest.mark.parametrize("extra", [[], ["--save-images"], ["--overwrite"]], ids=["plain", "save-images", "overwrite"])
def test_evaluate_with_a_nan_score_is_an_error_naming_the_image_and_writes_nothing(tmp_path, capsys,
                                                                                    monkeypatch, extra):
    from reneg.core.commands import reward_args

    monkeypatch.setattr(reward_args, "build_metrics", lambda *a, **k: {"synthetic": NaNForDogs()})
    if "--overwrite" in extra:  # an earlier evaluation's results: kept, since this one failed before writing
        (tmp_path / "ev").mkdir()
        (tmp_path / "ev" / "results.json").write_text('{"earlier": true}')
    _prompts(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run(_eval_args(tmp_path, *extra), capsys)
    assert_one_clear_error(rc, err, "non-finite score", "synthetic = nan", "'a dog'", "seed 1", "negative 'null'",
                           "no results were written", "the metric failed")
    assert_unchanged(tmp_path, before)  # no results, no images (the cat's image was removed again), no folders


def test_evaluate_refuses_to_replace_an_earlier_evaluations_images(tmp_path, capsys, monkeypatch):
    old = tmp_path / "ev" / "images" / "null" / "00000_0.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an earlier evaluation's image")
    _prompts(tmp_path)
    _no_model(monkeypatch)
    before = snapshot(tmp_path)
    rc, err = run(_eval_args(tmp_path, "--save-images"), capsys)
    assert_one_clear_error(rc, err, "1 images of an earlier evaluation", "null/00000_0.png", "--overwrite")
    assert_unchanged(tmp_path, before)


def test_a_nan_image_is_named_as_the_samplers_fault():
    images = torch.rand(2, 3, 8, 8)
    images[1, 0, 0, 0] = float("inf")
    scores = {"hpsv2.1": torch.tensor([0.2, float("nan")])}
    with pytest.raises(NonFiniteError, match=r"prompt 'b', seed 7: the image itself holds NaN/Inf.*Lower the guid"):
        finite_scores.check_finite_scores(images, scores, ["a", "b"], [6, 7], "neg", "nothing was written")
    finite_scores.check_finite_scores(images[:1], {"m": torch.tensor([1.0])}, ["a"], [6], "neg", "x")  # finite: ok


def test_reproduce_stops_at_a_nan_score_keeping_only_complete_rows(backend, tmp_path):
    from reneg.core.prompts import PromptItem
    from reneg.core.reproduce import ReproduceConfig, _read_done, reproduce

    items = [PromptItem("a cat", "photo"), PromptItem("a dog", "photo")]
    cfg = ReproduceConfig(num_inference_steps=2, height=64, width=64, batch_size=1)
    out = tmp_path / "repro"
    with pytest.raises(NonFiniteError, match=r"'null'.*'a dog', seed 1.*1 rows scored before it are kept"):
        reproduce(backend, SyntheticReward(), {"synthetic": NaNForDogs()}, {"mini": items},
                  backend.encode_prompts([""]).float().cpu(), "blurry", out, cfg, per_sample=False)
    done = _read_done(out / "mini" / "scores.jsonl")
    assert list(done) == [("null", 0)]  # the cat's row; the dog's NaN row was never logged
    assert sorted(p.name for p in (out / "mini" / "images" / "null").iterdir()) == ["00000.png"]
    assert not (out / "table2.md").exists()

    log = out / "mini" / "scores.jsonl"  # a NaN row an older version logged is scored again, not summarised
    log.write_text(log.read_text() + json.dumps({"prompt_id": 1, "negative": "null", "synthetic": float("nan")})
                   + "\n")
    assert list(_read_done(log)) == [("null", 0)]
