"""The ReNeg tab's training job (train_logic.run_training -> core.train) and per-prompt refinement on the
A1111 adapter over a tiny model of the real ldm classes: progress hooks, live images, interrupt keeps a valid
(resumable) file."""
from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("pytorch_lightning", reason="ldm's LatentDiffusion needs pytorch_lightning")
from a1111_tiny_checkpoint import ensure_ldm_importable  # noqa: E402

ensure_ldm_importable()
pytest.importorskip("ldm.models.diffusion.ddpm", reason="needs PyPI stable-diffusion-sdkit (pip install --no-deps)")

from reneg.a1111_extension.model_adapter import LdmBackend  # noqa: E402
from a1111_tiny_checkpoint import build_ldm, write_text_encoder  # noqa: E402
from reneg.a1111_extension.train_logic import TrainHooks, run_training  # noqa: E402
from reneg.core.embedding_io import load_embedding  # noqa: E402
from reneg.core.refine import refine_negative  # noqa: E402
from reneg.core.rewards import build_reward  # noqa: E402
from reneg.core.train import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    te = write_text_encoder(tmp_path_factory.mktemp("te"), "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LdmBackend(build_ldm("tiny", te), name="tiny-ldm")


def _config(**kw):
    base = dict(steps=2, batch_size=2, micro_batch=2, lr=1e-2, num_inference_steps=3, last_k=2, height=64,
                width=64, seed=0, preview_every=2, save_every=0)
    return TrainConfig(**{**base, **kw})


def test_training_job_reports_progress_and_writes_files(backend, tmp_path):
    texts, images, steps = [], [], []
    hooks = TrainHooks(set_text=texts.append, set_image=images.append, set_step=lambda s, t: steps.append((s, t)),
                       curve_every=1)
    out = tmp_path / "run.safetensors"
    with torch.no_grad():  # like a webui worker that disabled grad: the job must enable it itself
        with torch.enable_grad():
            outcome = run_training(backend, build_reward("synthetic"), ["a red cube", "a blue ball"], _config(),
                                   out, hooks=hooks)
    assert steps == [(1, 2), (2, 2)]
    assert any("step 2/2" in t for t in texts)
    assert len(images) == 2 and all(im.mode == "RGB" for im in images)
    assert outcome.steps == 2 and not outcome.stopped and len(outcome.rewards) == 2
    assert len(outcome.images) == 3  # before, after, curve
    emb = load_embedding(out)
    assert emb.tensor.shape == (1, 77, 768) and emb.metadata["status"] == "complete"
    assert emb.metadata["base_model"] == "tiny-ldm"
    assert "complete" in outcome.html() and str(out) in outcome.html()


def test_interrupt_keeps_a_valid_partial_file_and_resumes(backend, tmp_path):
    out = tmp_path / "stopped.safetensors"
    seen = []
    hooks = TrainHooks(set_step=lambda s, t: seen.append(s), should_stop=lambda: len(seen) >= 1)
    outcome = run_training(backend, build_reward("synthetic"), ["a red cube"],
                           _config(preview_every=0, batch_size=1, micro_batch=1), out, hooks=hooks)
    assert outcome.stopped and outcome.steps == 1
    emb = load_embedding(out)
    assert emb.metadata["status"] == "partial" and torch.isfinite(emb.tensor).all()
    assert any(tmp_path.glob("stopped*.state"))
    assert "interrupted" in outcome.html()
    resumed = run_training(backend, build_reward("synthetic"), ["a red cube"],
                           _config(preview_every=0, batch_size=1, micro_batch=1), out, resume=True)
    assert resumed.steps == 2 and not resumed.stopped
    assert load_embedding(out).metadata["status"] == "complete"


def test_refinement_on_the_adapter_never_gets_worse(backend):
    """What the script's 'refine for this prompt' runs: core.refine on the A1111 adapter."""
    init = backend.encode_prompts([""]).float()
    with torch.no_grad():
        with torch.enable_grad():
            result = refine_negative(backend, build_reward("synthetic"), "a red cube", init, seed=3, max_steps=2,
                                     patience=2, lr=5e-2, num_inference_steps=3, guidance_scale=5.0, height=64,
                                     width=64)
    assert result.best.shape == (1, 77, 768)
    assert result.best_reward >= result.start_reward
    assert len(result.trace) >= 2
