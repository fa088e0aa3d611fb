"""Training draws one DDIM step index per sample (issue 10 §3); decay toward the start; fp32 null-text start."""
from __future__ import annotations

import json

import pytest
import torch

from reneg.core.checkpoint import load_state, save_state, state_path
from reneg.core.embedding_io import load_embedding
from reneg.core.errors import RenegError
from reneg.core.model_boundary import encode_fp32
from reneg.core.objective import reneg_objective
from reneg.core.rewards import build_reward
from reneg.core.train import TrainCallbacks, TrainConfig, batch_latents, draw_step, train_global

PROMPTS = ["a cat", "a dog", "a red house", "a tree in winter", "portrait of a man", "a car"]


@pytest.fixture(scope="module")
def synthetic():
    return build_reward("synthetic")


def cfg(**kw) -> TrainConfig:
    base = dict(steps=3, batch_size=1, micro_batch=1, lr=0.1, num_inference_steps=4, last_k=3, height=64, width=64,
                seed=11)
    base.update(kw)
    return TrainConfig(**base)


def test_draws_one_index_per_sample_and_a_batch_of_one_draws_as_before():
    many = draw_step(torch.Generator().manual_seed(0), 6, cfg(batch_size=16, num_inference_steps=30, last_k=10))
    assert len(many.step_indices) == 16 and len(set(many.step_indices)) > 1
    assert all(20 <= t < 30 for t in many.step_indices)
    shared = draw_step(torch.Generator().manual_seed(0), 6, cfg(batch_size=16, t_sampling="step"))
    assert len(set(shared.step_indices)) == 1
    for seed in range(5):  # batch of one: the same generator draws under both rules
        a = draw_step(torch.Generator().manual_seed(seed), 6, cfg())
        b = draw_step(torch.Generator().manual_seed(seed), 6, cfg(t_sampling="step"))
        assert (a.step_indices, a.prompt_ids, a.seeds) == (b.step_indices, b.prompt_ids, b.seeds)


def test_batch_of_one_trains_exactly_as_the_per_step_rule(backend, synthetic):
    per_sample = train_global(backend, synthetic, PROMPTS, cfg())
    per_step = train_global(backend, synthetic, PROMPTS, cfg(t_sampling="step"))
    assert torch.equal(per_sample.negative, per_step.negative)
    assert [r["reward_mean"] for r in per_sample.log] == [r["reward_mean"] for r in per_step.log]


def test_per_sample_steps_do_not_depend_on_the_micro_batch(backend, synthetic):
    config = cfg(batch_size=4, micro_batch=4, steps=2, last_k=4)
    whole = train_global(backend, synthetic, PROMPTS, config)
    split = train_global(backend, synthetic, PROMPTS, cfg(batch_size=4, micro_batch=1, steps=2, last_k=4))
    assert any(isinstance(r["step_index"], float) for r in whole.log)  # the samples did use different t
    start = encode_fp32(backend, [""])
    # as test_train's micro-batch test: Adam amplifies summation-order noise on ~0-gradient elements
    assert float((whole.negative - split.negative).norm() / (whole.negative - start).norm()) < 1e-3
    assert all(abs(x["reward_mean"] - y["reward_mean"]) < 1e-4 for x, y in zip(whole.log, split.log))


def test_per_row_objective_equals_rows_alone(backend):
    reward = build_reward("tiny")
    prompts, seeds, steps = ["a cat", "a dog", "a boat"], [1, 2, 3], [0, 3, 2]
    cond = backend.encode_prompts(prompts)
    latents = batch_latents(backend, seeds, 64, 64)
    neg = backend.encode_prompts([""]).float().clone().requires_grad_(True)
    rewards, images = reneg_objective(backend, reward, prompts, cond, neg, latents, steps, 4, 7.5)
    (grad,) = torch.autograd.grad(rewards.sum(), neg)
    total = torch.zeros_like(neg)
    for b in range(3):
        n = neg.detach().clone().requires_grad_(True)
        r, img = reneg_objective(backend, reward, [prompts[b]], cond[b:b + 1], n, latents[b:b + 1], steps[b], 4, 7.5)
        total += torch.autograd.grad(r.sum(), n)[0]
        assert float(r) == pytest.approx(float(rewards[b]), rel=1e-5, abs=1e-5)
        assert torch.allclose(img, images[b:b + 1], atol=1e-5)
    assert torch.allclose(grad, total, atol=1e-6, rtol=1e-4)


def test_weight_decay_toward_zero_or_toward_the_start(backend, synthetic, tmp_path):
    # guidance 1: the negative does not enter the output, its gradient is 0 and only the decoupled decay acts
    start = encode_fp32(backend, [""])
    zero = train_global(backend, synthetic, PROMPTS, cfg(steps=1, guidance_scale=1.0, lr=0.5, weight_decay=0.1,
                                                          lr_schedule="constant"), out=tmp_path / "z.safetensors")
    assert torch.allclose(zero.negative, start * (1 - 0.5 * 0.1), atol=1e-6)
    init = train_global(backend, synthetic, PROMPTS, cfg(steps=1, guidance_scale=1.0, lr=0.5, weight_decay=0.1,
                                                          lr_schedule="constant", weight_decay_target="init"),
                        init_negative=start + 1.0, out=tmp_path / "i.safetensors")
    assert torch.allclose(init.negative, start + 1.0, atol=1e-6)
    meta = load_embedding(tmp_path / "z.safetensors").metadata
    assert meta["weight_decay"] == "0.1" and meta["weight_decay_target"] == "zero" and meta["t_sampling"] == "sample"
    assert json.loads(meta["recipe"])["weight_decay"] == 0.1


def test_a_state_saved_before_per_sample_t_resumes_only_with_the_old_rule(backend, synthetic, tmp_path):
    out = tmp_path / "old.safetensors"
    polls = []
    stop_after_one = TrainCallbacks(should_stop=lambda: polls.append(1) or len(polls) > 1)
    train_global(backend, synthetic, PROMPTS, cfg(steps=2, t_sampling="step"), stop_after_one, out=out)
    state = load_state(state_path(out))
    recipe = json.loads(state["recipe"])
    del recipe["t_sampling"], recipe["weight_decay_target"]  # what an earlier version saved
    state["recipe"] = json.dumps(recipe, sort_keys=True)
    save_state(state_path(out), state)
    with pytest.raises(RenegError, match="t_sampling"):
        train_global(backend, synthetic, PROMPTS, cfg(steps=2), out=out, resume=True)
    done = train_global(backend, synthetic, PROMPTS, cfg(steps=2, t_sampling="step"), out=out, resume=True)
    assert done.step == 2


def test_null_text_is_encoded_in_fp32_on_a_half_precision_model():
    from reneg.core.tiny_models import load_tiny_backend

    ref = load_tiny_backend("tiny", fresh=True)
    half = load_tiny_backend("tiny", fresh=True).to(dtype=torch.bfloat16)
    exact = ref.encode_prompts([""]).float()
    fp32 = encode_fp32(half, [""])
    rounded = half.encode_prompts([""]).float()
    assert fp32.dtype == torch.float32 and half.text_encoder.dtype == torch.bfloat16  # restored
    # only the bf16 weights differ from the fp32 model; the computation no longer rounds through bf16
    assert (fp32 - exact).abs().max() < (rounded - exact).abs().max()
