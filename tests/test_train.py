"""Global training plumbing: resumes exactly, stops cleanly, skips NaN steps (learning: test_toy_reneg.py)."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from reneg.core.checkpoint import state_path
from reneg.core.embedding_io import load_embedding
from reneg.core.errors import RenegError
from reneg.core.rewards import build_reward
from reneg.core.tiny_models import load_tiny_backend
from reneg.core.train import TrainCallbacks, TrainConfig, train_global

TRAIN_PROMPTS = ["a cat", "a dog", "a red house", "a tree in winter", "portrait of a man", "a car"]


@pytest.fixture(scope="module")
def synthetic():
    return build_reward("synthetic")


def small_config(**kw) -> TrainConfig:
    base = dict(steps=5, batch_size=2, micro_batch=1, lr=0.1, num_inference_steps=3, last_k=2, height=64,
                width=64, seed=7)
    base.update(kw)
    return TrainConfig(**base)


# Learning (the trained negative beats null on held-out prompts, transfer, CFG's role) is tested on the trained
# toy world: tests/test_toy_reneg.py. The tests here check the training plumbing on the random tiny model.


class SimulatedKill(BaseException):
    """Stands for SIGKILL / power loss: nothing in the process gets to react (the trainer only handles Exception)."""


def _crash_at(step_to_crash: int):
    def progress(step, total, reward, preview):
        if step == step_to_crash:
            raise SimulatedKill("simulated kill")
    return progress


def test_killed_and_resumed_run_equals_uninterrupted(backend, synthetic, tmp_path):
    config = small_config(save_every=2)
    full = train_global(backend, synthetic, TRAIN_PROMPTS, config, out=tmp_path / "full.safetensors")

    out = tmp_path / "killed.safetensors"
    with pytest.raises(SimulatedKill):  # dies after step 3; last checkpoint: step 2
        train_global(backend, synthetic, TRAIN_PROMPTS, config, TrainCallbacks(progress=_crash_at(3)), out=out)
    saved = torch.load(state_path(out), weights_only=True)
    assert saved["step"] == 2 and load_embedding(out).metadata["status"] == "partial"

    resumed = train_global(backend, synthetic, TRAIN_PROMPTS, config, out=out, resume=True)
    assert resumed.step == full.step == 5
    assert torch.equal(resumed.negative, full.negative)
    assert torch.equal(load_embedding(out).tensor, load_embedding(tmp_path / "full.safetensors").tensor)
    assert [r["reward_mean"] for r in resumed.log] == [r["reward_mean"] for r in full.log]
    assert not torch.equal(full.negative, backend.encode_prompts([""]).float())  # it did move

    meta = load_embedding(out).metadata
    assert meta["status"] == "complete" and meta["steps"] == "5" and meta["reward"] == "synthetic"
    assert meta["base_model"] == backend.name and json.loads(meta["recipe"])["lr"] == 0.1
    with open(tmp_path / "killed.log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5]
    assert (tmp_path / "killed.rewards.png").stat().st_size > 0


class _FailingReward:
    """Delegates to a reward but raises (like CUDA out-of-memory) on its ``fail_on``-th call."""

    def __init__(self, inner, fail_on: int):
        self.inner, self.fail_on, self.calls, self.name = inner, fail_on, 0, inner.name

    def score(self, images, prompts):
        self.calls += 1
        if self.calls == self.fail_on:
            raise torch.OutOfMemoryError("simulated out of memory")
        return self.inner.score(images, prompts)


def test_error_inside_a_step_saves_the_last_completed_step_and_resume_is_exact(backend, synthetic, tmp_path):
    config = small_config(steps=4, save_every=0)  # 2 micro-batches per step: the 6th call is inside step 3
    full = train_global(backend, synthetic, TRAIN_PROMPTS, config)
    out = tmp_path / "oom.safetensors"
    with pytest.raises(torch.OutOfMemoryError):
        train_global(backend, _FailingReward(synthetic, fail_on=6), TRAIN_PROMPTS, config, out=out)
    assert torch.load(state_path(out), weights_only=True)["step"] == 2
    assert load_embedding(out).metadata["status"] == "partial"
    resumed = train_global(backend, synthetic, TRAIN_PROMPTS, config, out=out, resume=True)
    assert resumed.step == 4 and torch.equal(resumed.negative, full.negative)


def test_should_stop_saves_partial_embedding_and_resume_finishes_equal(backend, synthetic, tmp_path):
    config = small_config(steps=4, save_every=0)
    full = train_global(backend, synthetic, TRAIN_PROMPTS, config)
    out = tmp_path / "neg.safetensors"
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2  # stop before the 3rd step

    stopped = train_global(backend, synthetic, TRAIN_PROMPTS, config, TrainCallbacks(should_stop=should_stop),
                           out=out)
    assert stopped.stopped and stopped.step == 2
    assert load_embedding(out).metadata["status"] == "partial"
    assert torch.equal(load_embedding(out).tensor, stopped.negative)
    resumed = train_global(backend, synthetic, TRAIN_PROMPTS, config, out=out, resume=True)
    assert not resumed.stopped and torch.equal(resumed.negative, full.negative)


def test_resume_guards(backend, synthetic, tmp_path):
    out = tmp_path / "neg.safetensors"
    train_global(backend, synthetic, TRAIN_PROMPTS, small_config(steps=1), out=out)
    with pytest.raises(RenegError, match="--resume"):
        train_global(backend, synthetic, TRAIN_PROMPTS, small_config(steps=1), out=out)
    with pytest.raises(RenegError, match="lr"):
        train_global(backend, synthetic, TRAIN_PROMPTS, small_config(steps=2, lr=0.2), out=out, resume=True)
    with pytest.raises(RenegError, match="prompt"):
        train_global(backend, synthetic, TRAIN_PROMPTS[:2], small_config(steps=1), out=out, resume=True)
    with pytest.raises(RenegError, match="nothing to resume"):
        train_global(backend, synthetic, TRAIN_PROMPTS, small_config(), out=tmp_path / "new.safetensors",
                     resume=True)
    # micro-batch and checkpoint cadence are not part of the recipe: resuming with others is allowed
    done = train_global(backend, synthetic, TRAIN_PROMPTS, small_config(steps=1, micro_batch=2, save_every=1),
                        out=out, resume=True)
    assert done.step == 1


class FlakyReward:
    """Private test reward: NaN on the given calls, else the synthetic reward."""

    name = "flaky"

    def __init__(self, inner, nan_calls):
        self.inner, self.nan_calls, self.calls = inner, set(nan_calls), 0

    def to(self, device=None, dtype=None):
        return self

    def score(self, images, prompts):
        self.calls += 1
        out = self.inner.score(images, prompts)
        return out * float("nan") if self.calls in self.nan_calls else out


def _stop_after(n_steps):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > n_steps
    return should_stop


def test_non_finite_steps_are_skipped_and_counted(backend, synthetic):
    config = small_config(steps=3, batch_size=1, micro_batch=1)
    result = train_global(backend, FlakyReward(synthetic, {2}), TRAIN_PROMPTS, config)
    assert result.skipped_steps == 1
    assert [r["skipped"] for r in result.log] == [0, 1, 0]
    assert torch.isfinite(result.negative).all()
    # the skipped step left the embedding untouched: 2 steps with step 2 NaN == 1 clean step
    two = train_global(backend, FlakyReward(synthetic, {2}), TRAIN_PROMPTS, config,
                       TrainCallbacks(should_stop=_stop_after(2)))
    one = train_global(backend, synthetic, TRAIN_PROMPTS, config, TrainCallbacks(should_stop=_stop_after(1)))
    assert two.step == 2 and one.step == 1
    assert torch.equal(two.negative, one.negative)


def test_micro_batching_does_not_change_the_result(backend, synthetic):
    a = train_global(backend, synthetic, TRAIN_PROMPTS, small_config(steps=2, batch_size=4, micro_batch=4))
    b = train_global(backend, synthetic, TRAIN_PROMPTS, small_config(steps=2, batch_size=4, micro_batch=1))
    null = backend.encode_prompts([""]).float()
    # same gradient up to float summation order; Adam's per-element normalisation can amplify that for elements
    # whose gradient is ~0, hence a relative tolerance on the displacement rather than bit equality
    assert float((a.negative - b.negative).norm() / (a.negative - null).norm()) < 1e-3
    assert all(abs(x["reward_mean"] - y["reward_mean"]) < 1e-4 for x, y in zip(a.log, b.log))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_fp32_master_and_previews(backend, precision):
    tiny = build_reward("tiny")
    previews = []
    config = small_config(steps=2, mixed_precision=precision, preview_every=2, preview_prompt="a lighthouse")
    result = train_global(backend, tiny, TRAIN_PROMPTS, config,
                          TrainCallbacks(progress=lambda s, t, r, p: previews.append((s, p))))
    assert result.negative.dtype == torch.float32 and torch.isfinite(result.negative).all()
    assert result.skipped_steps == 0
    assert previews[0][1] is None and previews[1][1].shape == (1, 3, 64, 64)
    assert 0 <= float(previews[1][1].min()) and float(previews[1][1].max()) <= 1


def test_gradient_checkpointing_gives_the_same_result(synthetic):
    plain = load_tiny_backend("tiny", fresh=True)
    ckpt = load_tiny_backend("tiny", fresh=True)
    a = train_global(plain, synthetic, TRAIN_PROMPTS, small_config(steps=2))
    b = train_global(ckpt, synthetic, TRAIN_PROMPTS, small_config(steps=2, gradient_checkpointing=True))
    assert ckpt.unet.is_gradient_checkpointing
    null = plain.encode_prompts([""]).float()
    assert float((a.negative - b.negative).norm() / (a.negative - null).norm()) < 1e-4


def test_bad_inputs(backend, synthetic, tmp_path):
    with pytest.raises(RenegError, match="No training prompts"):
        train_global(backend, synthetic, [], small_config())
    with pytest.raises(RenegError, match="divisible"):
        train_global(backend, synthetic, TRAIN_PROMPTS, small_config(batch_size=3),
                     dist=__import__("reneg.core.distributed", fromlist=["DistContext"]).DistContext(world_size=2))
    with pytest.raises(RenegError, match=".safetensors"):
        train_global(backend, synthetic, TRAIN_PROMPTS, small_config(), out=tmp_path / "x.bin")
    from reneg.core.errors import IncompatibleEmbeddingError

    with pytest.raises(IncompatibleEmbeddingError):
        train_global(backend, synthetic, TRAIN_PROMPTS, small_config(), init_negative=torch.zeros(1, 77, 1024))
