"""The SDXL boundary on ``tiny-xl``: packed context + pooled, the UNet's added conditions, the fp32 VAE, gradients
into both parts, the two-tensor file format (and the old single-tensor files), family checks and loading."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reneg.core.ddim import initial_latents, make_scheduler
from reneg.core.embedding_io import (TENSOR_KEY, check_compatible, describe, family_of, load_embedding,
                                     save_embedding)
from reneg.core.errors import IncompatibleEmbeddingError, MissingWeightsError, RenegError
from reneg.core.model_boundary import frozen_entries
from reneg.core.objective import one_step_images
from reneg.core.sdxl_backend import (POOLED_KEY, SDXLBackend, check_packed, is_packed, is_sdxl_model, pack,
                                     unpack)

PROMPT = "a fox in the snow"


@pytest.fixture(scope="module")
def xl():
    from reneg.core.tiny_sdxl import load_tiny_sdxl_backend

    return load_tiny_sdxl_backend()


def test_pack_unpack_round_trip():
    ctx, pooled = torch.randn(2, 77, 2048), torch.randn(2, 1280)
    packed = pack(ctx, pooled)
    assert packed.shape == (2, 78, 2048) and is_packed(packed)
    assert packed[:, -1, 1280:].abs().max() == 0
    c, p = unpack(packed)
    assert torch.equal(c, ctx) and torch.equal(p, pooled)
    one = pack(ctx[:1], pooled[0])  # a 1-d pooled is one row
    assert one.shape == (1, 78, 2048) and torch.equal(unpack(one)[1], pooled[:1])


def test_encode_prompts_equals_the_pipelines_encode_prompt(xl):
    packed = torch.cat([xl.encode_prompts([PROMPT]), xl.encode_prompts([""])])  # one prompt at a time, as it does
    assert packed.shape == (2, 78, 2048)
    emb, neg, pooled, neg_pooled = xl.pipeline().encode_prompt(
        PROMPT, do_classifier_free_guidance=True, negative_prompt="")
    ctx, pool = unpack(packed)
    assert torch.equal(ctx[:1], emb) and torch.equal(pool[:1], pooled)
    assert torch.equal(ctx[1:], neg) and torch.equal(pool[1:], neg_pooled)
    assert torch.equal(xl.encode_prompts_fp32([PROMPT]), packed[:1])  # fp32 model: the same numbers


def test_model_output_is_the_unet_with_added_cond_kwargs(xl):
    lat = initial_latents(xl, 2, 64, 48, 0)
    packed = xl.encode_prompts([PROMPT, "a cat"])
    pipe = xl.pipeline()
    time_ids = pipe._get_add_time_ids((64, 48), (0, 0), (64, 48), dtype=torch.float32,
                                      text_encoder_projection_dim=1280).repeat(2, 1)
    assert torch.equal(xl.time_ids(lat), time_ids)
    ctx, pooled = unpack(packed)
    ref = xl.unet(lat, 501, encoder_hidden_states=ctx.contiguous(),
                  added_cond_kwargs={"text_embeds": pooled.contiguous(), "time_ids": time_ids}).sample
    assert torch.equal(xl.model_output(lat, 501, packed), ref)
    # the pooled part matters: another pooled row changes the output
    other = pack(ctx, torch.zeros_like(pooled))
    assert (xl.model_output(lat, 501, other) - ref).abs().max() > 1e-4
    with pytest.raises(IncompatibleEmbeddingError, match="pooled"):
        xl.model_output(lat, 501, ctx)


def test_gradient_reaches_context_and_pooled_but_not_the_padding(xl):
    sched = make_scheduler(xl)
    neg = torch.nn.Parameter(xl.encode_prompts_fp32([""]))
    lat = initial_latents(xl, 1, 64, 64, 1)
    images = one_step_images(xl, lat, 2, xl.encode_prompts([PROMPT]), neg, 3, 5.0, sched)
    images.mean().backward()
    g = neg.grad[0]
    assert g[:77].abs().max() > 0 and g[77, :1280].abs().max() > 0
    assert g[77, 1280:].abs().max() == 0


def test_frozen_entries(xl, tiny_backend):
    neg = xl.encode_prompts_fp32([""])
    learned = frozen_entries(xl, neg)
    assert learned.shape == neg.shape and learned.sum() == 768 and learned[0, 77, 1280:].all()
    frozen = frozen_entries(xl, neg, freeze_pooled=True)
    assert frozen.sum() == 2048 and frozen[0, 77].all() and not frozen[0, :77].any()
    assert frozen_entries(tiny_backend, torch.zeros(1, 77, 768)) is None
    with pytest.raises(RenegError, match="SDXL models only"):
        frozen_entries(tiny_backend, torch.zeros(1, 77, 768), freeze_pooled=True)


def test_vae_stays_fp32_under_fp16_and_decodes_finite():
    from reneg.core.tiny_sdxl import load_tiny_sdxl_backend

    half = load_tiny_sdxl_backend(fresh=True).to(dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.text_encoder_2.dtype == torch.float16
    assert half.vae.dtype == torch.float32  # force_upcast, as StableDiffusionXLPipeline decodes
    image = half.decode(torch.randn(1, 4, 8, 8, dtype=torch.float16) * 30)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the VAE still decodes in fp32
        assert half.decode(torch.randn(1, 4, 8, 8) * 30).dtype == torch.float32


# ------------------------------------------------------------------------------------------------- file format
def test_file_stores_both_tensors_and_the_family(xl, tmp_path):
    neg = xl.encode_prompts_fp32(["blurry"])
    path = save_embedding(tmp_path / "xl.safetensors", neg, base_model="tiny-xl")
    with safe_open(str(path), "pt") as fh:
        shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
        meta = fh.metadata()
    assert shapes == {TENSOR_KEY: [1, 77, 2048], POOLED_KEY: [1, 1280]}
    assert meta["family"] == "sdxl" and meta["tokens"] == "77" and meta["context_dim"] == "2048"
    assert meta["pooled_dim"] == "1280"
    emb = load_embedding(path)
    assert torch.equal(emb.tensor, neg) and emb.family == "sdxl" and emb.tokens == 77
    assert emb.context.shape == (1, 77, 2048) and emb.pooled.shape == (1, 1280)
    facts = describe(path)
    assert facts["shape"] == [1, 77, 2048] and facts["pooled_shape"] == [1, 1280] and facts["family"] == "sdxl"
    # re-saving a loaded pair keeps it (metadata recomputed, not copied)
    again = load_embedding(save_embedding(tmp_path / "again.safetensors", emb))
    assert torch.equal(again.tensor, neg) and again.metadata["family"] == "sdxl"


def test_single_tensor_files_still_load(released_dir, tmp_path):
    sd15 = load_embedding(released_dir / "sd1.5_reneg_emb.bin")
    assert sd15.tensor.shape == (1, 77, 768) and sd15.pooled is None and sd15.context is sd15.tensor
    assert sd15.family == "sd1"
    plain = tmp_path / "plain.safetensors"
    save_file({"emb": sd15.tensor}, str(plain))
    assert torch.equal(load_embedding(plain).tensor, sd15.tensor)
    ours = load_embedding(save_embedding(tmp_path / "ours.safetensors", sd15))
    assert torch.equal(ours.tensor, sd15.tensor) and ours.metadata["family"] == "sd1"
    assert "pooled_dim" not in ours.metadata and "pooled_shape" not in describe(tmp_path / "ours.safetensors")
    assert family_of(2048) == ("sdxl", "CLIP-L + OpenCLIP bigG (SDXL)")


def test_broken_sdxl_files_are_one_clear_error(tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({TENSOR_KEY: torch.zeros(1, 77, 2048), POOLED_KEY: torch.zeros(1, 1024)}, str(wrong))
    with pytest.raises(RenegError, match=r"\[1,1280\] pooled"):
        load_embedding(wrong)
    no_pooled = tmp_path / "no_pooled.safetensors"
    save_file({TENSOR_KEY: torch.zeros(1, 77, 2048)}, str(no_pooled),
              metadata={"format": "reneg-negative-embedding", "family": "sdxl"})
    with pytest.raises(RenegError, match="no pooled embedding"):
        load_embedding(no_pooled)
    nan = tmp_path / "nan.safetensors"
    save_file({TENSOR_KEY: torch.zeros(1, 77, 2048), POOLED_KEY: torch.full((1, 1280), float("nan"))}, str(nan))
    with pytest.raises(RenegError, match="NaN"):
        load_embedding(nan)


def test_family_checks_by_text_encoder_width(xl, released_dir):
    sd15 = load_embedding(released_dir / "sd1.5_reneg_emb.bin").tensor
    with pytest.raises(IncompatibleEmbeddingError, match="768-wide.*expects 2048-wide.*SDXL negative"):
        check_compatible(sd15, xl.context_dim)
    pair = xl.encode_prompts_fp32([""])
    with pytest.raises(IncompatibleEmbeddingError, match="2048-wide.*expects 768-wide.*SDXL model or fine-tune"):
        check_compatible(pair, 768)
    with pytest.raises(IncompatibleEmbeddingError, match="not the pooled"):
        check_compatible(pair[:, :77], xl.context_dim)
    check_compatible(pair, xl.context_dim)
    check_packed(pair)


def test_refiner_shaped_models_are_refused():
    from reneg.core.tiny_sdxl import tiny_sdxl_components
    from transformers import CLIPTextModel

    from reneg.core.tiny_sdxl import _clip_config

    parts = tiny_sdxl_components()
    parts["text_encoder"] = CLIPTextModel(_clip_config(1024, 1024))  # 1024 + 1280: not SDXL's text encoders
    with pytest.raises(RenegError, match="not an SDXL base-type model"):
        SDXLBackend(**parts)


# ---------------------------------------------------------------------------------------------------- loading
def test_diffusers_folder_loads_as_sdxl(xl, tmp_path):
    from reneg.core.diffusers_backend import load_backend
    from reneg.core.tiny_sdxl import save_tiny_sdxl_pipeline

    folder = save_tiny_sdxl_pipeline(tmp_path / "xl")
    assert is_sdxl_model(str(folder)) and is_sdxl_model("tiny-xl")
    loaded = load_backend(str(folder))
    assert isinstance(loaded, SDXLBackend) and loaded.name == str(folder)
    lat = initial_latents(xl, 1, 64, 64, 0)
    packed = xl.encode_prompts([PROMPT])
    assert torch.equal(loaded.encode_prompts([PROMPT]), packed)
    assert torch.equal(loaded.model_output(lat, 300, packed), xl.model_output(lat, 300, packed))


@pytest.mark.parametrize("kind", ["hub-id", "single-file"])
def test_offline_sdxl_loading_is_one_clear_error(tmp_path, monkeypatch, kind):
    from reneg.core.diffusers_backend import load_backend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RENEG_SDXL_CONFIG", raising=False)
    if kind == "hub-id":
        model = "someone/not-cached-xl-model"
    else:  # an original-layout SDXL checkpoint's keys (diffusers needs the base configs to convert it)
        model = str(tmp_path / "xl.safetensors")
        save_file({"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(4),
                   "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, model)
    assert is_sdxl_model(model)
    with pytest.raises(MissingWeightsError) as raised:
        load_backend(model)
    msg = str(raised.value)
    assert msg.startswith(f"Could not load SDXL model '{model}'") and "--model tiny-xl" in msg
    if kind == "single-file":
        assert "RENEG_SDXL_CONFIG" in msg and "stabilityai/stable-diffusion-xl-base-1.0" in msg


def test_sd_names_are_not_taken_for_sdxl(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from reneg.core.tiny_models import save_tiny_pipeline

    assert not is_sdxl_model("tiny") and not is_sdxl_model("tiny-pixart")
    assert not is_sdxl_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert not is_sdxl_model("PixArt-alpha/PixArt-XL-2-512x512")
    assert not is_sdxl_model("someone/flexlora-v1")  # "xl" inside a word is no SDXL name
    assert is_sdxl_model("someone/my-sdxl-finetune") and is_sdxl_model("someone/animagine-xl-3.1")
    assert not is_sdxl_model(str(save_tiny_pipeline("tiny", tmp_path / "sd")))
    sd_file = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(sd_file))
    assert not is_sdxl_model(str(sd_file))


def test_info_and_convert_keep_the_pair(tmp_path, capsys):
    import json

    from reneg.core.cli import main

    gen = torch.Generator().manual_seed(0)
    pair = pack(torch.randn(1, 77, 2048, generator=gen), torch.randn(1, 1280, generator=gen))
    src = save_embedding(tmp_path / "src.safetensors", pair, base_model="some SDXL fine-tune")
    capsys.readouterr()
    assert main(["info", str(src)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "sdxl" and facts["shape"] == [1, 77, 2048] and facts["pooled_shape"] == [1, 1280]
    dst = tmp_path / "dst.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    assert "[1, 77, 2048] + pooled [1, 1280] (sdxl)" in capsys.readouterr().out
    converted = load_embedding(dst)
    assert torch.equal(converted.tensor, pair) and converted.metadata["source_file"] == "src.safetensors"

