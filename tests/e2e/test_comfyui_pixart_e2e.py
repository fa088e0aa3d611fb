"""PixArt-α in a real ComfyUI 0.3.64 (opt-in: set ``COMFYUI_PATH``; see ``comfy_server.py``).

* ComfyUI's own PixArt transformer given the attended rows only == diffusers' ``PixArtTransformer2DModel`` given the
  120 rows + mask, on tiny-pixart's weights, and the ReNeg adapter on that MODEL == the CLI's ``PixArtBackend``
  (no server; ``comfy_builders.py pixart-checks``).
* A headless server with a tiny random PixArt-α checkpoint that ComfyUI *detects* as PixArt-α (original key
  layout, width 1152 / 16 heads as ``comfy/model_detection.py`` hard-codes, one block; built at test time under
  ``RENEG_E2E_CACHE``) and, as text encoder, the test-only ``ReNegE2ETinyPixArtT5`` node (ComfyUI's PixArt T5
  classes with a tiny config: the real T5-XXL is 4.7B parameters). The probe records what reaches the model.

Run: ``COMFYUI_PATH=… COMFYUI_PYTHON=… RENEG_E2E_CACHE=… python -m pytest tests/e2e/test_comfyui_pixart_e2e.py``
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy_server as cs
from reneg.core.embedding_io import load_embedding

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(cs.skip_reason() is not None, reason=str(cs.skip_reason()))]

RELEASED_DIR = cs.REPO_ROOT.parent / "shared" / "fixtures" / "released"
RELEASED_PIXART = RELEASED_DIR / "pixart-alpha_reneg_emb.bin"
RELEASED_SD15 = RELEASED_DIR / "sd1.5_reneg_emb.bin"
PROMPT = "a watercolor painting of a lighthouse at dawn"
#: Smallest square size ComfyUI's PixArt handles: its sin-cos table uses base size round((H+W)/2 / 64)·64, which
#: is 0 (division by zero) below a 33-wide latent.
SIZE = 320

needs_released = pytest.mark.skipif(not RELEASED_PIXART.is_file(),
                                    reason="released embeddings live in ../shared/fixtures/released")


def test_comfyui_pixart_on_attended_rows_equals_diffusers_with_the_mask():
    args = ["pixart-checks"] + (["--released", str(RELEASED_PIXART)] if RELEASED_PIXART.is_file() else [])
    facts = json.loads(cs.run_helper(*args))
    print(json.dumps(facts, indent=1))
    for name, rows in (("released_negative", 1), ("prompt", 10)):
        f = facts[name]
        assert f["attended_rows"] == rows
        assert f["max_abs_diff"] < 1e-5, f  # same cross-attention: attended rows only == 120 rows + mask
        assert f["all_rows_unmasked_max_abs_diff"] > 1e-3, f  # and handing ComfyUI all 120 rows would not be
    a = facts["adapter"]
    assert a["family"] == "pixart-alpha" and a["context_dim"] == 4096 and a["prediction_type"] == "epsilon"
    assert a["model_output_max_abs_diff"] < 1e-5 and a["decode_max_abs_diff"] < 1e-5, a
    assert a["alphas_max_abs_diff"] < 1e-6, a  # ComfyUI's "sqrt_linear" betas == PixArt's linear betas
    assert a["context_grad_norm"] > 0 and a["masked_rows_grad_max"] == 0.0, a  # masked rows get no gradient
    assert "pixart_sigma" in facts["sigma_error"] and "PixArt-α" in facts["sigma_error"]  # Σ: one clear refusal


# --- the server -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("ckpt"))
    checkpoint = cs.ensure_pixart_checkpoint(cache)
    embeddings = {p.name: p for p in (RELEASED_PIXART, RELEASED_SD15) if p.is_file()}
    srv = cs.ComfyServer(tmp_path_factory.mktemp("comfy_pixart"), checkpoint, embeddings,
                         checkpoint_name=cs.PIXART_CHECKPOINT_NAME).start()
    yield srv
    srv.stop()


def base_graph(tag: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cs.PIXART_CHECKPOINT_NAME}},
        "t5": {"class_type": "ReNegE2ETinyPixArtT5", "inputs": {"seed": 0}},
        "probe": {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": tag}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["t5", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }


def sampler(negative: list, prefix: str, positive: list | None = None) -> dict:
    return {
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["probe", 0], "seed": 1, "steps": 2, "cfg": 4.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": positive or ["pos", 0], "negative": negative,
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save_img": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }


def load_node(embedding: str, strength: float = 1.0) -> dict:
    return {"class_type": "ReNegLoadEmbedding",
            "inputs": {"embedding": embedding, "strength": strength, "clip": ["t5", 0]}}


def probe(server, tag: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(server.output_dir / "reneg_probe" / f"{tag}.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def diffusers_attended_positive(server, prompt: str) -> torch.Tensor:
    """The rows diffusers attends to for ``prompt`` with the same tiny T5 weights: ``PixArtAlphaPipeline``'s
    ``encode_prompt`` (T5 tokenizer padded to 120, T5 run with that mask), then the rows its mask keeps."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    weights = load_file(str(server.output_dir / "reneg_probe" / "tiny_t5.safetensors"))
    cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)
    model = T5EncoderModel(cfg).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}, (missing, unexpected)
    tokenizer = T5TokenizerFast.from_pretrained(str(cs.comfyui_path() / "comfy" / "text_encoders" / "t5_tokenizer"))
    tok = tokenizer([prompt], padding="max_length", max_length=120, truncation=True, add_special_tokens=True,
                    return_tensors="pt")
    with torch.no_grad():
        out = model(tok.input_ids, attention_mask=tok.attention_mask)[0]
    return out[:, tok.attention_mask[0].bool()]


