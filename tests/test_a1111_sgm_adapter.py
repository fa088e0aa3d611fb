"""The A1111 SDXL adapter (:class:`~reneg.a1111_extension.sgm_backend.SgmBackend`) on a tiny sgm ``DiffusionEngine``
built from A1111's own ``repositories/generative-models`` (``sd_xl_base.yaml`` made small) with A1111's SDXL
patches (``modules/sd_models_xl.py``: ``get_learned_conditioning``, ``apply_model``, ``extend_sdxl``) executed from
the webui's source (``tests/sgm_tiny.py``).

Checked against the webui's own code: the size/crop embedding equals ``vector[:, 1280:]`` of A1111's
``get_learned_conditioning`` for the generation's size and crop settings; ``model_output`` equals ``apply_model``
with the webui's cond dict; prompt encoding is the webui's conditioning packed; decoding equals
``decode_first_stage``; gradients reach the context and the pooled part only; refinement and the tab's training
run on it and write a two-tensor SDXL file.

Opt-in like the other real-host checks: set ``A1111_PATH`` (the webui checkout with ``repositories/`` cloned); the
pack's venv needs ``kornia`` and ``scipy`` (imported by sgm).
"""
from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import pytest
import torch

A1111_PATH = os.environ.get("A1111_PATH")
pytestmark = pytest.mark.skipif(not A1111_PATH, reason="opt-in: set A1111_PATH to a stable-diffusion-webui v1.10 "
                                                       "checkout with repositories/generative-models")

