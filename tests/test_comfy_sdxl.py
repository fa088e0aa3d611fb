"""SDXL in the ComfyUI pack without ComfyUI: the CONDITIONING <-> packed-negative translation, what Load ReNeg
Embedding does with an SDXL file (both parts, strength on both, family errors), Save's two-tensor file and Refine's
negative/positive rows. The UNet-level proof (ComfyUI's own SDXL model, its ``y`` from the file's pooled) is
tests/e2e/test_comfyui_sdxl_e2e.py."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from reneg.comfy_nodes import embedding_run, refine_run
from reneg.comfy_nodes.conditioning import apply_strength
from reneg.comfy_nodes.sdxl import conditioning_of, packed_of
from reneg.core.embedding_io import load_embedding, save_embedding
from reneg.core.errors import IncompatibleEmbeddingError, RenegError
from reneg.core.sdxl_backend import POOLED_KEY, pack, unpack


def pair(seed: int = 0, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 77, 2048, generator=g), torch.randn(batch, 1280, generator=g)


def sdxl_file(tmp_path, seed: int = 0):
    context, pooled = pair(seed)
    return save_embedding(tmp_path / f"xl{seed}.safetensors", pack(context, pooled)), context, pooled


def test_conditioning_round_trip_keeps_context_and_pooled_exactly():
    context, pooled = pair(1, batch=2)
    packed = packed_of(context, pooled, "negative")
    assert packed.shape == (2, 78, 2048) and torch.equal(packed[:, 77, 1280:], torch.zeros(2, 768))
    cond = conditioning_of(packed)
    assert len(cond) == 1 and torch.equal(cond[0][0], context) and torch.equal(cond[0][1]["pooled_output"], pooled)


def test_packed_of_uses_the_first_chunk_and_broadcasts_one_pooled():
    context, pooled = pair(2)
    long = torch.cat([context, torch.randn(1, 77, 2048)], dim=1)  # a two-chunk prompt
    packed = packed_of(long.expand(3, -1, -1), pooled, "positive")
    assert packed.shape == (3, 78, 2048)
    ctx, pool = unpack(packed)
    assert torch.equal(ctx, context.expand(3, -1, -1)) and torch.equal(pool, pooled.expand(3, -1))


@pytest.mark.parametrize("pooled", [None, torch.zeros(1, 2048), torch.zeros(2, 1280)])
def test_packed_of_without_a_usable_pooled_output_is_one_clear_error(pooled):
    with pytest.raises(RenegError, match="pooled_output"):
        packed_of(torch.zeros(3, 77, 2048), pooled, "negative")


def test_packed_of_refuses_a_non_sdxl_conditioning():
    with pytest.raises(RenegError, match="2048"):
        packed_of(torch.zeros(1, 77, 768), torch.zeros(1, 1280), "negative")


def test_load_for_an_sdxl_clip_gives_both_parts_of_the_file(tmp_path):
    path, context, pooled = sdxl_file(tmp_path)
    packed = embedding_run.load_for_clip(path, path.name, 2048, {})
    cond = conditioning_of(packed)
    assert torch.equal(cond[0][0], context) and torch.equal(cond[0][1]["pooled_output"], pooled)


def test_strength_blends_context_and_pooled_with_the_empty_prompt(tmp_path):
    path, context, pooled = sdxl_file(tmp_path)
    null_ctx, null_pool = pair(9)
    null = packed_of(null_ctx, null_pool, "The CLIP input")
    packed = embedding_run.load_for_clip(path, path.name, 2048, {})
    for strength in (0.0, 0.5, 1.0):
        cond = conditioning_of(apply_strength(packed, null, strength))
        assert torch.allclose(cond[0][0], null_ctx + strength * (context - null_ctx), atol=1e-6)
        assert torch.allclose(cond[0][1]["pooled_output"], null_pool + strength * (pooled - null_pool), atol=1e-6)


@pytest.mark.parametrize("width,family", [(768, "SD1"), (1024, "SD2")])
def test_an_sdxl_file_with_an_sd_clip_is_one_family_error(tmp_path, width, family):
    path, _, _ = sdxl_file(tmp_path)
    with pytest.raises(IncompatibleEmbeddingError) as exc:
        embedding_run.load_for_clip(path, path.name, width, {})
    assert "SDXL" in str(exc.value) and family in str(exc.value) and path.name in str(exc.value)
    assert "not yet" not in str(exc.value)


def test_an_sd1_file_with_an_sdxl_clip_is_one_family_error(tmp_path):
    path = save_embedding(tmp_path / "sd1.safetensors", torch.randn(1, 77, 768))
    with pytest.raises(IncompatibleEmbeddingError) as exc:
        embedding_run.load_for_clip(path, path.name, 2048, {})
    assert "SD1" in str(exc.value) and "SDXL" in str(exc.value)


def test_a_context_only_2048_file_is_refused_for_lack_of_its_pooled_part(tmp_path):
    path = save_embedding(tmp_path / "ctx.safetensors", torch.randn(1, 77, 2048))
    with pytest.raises(RenegError, match="pooled"):  # the core loader: family sdxl without the pooled tensor
        embedding_run.load_for_clip(path, path.name, 2048, {})


def test_save_writes_the_two_tensor_sdxl_file(tmp_path):
    context, pooled = pair(3)
    cond = conditioning_of(pack(context, pooled))
    packed = packed_of(cond[0][0], cond[0][1]["pooled_output"], "Save ReNeg Embedding")
    path = embedding_run.save_new(tmp_path, "xl", packed, created_by="reneg-comfyui")
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) >= {POOLED_KEY} and len(list(f.keys())) == 2
        assert f.metadata()["family"] == "sdxl"
    emb = load_embedding(path)
    assert torch.equal(emb.context, context) and torch.equal(emb.pooled, pooled)


def test_refine_rows_carry_the_sdxl_pair_in_and_out():
    context, pooled = pair(4)
    init = refine_run.negative_rows([[context, {"pooled_output": pooled}]], 2)
    assert torch.equal(init, pack(context, pooled))
    best = torch.cat([pack(*pair(5)), pack(*pair(6))])
    out = refine_run.pack_rows(best, [[context, {"pooled_output": pooled}]])
    assert torch.equal(out[0][0], best[:, :77]) and torch.equal(out[0][1]["pooled_output"], best[:, 77, :1280])
    with pytest.raises(RenegError, match="pooled_output"):
        refine_run.negative_rows([[context, {}]], 1)


def test_refine_with_an_sdxl_negative_and_an_sd_clip_is_the_family_error():
    context, pooled = pair(7)
    positive = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
    with pytest.raises(IncompatibleEmbeddingError) as exc:  # before any model is touched
        refine_run.refine_conditioning(None, None, [positive], [[context, {"pooled_output": pooled}]], None,
                                       prompts=["a cat"])
    assert "2048-wide" in str(exc.value) and "768-wide" in str(exc.value) and "SDXL" in str(exc.value)