def error_messages(entry: dict) -> list[dict]:
    return [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]


@needs_released
def test_released_file_on_a_detected_pixart_model_reaches_it_as_row_zero(server):
    options = server.get("/object_info")["ReNegLoadEmbedding"]["input"]["required"]["embedding"][1]["options"]
    assert RELEASED_PIXART.name in options
    graph = {**base_graph("px_load"), **sampler(["neg", 0], "px_load"), "neg": load_node(RELEASED_PIXART.name)}
    server.run(graph)
    got, meta = probe(server, "px_load")
    assert meta["model_config"] == "PixArtAlpha"  # ComfyUI detected the checkpoint as PixArt-α
    released = load_embedding(RELEASED_PIXART).tensor
    # the negative the model sees is exactly the released file's attended row (mask [1, 0, ..., 0])
    assert got["negative"].shape == (1, 1, 4096) and torch.equal(got["negative"], released[:, :1])
    assert meta["all_identical"] == "True" and int(meta["calls"]) >= 2
    # the positive is what diffusers attends to with the same T5 weights (ComfyUI's T5 tokenizer does not pad)
    want = diffusers_attended_positive(server, PROMPT)
    assert got["positive"].shape == want.shape, (got["positive"].shape, want.shape)
    assert float((got["positive"].float() - want).abs().max()) < 1e-4


@pytest.mark.skipif(not RELEASED_SD15.is_file(), reason="released embeddings live in ../shared/fixtures/released")
def test_an_sd_file_on_pixart_is_one_node_error(server):
    graph = {**base_graph("px_sd"), **sampler(["neg", 0], "px_sd"), "neg": load_node(RELEASED_SD15.name)}
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "error"
    errors = error_messages(entry)
    assert len(errors) == 1 and errors[0]["node_type"] == "ReNegLoadEmbedding", errors
    text = errors[0]["exception_message"]
    assert "768-wide" in text and "4096" in text and RELEASED_PIXART.name in text, text