from reneg.core.errors import RenegError  # noqa: E402
from reneg.core.sdxl_backend import is_packed, pack, packed_frozen_entries, unpack  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(A1111-patched tiny DiffusionEngine, its opts namespace, SgmBackend over it)."""
    pytest.importorskip("kornia", reason="sgm imports kornia: pip install kornia scipy")
    from sgm_tiny import build_tiny_sdxl, write_clip_l

    from reneg.a1111_extension.model_adapter import backend_for

    clip_l = write_clip_l(tmp_path_factory.mktemp("clip-l"))
    model, opts = build_tiny_sdxl(clip_l)
    return model, opts, backend_for(model)


def _glc(model, prompts, width=SIZE, height=SIZE, negative=False):
    from sgm_tiny import Conditioning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.get_learned_conditioning(Conditioning(prompts, width, height, negative))


def test_backend_metadata_and_dispatch(tiny):
    from reneg.a1111_extension.sgm_backend import SgmBackend

    model, _, backend = tiny
    assert isinstance(backend, SgmBackend) and backend.family == "sdxl"
    assert backend.context_dim == 2048 and backend.pooled_dim == 1280
    assert backend.prediction_type == "epsilon" and backend.latent_channels == 4 and backend.vae_scale_factor == 8
    assert backend.alphas_cumprod.dtype == torch.float32 and backend.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(backend.alphas_cumprod, model.alphas_cumprod.float().cpu())
    assert all(not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("height,width,crop", [(64, 64, (0, 0)), (128, 64, (0, 0)), (64, 96, (16, 32))])
def test_size_embedding_equals_the_webuis_vector(tiny, height, width, crop):
    """vector[:, 1280:] of A1111's get_learned_conditioning for this size and crop == the backend's embedding."""
    from reneg.a1111_extension.sgm_backend import SgmBackend

    model, opts, _ = tiny
    opts.sdxl_crop_top, opts.sdxl_crop_left = crop
    try:
        webui = _glc(model, ["a cat", "a dog"], width=width, height=height)["vector"][:, 1280:]
    finally:
        opts.sdxl_crop_top = opts.sdxl_crop_left = 0
    ours = SgmBackend(model, crop=crop).size_embedding(height, width)
    assert ours.shape == (1, 1536)
    torch.testing.assert_close(ours.expand(2, -1), webui, rtol=0, atol=0)
    other = SgmBackend(model).size_embedding(height + 64, width)
    assert (other - ours).abs().max() > 0  # the size is really embedded


@pytest.mark.parametrize("height,width", [(64, 64), (128, 64)])
def test_model_output_is_apply_model_with_the_webuis_cond(tiny, height, width):
    model, _, backend = tiny
    cond = _glc(model, ["a cat", "a red car"], width=width, height=height)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, height // 8, width // 8, generator=g)
    t = torch.tensor([999, 37])
    with torch.no_grad():
        ours = backend.model_output(x, t, pack(cond["crossattn"], cond["vector"][:, :1280]))
        webui = model.apply_model(x, t, cond)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, webui, rtol=0, atol=0)
    # the pooled row is used: changing only it changes the output
    packed = pack(cond["crossattn"], cond["vector"][:, :1280] + 1.0)
    with torch.no_grad():
        assert (backend.model_output(x, t, packed) - ours).abs().max() > 0


def test_encode_prompts_is_the_webuis_conditioning_packed(tiny):
    model, _, backend = tiny
    enc = backend.encode_prompts(["a cat", ""])
    cond = _glc(model, ["a cat", ""])
    assert is_packed(enc) and enc.shape == (2, 78, 2048)
    ctx, pooled = unpack(enc)
    torch.testing.assert_close(ctx, cond["crossattn"], rtol=0, atol=0)
    torch.testing.assert_close(pooled, cond["vector"][:, :1280], rtol=0, atol=0)
    assert (enc[:, -1, 1280:] == 0).all()
    torch.testing.assert_close(backend.encode_prompts_fp32([""]), backend.encode_prompts([""]).float(), rtol=0, atol=0)
    # the null text is the ENCODED empty prompt (core's SDXL rule), not the zeros A1111 samples an empty negative
    # prompt with (force_zero_embeddings)
    zero = _glc(model, [""], negative=True)
    assert (zero["crossattn"] == 0).all() and (zero["vector"][:, :1280] == 0).all()
    assert enc[1].abs().sum() > 0


def test_gradient_reaches_context_and_pooled_only(tiny):
    model, _, backend = tiny
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=g)
    neg = backend.encode_prompts_fp32([""]).clone().requires_grad_(True)
    grads = []
    for checkpointing in (False, True):
        neg.grad = None
        with torch.no_grad(), torch.enable_grad():  # A1111 runs process_batch under no_grad
            if checkpointing:
                with backend.gradient_checkpointing() as wrapped:
                    assert wrapped > 0
                    loss = backend.decode(backend.model_output(x, 400, neg)).square().mean()
            else:
                loss = backend.decode(backend.model_output(x, 400, neg)).square().mean()
            loss.backward()
        grads.append(neg.grad.clone())
    ctx_grad, pooled_grad = unpack(grads[0])
    assert ctx_grad.abs().sum() > 0 and pooled_grad.abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_decode_equals_decode_first_stage_and_is_differentiable(tiny):
    model, _, backend = tiny
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    img = backend.decode(z)
    assert img.shape == (1, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    with torch.no_grad():
        ref = model.decode_first_stage(z)
    torch.testing.assert_close(img, ((ref + 1) / 2).clamp(0, 1))  # z / s here, 1 / s * z there
    img.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_frozen_entries_are_cores_packed_mask(tiny):
    _, _, backend = tiny
    neg = torch.zeros(1, 78, 2048)
    for freeze in (False, True):
        torch.testing.assert_close(backend.frozen_entries(neg, freeze), packed_frozen_entries(neg, freeze))
    with pytest.raises(RenegError, match="pooled"):
        backend.frozen_entries(torch.zeros(1, 77, 2048))


def test_refuses_models_it_cannot_refine(tiny):
    from reneg.a1111_extension.model_adapter import backend_for, check_ldm_model

    model, _, _ = tiny
    refiner_like = SimpleNamespace(
        apply_model=model.apply_model, model=model.model, first_stage_model=model.first_stage_model,
        parameterization="eps", is_sdxl=True,
        conditioner=SimpleNamespace(embedders=[model.conditioner.embedders[1], *model.conditioner.embedders[2:]]))
    with pytest.raises(RenegError, match="SDXL base"):
        backend_for(refiner_like)
    with pytest.raises(RenegError, match="medvram"):
        backend_for(model, SimpleNamespace(lowvram=False, medvram=True))
    with pytest.raises(RenegError, match="SDXL"):
        check_ldm_model(model)  # the SD adapter still refuses SDXL itself
    with pytest.raises(RenegError, match="packed SDXL"):
        backend_for(model).model_output(torch.zeros(1, 4, 8, 8), 10, torch.zeros(1, 77, 2048))


def test_refine_rows_on_sdxl_never_worse_and_rows_apply(tiny):
    """The script's batched refinement on SDXL: packed rows, a 2-chunk prompt cond, the pooled row's padding kept,
    and the stacked rows replace the webui's dict uncond (its size embedding kept)."""
    from reneg.a1111_extension.batch_refine import refine_rows, stack_conds
    from reneg.a1111_extension.library import RefineCache, stack_rows
    from reneg.a1111_extension.uncond import UncondPlan, replace_uncond
    from reneg.core.refine import RefineConfig, refine_batch
    from reneg.core.rewards import build_reward

    model, _, backend = tiny
    # A1111's hijacked text encoders give [1, 77·k, 2048] for prompts over 75 tokens (pooled from the first chunk);
    # sgm's own (in this tiny model) truncate, so a 2-chunk cond is made from two encodings, as the webui joins them
    a, b = backend.encode_prompts(["a cat"]), backend.encode_prompts(["a very detailed photo of a small cat"])
    long = pack(torch.cat([a[:, :77], b[:, :77]], dim=1), a[:, 77, :1280])
    assert long.shape == (1, 155, 2048)
    stacked = stack_conds([a, long], pooled_row=True)
    assert stacked.shape == (2, 155, 2048)
    torch.testing.assert_close(stacked[0, -1], a[0, -1])  # the pooled row stays last
    torch.testing.assert_close(stacked[0, 77:154], a[0, 76:77].expand(77, -1))  # the context is padded
    torch.testing.assert_close(stacked[1], long[0])

    base = pack(torch.randn(1, 77, 2048, generator=torch.Generator().manual_seed(5)) * 0.5,
                torch.randn(1, 1280, generator=torch.Generator().manual_seed(6)))
    config = RefineConfig(max_steps=2, patience=2, lr=5e-2, num_inference_steps=3, guidance_scale=5.0,
                          height=SIZE, width=SIZE)
    reward = build_reward("synthetic")
    (long_result,) = refine_batch(backend, reward, ["2-chunk"], base, [3], config, conds=long)
    assert float(long_result.best_reward) >= float(long_result.start_reward)
    outcome = refine_rows(backend, reward, ["a cat", "a red car"], [1, 2], base, config,
                          key_of=lambda p, s: (p, s), cache=RefineCache())
    assert outcome.calls == 1 and len(outcome.fresh) == 2
    for result in outcome.results:
        assert float(result.best_reward) >= float(result.start_reward)
        assert is_packed(result.best) and (result.best[..., -1, 1280:] == 0).all()
    rows = stack_rows(outcome.rows)
    assert rows.shape == (2, 78, 2048)
    uncond = _glc(model, ["", ""], negative=True)
    out = replace_uncond(uncond, UncondPlan(rows))
    torch.testing.assert_close(out["crossattn"], rows[:, :77])
    torch.testing.assert_close(out["vector"][:, :1280], rows[:, 77, :1280])
    torch.testing.assert_close(out["vector"][:, 1280:], uncond["vector"][:, 1280:], rtol=0, atol=0)


