"""ReNeg Refine node's batch path without ComfyUI (``comfy_nodes.refine_run`` on the tiny diffusers backend):
prompt list per row, the KSampler's batch noise, one ``refine_batch`` call, one refined negative per row in the
CONDITIONING form the KSampler reads, and the refinement's own (guaranteed) images."""
from __future__ import annotations

import ast
import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reneg.comfy_nodes import refine_run
from reneg.comfy_nodes.progress import Reporter
from reneg.core.ddim import initial_latents
from reneg.core.errors import RenegError
from reneg.core.refine import RefineConfig, refine_batch, refinement_step_index
from reneg.core.rewards import build_reward
from reneg.core.train import render

STEPS, SIZE = 3, 64


def _host_prepare_noise():
    """``comfy.sample.prepare_noise`` from the ComfyUI source the e2e tests use (COMFYUI_PATH), compiled alone."""
    root = os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "comfy" / "sample.py").is_file():
        pytest.skip("COMFYUI_PATH (ComfyUI source) not set: the KSampler noise is compared with its own code")
    tree = ast.parse((Path(root) / "comfy" / "sample.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "prepare_noise")
    scope = {"torch": torch, "np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "comfy/sample.py", "exec"), scope)
    return scope["prepare_noise"]


@pytest.mark.parametrize("inds", [None, [0, 1, 2], [2, 0, 5], [1, 1]])
def test_noise_is_the_ksamplers_for_the_batch(inds):
    prepare_noise = _host_prepare_noise()
    rows = 3 if inds is None else len(inds)
    latent = torch.zeros(rows, 4, 8, 8)
    expected = prepare_noise(latent, 1234, inds)
    assert torch.equal(refine_run.ksampler_noise(latent.shape, 1234, inds), expected)


def test_noise_rows_without_comfyui():
    """Batch of one = the engine's single-row x_T (``reneg refine --seed``); a batch = one draw from the seed;
    batch_index picks the draws of those rows."""
    full = refine_run.ksampler_noise([4, 4, 8, 8], 7)
    assert torch.equal(full, torch.randn([4, 4, 8, 8], generator=torch.Generator().manual_seed(7)))
    one = refine_run.ksampler_noise([1, 4, 8, 8], 7)
    assert torch.equal(one, full[:1])
    assert torch.equal(refine_run.ksampler_noise([2, 4, 8, 8], 7, [3, 1]), full[[3, 1]])
    assert not torch.equal(full[0], full[1])


def test_prompt_list_and_rows():
    assert refine_run.parse_prompt_list(" a cat \n\n a dog\n") == ["a cat", "a dog"]
    with pytest.raises(RenegError, match="prompt is empty"):
        refine_run.parse_prompt_list(" \n ")
    assert refine_run.prompts_for_rows(["a cat"], 3) == ["a cat"] * 3
    assert refine_run.prompts_for_rows(["a", "b"], 2) == ["a", "b"]
    assert refine_run.prompts_for_rows(["a", "b"], None) == ["a", "b"]
    with pytest.raises(RenegError, match=r"2 prompts \(one per line\) for a latent batch of 3.*exactly 3 lines"):
        refine_run.prompts_for_rows(["a", "b"], 3)
    assert refine_run.batch_indices(None, 2) == [0, 1]
    assert refine_run.batch_indices({"samples": None, "batch_index": [4, 5]}, 2) == [4, 5]


def _conditioning(tensor, pooled=None):
    return [[tensor, {"pooled_output": pooled if pooled is not None else torch.zeros(tensor.shape[0], 8)}]]


def test_batch_positive_rows_and_lengths():
    a, b = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    pa, pb = torch.randn(1, 8), torch.randn(1, 8)
    out = refine_run.batch_positive([_conditioning(a, pa), _conditioning(b, pb)], ["a", "b"])
    assert len(out) == 1 and out[0][0].shape == (2, 154, 8)
    assert torch.equal(out[0][0][0], a.repeat(1, 2, 1)[0]) and torch.equal(out[0][0][1], b[0])
    assert torch.equal(out[0][1]["pooled_output"], torch.cat([pa, pb]))
    single = _conditioning(a, pa)
    assert refine_run.batch_positive([single], ["a"]) is single


class _Recorder:
    def __init__(self, total):
        self.values, self.previews = [], []
        self.reporter = Reporter(total=total, update=self._update, interrupted=lambda: False, rearm=lambda: None,
                                 raise_interrupt=lambda: None)

    def _update(self, value, total, preview):
        self.values.append(value)
        self.previews.append(preview)


@pytest.fixture()
def node_backend(backend, monkeypatch):
    """``prepared(model, vae)`` replaced by the tiny diffusers backend; counts ``refine_batch`` calls."""
    calls = []

    @contextlib.contextmanager
    def prepared(model, vae, clip=None, name="comfyui"):
        with torch.enable_grad():
            yield backend

    def counted(*args, **kwargs):
        calls.append((args, kwargs))
        return refine_batch(*args, **kwargs)

    monkeypatch.setattr(refine_run, "prepared", prepared)
    monkeypatch.setattr(refine_run, "refine_batch", counted)
    return backend, calls


def test_a_latent_batch_is_refined_in_one_call_one_negative_per_row(node_backend):
    backend, calls = node_backend
    reward = build_reward("tiny")
    prompts = ["a cat", "a lighthouse at dusk", "a cat"]
    positive_rows = [_conditioning(backend.encode_prompts([p]).float()) for p in prompts]
    init = backend.encode_prompts([""]).float()
    seed, rows = 42, len(prompts)
    latent = {"samples": torch.zeros(rows, backend.latent_channels, SIZE // 8, SIZE // 8)}
    rec = _Recorder(4)
    out = refine_run.refine_conditioning(None, None, positive_rows, _conditioning(init), reward, prompts=prompts,
                                         seed=seed, num_inference_steps=STEPS, guidance_scale=7.5, max_steps=3,
                                         patience=2, lr=0.05, latent=latent, reporter=rec.reporter)
    assert len(calls) == 1  # one batched refinement, not a loop of single ones
    # the KSampler form: one entry, row i for latent row i; the IMAGE is [B, H, W, 3]
    assert len(out.conditioning) == 1 and out.conditioning[0][0].shape == (rows, 77, backend.context_dim)
    assert out.conditioning[0][1]["pooled_output"].shape[0] == rows
    assert out.image.shape == (rows, SIZE, SIZE, 3)
    assert [r["prompt"] for r in out.rows] == prompts and rec.values[-1] == 4
    noise = torch.randn([rows, backend.latent_channels, SIZE // 8, SIZE // 8], generator=torch.Generator().manual_seed(seed))
    for i, p in enumerate(prompts):
        assert out.rows[i]["step_index"] == refinement_step_index(seed + i, STEPS)
        best = out.best[i:i + 1]
        cond = backend.encode_prompts([p]).float()
        # the IMAGE row is the engine's render of row i's refined negative from the KSampler's noise row i ...
        image = render(backend, cond, best, noise[i:i + 1], STEPS, 7.5)
        torch.testing.assert_close(out.image[i], image[0].permute(1, 2, 0), rtol=1e-4, atol=1e-4)
        # ... and it scores at least as well as the start negative's render (the guarantee)
        start = render(backend, cond, init, noise[i:i + 1], STEPS, 7.5)
        with torch.no_grad():
            got, base = float(reward.score(image, [p])), float(reward.score(start, [p]))
        assert got >= base - 1e-5 * max(1.0, abs(base))
        assert out.rows[i]["best_reward"] == pytest.approx(got, rel=1e-4, abs=1e-5)
        assert out.rows[i]["start_reward"] == pytest.approx(base, rel=1e-4, abs=1e-5)
    # row i equals refining that row alone with its noise and step index
    alone = refine_batch(backend, reward, [prompts[1]], init, [seed],
                         RefineConfig(max_steps=3, patience=2, lr=0.05, num_inference_steps=STEPS, height=SIZE,
                                      width=SIZE), step_indices=[refinement_step_index(seed + 1, STEPS)],
                         latents=noise[1:2])[0]
    # batched kernels round differently (~1e-6) and Adam's first steps are nearly sign(grad): compare the
    # displacement as a whole (as tests/test_refine.py does for the core batch)
    moved = float((alone.best - init).norm())
    assert float((out.best[1:2] - alone.best).norm()) <= 1e-2 * max(moved, 1e-8)
    assert out.rows[1]["best_step"] == alone.best_step
    assert out.rows[1]["trace"] == pytest.approx(alone.trace, rel=1e-4, abs=1e-5)


def test_a_batch_of_one_is_the_single_refinement(node_backend):
    """Batch of one, no latent: row 0's x_T is the engine's seed convention, its step index the seed's."""
    backend, _ = node_backend
    reward = build_reward("tiny")
    init = backend.encode_prompts([""]).float()
    cond = backend.encode_prompts(["a bowl of fruit"]).float()
    out = refine_run.refine_conditioning(None, None, [_conditioning(cond)], _conditioning(init), reward,
                                         prompts=["a bowl of fruit"], seed=5, num_inference_steps=STEPS,
                                         width=SIZE, height=SIZE, max_steps=2, patience=2, lr=0.05,
                                         reporter=_Recorder(3).reporter)
    single = refine_batch(backend, reward, ["a bowl of fruit"], init, [5],
                          RefineConfig(max_steps=2, patience=2, lr=0.05, num_inference_steps=STEPS, height=SIZE,
                                       width=SIZE))[0]
    assert torch.equal(refine_run.ksampler_noise([1, 4, SIZE // 8, SIZE // 8], 5),
                       initial_latents(backend, 1, SIZE, SIZE, 5))
    moved = float((single.best - init).norm())
    assert float((out.best - single.best).norm()) <= 1e-2 * max(moved, 1e-8)
    assert out.rows[0]["trace"] == pytest.approx(single.trace, abs=1e-5)


def test_bad_batches_are_clear_errors(node_backend):
    backend, calls = node_backend
    init = backend.encode_prompts([""]).float()
    cond = _conditioning(backend.encode_prompts(["a"]).float())
    with pytest.raises(RenegError, match=r"latent has shape \[3, 4, 8, 8\]; expected \[2"):
        refine_run.refine_conditioning(None, None, [cond, cond], _conditioning(init), build_reward("tiny"),
                                       prompts=["a", "b"], latent={"samples": torch.zeros(3, 4, 8, 8)},
                                       reporter=_Recorder(1).reporter)
    with pytest.raises(RenegError, match=r"\[1, tokens, dim\] \(one start for all rows\) or \[2"):
        refine_run.refine_conditioning(None, None, [cond, cond], _conditioning(init.repeat(3, 1, 1)),
                                       build_reward("tiny"), prompts=["a", "b"], reporter=_Recorder(1).reporter)
    assert not calls