@needs_released
def test_refine_and_train_run_on_the_pixart_model(server):
    graph = {**base_graph("px_refine"), "neg": load_node(RELEASED_PIXART.name),
             "reward": {"class_type": "ReNegLoadReward", "inputs": {"reward": "tiny", "weights": "auto", "mix": ""}},
             "refine": {"class_type": "ReNegRefine", "inputs": {
                 "model": ["ckpt", 0], "clip": ["t5", 0], "vae": ["ckpt", 2], "negative": ["neg", 0],
                 "reward": ["reward", 0], "prompt": PROMPT, "seed": 1, "sampling_steps": 2, "cfg": 4.5,
                 "width": SIZE, "height": SIZE, "max_steps": 1, "patience": 1, "lr": 0.05,
                 "latent": ["latent", 0]}},
             "train": {"class_type": "ReNegTrainGlobal", "inputs": {
                 "model": ["ckpt", 0], "clip": ["t5", 0], "vae": ["ckpt", 2], "reward": ["reward", 0],
                 "prompts": "a red car\n" + PROMPT, "prompts_file": "", "steps": 1, "batch_size": 1,
                 "micro_batch": 1, "lr": 0.05, "save_name": "px_train", "if_exists": "restart", "seed": 0,
                 "sampling_steps": 2, "cfg": 4.5, "width": SIZE, "height": SIZE, "save_every": 0,
                 "preview_every": 0}},
             **sampler(["refine", 1], "px_refine", positive=["refine", 0])}
    graph["probe_train"] = {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": "px_train"}}
    graph.update({f"{k}_train": v for k, v in sampler(["train", 0], "px_train").items()})
    graph["ks_train"]["inputs"]["model"] = ["probe_train", 0]
    graph["decode_train"]["inputs"]["samples"] = ["ks_train", 0]
    graph["save_img_train"]["inputs"]["images"] = ["decode_train", 0]
    entry = server.run(graph, timeout=1500)
    trace = json.loads(entry["outputs"]["refine"]["text"][0])
    assert len(trace["trace"]) >= 2 and trace["best_reward"] >= trace["start_reward"], trace
    refined, meta = probe(server, "px_refine")
    assert meta["model_config"] == "PixArtAlpha"
    released = load_embedding(RELEASED_PIXART).tensor
    assert refined["negative"].shape == (1, 1, 4096)  # the refined negative keeps the released mask: one row
    if trace["best_step"] > 0:
        assert not torch.equal(refined["negative"], released[:, :1])
    want = diffusers_attended_positive(server, PROMPT)  # Refine's positive output is CLIP Text Encode's
    assert float((refined["positive"].float() - want).abs().max()) < 1e-4
    saved = load_embedding(server.reneg_dir / "px_train.safetensors")
    assert saved.tensor.shape == (1, 120, 4096) and saved.metadata["family"] == "pixart-alpha"
    assert saved.metadata["attention_mask"] == "1" + "0" * 119  # trained from the empty prompt's row
    assert not saved.tensor[:, 1:].any()  # the masked rows never got a gradient
    trained, _ = probe(server, "px_train")
    assert torch.equal(trained["negative"], saved.tensor[:, :1])


@needs_released
def test_strength_blends_with_comfyuis_empty_prompt_which_is_diffusers_attended_row(server):
    """ComfyUI's CLIP Text Encode "" (PixArt T5) is one row, the row diffusers attends for "" (mask [1,0,...]);
    strength 0 gives it exactly and 0.5 the exact lerp towards the released file's row 0."""
    graph = dict(base_graph("unused"))
    graph["empty"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["t5", 0]}}
    graph["neg0"], graph["neg05"] = load_node(RELEASED_PIXART.name, 0.0), load_node(RELEASED_PIXART.name, 0.5)
    cs.add_probed_samplers(graph, {"px_s0": ["neg0", 0], "px_s05": ["neg05", 0], "px_empty": ["empty", 0]}, sampler)
    server.run(graph)
    s0, s05, empty = (probe(server, tag)[0]["negative"] for tag in ("px_s0", "px_s05", "px_empty"))
    assert empty.shape == (1, 1, 4096) and torch.equal(s0, empty)
    assert float((empty.float() - diffusers_attended_positive(server, "")).abs().max()) < 1e-4
    released = load_embedding(RELEASED_PIXART).tensor[:, :1]
    assert torch.equal(s05, torch.lerp(empty, released, 0.5))


@needs_released
def test_browser_pixart_graph_runs_with_the_released_file_chosen(server):
    """What a user sees: the PixArt graph opened in ComfyUI's real frontend (its API-format loader), the Load
    ReNeg Embedding node showing the released PixArt file, Run pressed, the image shown. Screenshot:
    ``outputs/screenshots/comfyui/20_pixart_after_run.png``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs PyPI playwright for the browser test")
    from test_comfyui_browser import CHROMIUM_ARGS, ComfyPage, chromium_path

    graph = {**base_graph("px_browser"), **sampler(["neg", 0], "px_browser"), "neg": load_node(RELEASED_PIXART.name)}
    pw = sync_api.sync_playwright().start()
    chromium = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
    try:
        comfy = ComfyPage(chromium, server).open()
        comfy.js("async (g) => { await app.loadApiJson(g, 'reneg_pixart'); }", graph)
        comfy.page.wait_for_timeout(800)
        nodes = comfy.nodes()
        load = next(n for n in nodes.values() if n["type"] == "ReNegLoadEmbedding")
        widget = next(w for w in load["widgets"] if w["name"] == "embedding")
        assert widget["value"] == RELEASED_PIXART.name and RELEASED_PIXART.name in widget["options"]["values"]
        comfy.run_and_wait(timeout=900)
        comfy.page.wait_for_timeout(1500)
        comfy.fit_view()
        shot = comfy.screenshot("20_pixart_after_run")
        saved = next(n for n in comfy.nodes().values() if n["type"] == "SaveImage")
        assert saved["images"] >= 1, "the SaveImage node shows no image after the run"
        assert shot.stat().st_size > 10_000
        assert not comfy.unexpected_errors(), comfy.unexpected_errors()
        comfy.close()
    finally:
        chromium.close()
        pw.stop()
    got, _ = probe(server, "px_browser")
    assert torch.equal(got["negative"], load_embedding(RELEASED_PIXART).tensor[:, :1])