def test_tab_training_on_sdxl_writes_a_two_tensor_file(tiny, tmp_path):
    from safetensors import safe_open

    from reneg.a1111_extension.train_logic import TrainHooks, load_start, run_training
    from reneg.core.embedding_io import load_embedding, save_embedding
    from reneg.core.rewards import build_reward
    from reneg.core.train import TrainConfig

    _, _, backend = tiny
    out = tmp_path / "xl-tab.safetensors"
    config = TrainConfig(steps=2, batch_size=2, micro_batch=1, lr=1e-2, num_inference_steps=3, guidance_scale=5.0,
                         height=SIZE, width=SIZE, seed=0, preview_every=1, save_every=0)
    texts = []
    outcome = run_training(backend, build_reward("synthetic"), ["a red cube", "a blue ball"], config, out,
                           hooks=TrainHooks(set_text=texts.append))
    assert outcome.steps == 2 and len(outcome.images) == 3 and not outcome.stopped
    emb = load_embedding(out)
    assert emb.metadata["family"] == "sdxl" and emb.metadata["status"] == "complete"
    assert emb.context.shape == (1, 77, 2048) and emb.pooled.shape == (1, 1280)
    with safe_open(str(out), "pt") as fh:
        assert sorted(fh.keys()) == ["reneg_negative", "reneg_negative_pooled"]
    start = backend.encode_prompts_fp32([""])
    assert (emb.tensor - start).abs().max() > 0  # it learned
    torch.testing.assert_close(emb.tensor[..., -1, 1280:], start[..., -1, 1280:])  # padding frozen
    # 'Start from' an SDXL file works; an SD1.x file is one clear error in the model's terms
    assert is_packed(load_start("xl-tab", [tmp_path], backend.context_dim, "(empty prompt)"))
    save_embedding(tmp_path / "sd1.safetensors", torch.zeros(1, 77, 768))
    with pytest.raises(RenegError, match="768-wide"):
        load_start("sd1", [tmp_path], backend.context_dim, "(empty prompt)")
    assert any("step 2/2" in t for t in texts)


def test_fp16_vae_nan_is_one_clear_error(tiny):
    from reneg.a1111_extension.sgm_backend import SgmBackend

    model, _, _ = tiny
    backend = SgmBackend(model, vae_dtype=torch.float16)
    backend.vae = SimpleNamespace(decode=lambda z: torch.full((1, 3, 8, 8), float("nan"), dtype=torch.float16))
    with pytest.raises(RenegError, match="--no-half-vae"):
        backend.decode(torch.zeros(1, 4, 1, 1))
