"""PixArt-α in the ComfyUI pack without ComfyUI: what Load ReNeg Embedding hands the KSampler (the attended rows),
the engine's 120-row form of ComfyUI conditionings, saving, and the family errors. The transformer-level proof
(ComfyUI's PixArt on the attended rows == diffusers with the mask) is tests/e2e/test_comfyui_pixart_e2e.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reneg.comfy_nodes import embedding_run
from reneg.comfy_nodes.pixart import attended_batch, attended_rows, full_rows, mask_from_metadata
from reneg.core.embedding_io import load_embedding, save_embedding
from reneg.core.errors import IncompatibleEmbeddingError, RenegError
from reneg.core.pixart_backend import attention_mask_of

RELEASED = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "released" / "pixart-alpha_reneg_emb.bin"


def released_layout(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(1, 1, 4096, generator=g), torch.randn(1, 1, 4096, generator=g).expand(1, 119, 4096)], 1)


@pytest.mark.skipif(not RELEASED.is_file(), reason="released embeddings live in ../shared/fixtures/released")
def test_released_file_becomes_its_row_zero_for_comfyui(tmp_path):
    emb = load_embedding(RELEASED)
    assert emb.metadata.get("attention_mask") is None  # the authors' file: no metadata -> the empty prompt's mask
    got = embedding_run.load_for_clip(RELEASED, RELEASED.name, 4096, {})
    assert got.shape == (1, 1, 4096) and torch.equal(got, emb.tensor[:, :1])


def test_metadata_mask_decides_which_rows_are_attended(tmp_path):
    tensor = torch.randn(1, 120, 4096)  # all rows distinct: the in-band rule alone would attend all 120
    path = save_embedding(tmp_path / "three.safetensors", tensor * (torch.arange(120) < 3)[None, :, None])
    assert load_embedding(path).metadata["attention_mask"] == "111" + "0" * 117
    got = embedding_run.load_for_clip(path, path.name, 4096, {})
    assert torch.equal(got, tensor[:, :3])
    meta_only = attended_rows(tensor, {"attention_mask": "1" * 5 + "0" * 115})
    assert torch.equal(meta_only, tensor[:, :5])
    with pytest.raises(RenegError, match="does not fit its 120 rows"):
        mask_from_metadata({"attention_mask": "11"}, 120)


def test_family_mismatch_is_one_error_naming_both_families(tmp_path):
    sd = save_embedding(tmp_path / "sd.safetensors", torch.randn(1, 77, 768))
    with pytest.raises(IncompatibleEmbeddingError) as err:  # a 768 file with PixArt's T5
        embedding_run.load_for_clip(sd, sd.name, 4096, {})
    assert "768-wide" in str(err.value) and "4096" in str(err.value)
    px = save_embedding(tmp_path / "px.safetensors", released_layout())
    with pytest.raises(IncompatibleEmbeddingError) as err:  # a PixArt file with an SD1.x CLIP
        embedding_run.load_for_clip(px, px.name, 768, {})
    assert "PixArt" in str(err.value) and "768" in str(err.value)


def test_full_rows_carries_the_mask_in_band_and_round_trips():
    prompt = torch.randn(2, 7, 4096)  # ComfyUI's T5: a prompt's own tokens, unpadded
    full = full_rows(prompt, "positive")
    assert full.shape == (2, 120, 4096) and torch.equal(full[:, :7], prompt) and not full[:, 7:].any()
    assert attention_mask_of(full)[:, :7].all() and not attention_mask_of(full)[:, 7:].any()
    assert torch.equal(attended_batch(full), prompt)
    one = full_rows(released_layout()[:, :1], "negative")  # the Load node's [1,1,4096] back into the engine
    assert attention_mask_of(one)[0].tolist() == [True] + [False] * 119
    assert full_rows(torch.randn(1, 130, 4096), "long").shape == (1, 120, 4096)  # diffusers truncates to 120
    with pytest.raises(RenegError, match="T5-XXL"):
        full_rows(torch.randn(1, 77, 768), "negative")


def test_save_pads_a_comfyui_pixart_conditioning_to_the_cli_form(tmp_path):
    rows = released_layout()[:, :1]
    path = embedding_run.save_new(tmp_path, "px", rows)
    emb = load_embedding(path)
    assert emb.tensor.shape == (1, 120, 4096) and emb.metadata["family"] == "pixart-alpha"
    assert emb.metadata["attention_mask"] == "1" + "0" * 119
    assert torch.equal(embedding_run.load_for_clip(path, path.name, 4096, {}), rows)  # Save -> Load is lossless


def test_refine_with_a_pixart_negative_on_an_sd_model_is_the_family_error():
    from reneg.comfy_nodes import refine_run

    positive = [[[torch.randn(1, 77, 768), {"pooled_output": None}]]]
    negative = [[released_layout()[:, :1], {"pooled_output": None}]]  # what Load gives for the released file
    with pytest.raises(IncompatibleEmbeddingError) as err:
        refine_run.refine_conditioning(None, None, positive, negative, None, prompts=["a cat"])
    assert "4096-wide" in str(err.value) and "PixArt" in str(err.value) and "768" in str(err.value)
