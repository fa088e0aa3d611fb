"""ReNeg Train Global's 'if_exists' choice (continue / restart / new name) and the engine's extend-on-resume it
relies on (issue 3b: a second Run, or 2 -> 4 steps, failed with 'cannot resume with a different recipe')."""
from __future__ import annotations

import json

import pytest
import torch

from reneg.comfy_nodes import train_modes as tm
from reneg.core.checkpoint import load_state, state_path
from reneg.core.embedding_io import load_embedding
from reneg.core.errors import RenegError
from reneg.core.rewards import build_reward
from reneg.core.train import TrainConfig, prompts_digest, train_global

PROMPTS = ["a cat", "a red house", "a tree in winter"]


def config(**kw) -> TrainConfig:
    base = dict(steps=2, batch_size=2, micro_batch=1, lr=0.1, num_inference_steps=3, last_k=2, height=64, width=64,
                seed=7)
    return TrainConfig(**{**base, **kw})


def fake_state(done: int, cfg: TrainConfig, prompts=PROMPTS) -> dict:
    return {"step": done, "recipe": json.dumps(cfg.recipe()), "prompts_sha256": prompts_digest(prompts)}


def saved_run(tmp_path, name="neg", done=2, cfg=None, prompts=PROMPTS):
    """Files of a previous run (contents do not matter to plan_run; read_state is faked)."""
    out = tmp_path / f"{name}.safetensors"
    out.write_bytes(b"x")
    state_path(out).write_bytes(b"x")
    return out, (lambda _path: fake_state(done, cfg or config(), prompts))


def test_a_fresh_name_trains_from_scratch(tmp_path):
    plan = tm.plan_run(tmp_path, "neg", tm.CONTINUE, config(), PROMPTS)
    assert plan == tm.TrainPlan(tmp_path / "neg.safetensors", resume=False, overwrite=False)


def test_continue_resumes_and_may_raise_steps(tmp_path):
    out, read = saved_run(tmp_path)
    for steps in (2, 4):  # the same graph again, and 2 -> 4 steps
        plan = tm.plan_run(tmp_path, "neg", tm.CONTINUE, config(steps=steps), PROMPTS, read)
        assert (plan.out, plan.resume, plan.overwrite, plan.done_steps) == (out, True, False, 2)
    assert "continued neg.safetensors from step 2 to 4" == plan.describe(4)


@pytest.mark.parametrize("change, message", [
    (dict(steps=1), "already has 2 training steps; 'continue' needs steps >= 2"),
    (dict(lr=0.05), "lr 0.1 -> 0.05"),
    (dict(seed=8), "seed 7 -> 8"),
])
def test_continue_refuses_other_settings_naming_the_choices(tmp_path, change, message):
    _, read = saved_run(tmp_path)
    with pytest.raises(RenegError, match=message) as err:
        tm.plan_run(tmp_path, "neg", tm.CONTINUE, config(**change), PROMPTS, read)
    assert "'restart'" in str(err.value) and "'new name'" in str(err.value)


def test_continue_refuses_other_prompts_and_a_file_without_state(tmp_path):
    _, read = saved_run(tmp_path)
    with pytest.raises(RenegError, match="other prompts"):
        tm.plan_run(tmp_path, "neg", tm.CONTINUE, config(), PROMPTS[:2], read)
    (tmp_path / "copy.safetensors").write_bytes(b"x")  # e.g. written by Save ReNeg Embedding
    with pytest.raises(RenegError, match="no training state"):
        tm.plan_run(tmp_path, "copy", tm.CONTINUE, config(), PROMPTS)


def test_restart_replaces_and_new_name_keeps(tmp_path):
    out, read = saved_run(tmp_path)
    assert tm.plan_run(tmp_path, "neg", tm.RESTART, config(lr=0.3), PROMPTS, read) == tm.TrainPlan(
        out, resume=False, overwrite=True)
    first = tm.plan_run(tmp_path, "neg", tm.NEW_NAME, config(), PROMPTS, read)
    assert first == tm.TrainPlan(tmp_path / "neg_00002.safetensors", resume=False, overwrite=False)
    state_path(first.out).write_bytes(b"x")  # taken once its state exists
    assert tm.plan_run(tmp_path, "neg", tm.NEW_NAME, config(), PROMPTS, read).out.name == "neg_00003.safetensors"
    assert tm.plan_run(tmp_path, "fresh", tm.NEW_NAME, config(), PROMPTS).out.name == "fresh.safetensors"


def test_bad_names_and_choices(tmp_path):
    with pytest.raises(RenegError, match="Invalid save name"):
        tm.plan_run(tmp_path, "../up", tm.CONTINUE, config(), PROMPTS)
    with pytest.raises(RenegError, match="if_exists must be one of continue, restart, new name"):
        tm.plan_run(tmp_path, "neg", "resume", config(), PROMPTS)


# --- the engine side: resume with extend=True (what 'continue' calls) -----------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    return build_reward("synthetic")


def test_extend_continues_a_finished_run_to_more_steps(backend, synthetic, tmp_path):
    out = tmp_path / "ext.safetensors"
    two = train_global(backend, synthetic, PROMPTS, config(steps=2), out=out)
    assert load_embedding(out).metadata["status"] == "complete"
    with pytest.raises(RenegError, match="different recipe"):  # a plain resume still insists on the same recipe
        train_global(backend, synthetic, PROMPTS, config(steps=4), out=out, resume=True)
    four = train_global(backend, synthetic, PROMPTS, config(steps=4), out=out, resume=True, extend=True)
    assert (four.step, four.total_steps) == (4, 4) and four.log[:2] == two.log
    meta = load_embedding(out).metadata
    assert (meta["steps"], meta["status"]) == ("4", "complete")
    # the 2-step cosine ended at lr 0; the extension continues on the 4-step schedule (factor 0.5 at step 2)
    assert [round(r["lr"], 6) for r in four.log[2:]] == [0.05, round(0.1 * 0.5 * (1 + torch.cos(
        torch.tensor(3.0 / 4.0 * torch.pi)).item()), 6)]
    assert json.loads(load_state(state_path(out))["recipe"])["steps"] == 4  # a later plain resume uses 4
    with pytest.raises(RenegError, match="4 steps are already done"):
        train_global(backend, synthetic, PROMPTS, config(steps=3), out=out, resume=True, extend=True)
