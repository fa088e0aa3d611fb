"""SDXL end-to-end in a real ComfyUI (opt-in: ``COMFYUI_PATH``; see ``comfy_server.py``).

The server gets this pack, the probe pack (``probe_node.py``) and a random-weight checkpoint ComfyUI
detects as SDXL-family (``comfy_sdxl_builders.py``: KOALA-700M's detection keys, ``model_base.SDXL``); the text
encoders are the probe pack's tiny SDXL CLIP (ComfyUI's own SDXL tokenizer/encoder classes, small config).
Shown: Load ReNeg Embedding -> KSampler feeds the file's context as the uncond cross-attention and ComfyUI's
uncond ``y`` is the file's pooled + ComfyUI's size embedding; strength blends both parts with the empty prompt;
family mismatches are one node error; Refine and Train Global run on the SDXL MODEL and save SDXL two-tensor files;
a latent batch is refined row by row (context and pooled per row).

Run: ``RENEG_E2E_CACHE=/tmp/x COMFYUI_PATH=... COMFYUI_PYTHON=... pytest tests/e2e/test_comfyui_sdxl_e2e.py``
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import comfy_server as cs
from reneg.core.embedding_io import load_embedding, save_embedding
from reneg.core.sdxl_backend import POOLED_KEY, pack

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(cs.skip_reason() is not None, reason=str(cs.skip_reason()))]

CHECKPOINT = "reneg_tiny_sdxl.safetensors"
#: Bump when comfy_sdxl_builders.build_sdxl_checkpoint changes.
CHECKPOINT_VERSION = "1"
PROMPT = "a watercolor painting of a lighthouse at dawn"
SIZE = 64
SAMPLING_STEPS = 4


def ensure_sdxl_checkpoint(cache: Path) -> Path:
    path = cache / f"sdxl-v{CHECKPOINT_VERSION}" / CHECKPOINT
    if not path.is_file():
        env = {**os.environ, "COMFYUI_PATH": str(cs.comfyui_path())}
        proc = subprocess.run([cs.comfyui_python(), str(cs.HERE / "comfy_sdxl_builders.py"), "checkpoint", str(path)],
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("ckpt"))
    checkpoint = ensure_sdxl_checkpoint(cache)
    emb_dir = tmp_path_factory.mktemp("emb")
    g = torch.Generator().manual_seed(3)
    pair = pack(torch.randn(1, 77, 2048, generator=g) * 0.5, torch.randn(1, 1280, generator=g) * 0.5)
    embeddings = {"e2e_xl.safetensors": save_embedding(emb_dir / "e2e_xl.safetensors", pair, note="e2e"),
                  "e2e_sd1.safetensors": save_embedding(emb_dir / "e2e_sd1.safetensors", torch.randn(1, 77, 768))}
    srv = cs.ComfyServer(tmp_path_factory.mktemp("comfy_base"), checkpoint, embeddings)
    ckpts = srv.base / "models" / "checkpoints"
    (ckpts / cs.CHECKPOINT_NAME).rename(ckpts / CHECKPOINT)
    srv.start()
    yield srv
    srv.stop()


# --- graph pieces ---------------------------------------------------------------------------------------------
def base_graph(tag: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "clip": {"class_type": "ReNegE2ETinySDXLClip", "inputs": {"seed": 0}},
        "probe": {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": tag}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["clip", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["probe", 0], "seed": 1, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save_img": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": tag}},
    }


def load_node(embedding: str, strength: float = 1.0) -> dict:
    return {"class_type": "ReNegLoadEmbedding",
            "inputs": {"embedding": embedding, "strength": strength, "clip": ["clip", 0]}}


def reward_node() -> dict:
    return {"class_type": "ReNegLoadReward", "inputs": {"reward": "tiny", "weights": "auto", "mix": ""}}


def probe(server, tag: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(server.output_dir / "reneg_probe" / f"{tag}.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def size_embedding(height: int, width: int) -> torch.Tensor:
    """diffusers' SDXL ``add_time_ids`` embedding (Timesteps(256, flip_sin_to_cos=True, shift 0)) of
    ``(H, W, 0, 0, H, W)``: what ``StableDiffusionXLPipeline`` and the CLI's backend add to the pooled part."""
    from diffusers.models.embeddings import get_timestep_embedding

    ids = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)
    return get_timestep_embedding(ids, 256, flip_sin_to_cos=True, downscale_freq_shift=0).reshape(1, -1)


def saved_path(entry: dict, node: str) -> Path:
    return Path(entry["outputs"][node]["text"][0])


def two_tensor_keys(path: Path) -> tuple[set, dict]:
    with safe_open(str(path), "pt") as fh:
        return set(fh.keys()), fh.metadata()


# --- tests ------------------------------------------------------------------------------------------------------
def test_load_to_ksampler_feeds_the_files_context_and_pooled_as_comfyuis_uncond(server):
    server.run({**base_graph("xl_load"), "neg": load_node("e2e_xl.safetensors")})
    got, meta = probe(server, "xl_load")
    assert meta["model_base"] == "SDXL" and meta["model_config"] == "KOALA_700M"  # ComfyUI's own SDXL detection
    emb = load_embedding(server.reneg_dir / "e2e_xl.safetensors")
    assert torch.equal(got["negative"].float(), emb.context)
    y = got["negative_y"].float()
    assert y.shape == (1, 2816)
    assert torch.equal(y[:, :1280], emb.pooled)  # ComfyUI's uncond y: the file's pooled ...
    size = size_embedding(SIZE, SIZE)  # ... + the size/crop embedding diffusers' pipeline (and the CLI) use
    assert torch.allclose(y[:, 1280:], size, atol=1e-5), (y[:, 1280:] - size).abs().max()
    assert torch.equal(got["positive_y"][:, 1280:], got["negative_y"][:, 1280:])


def test_strength_blends_context_and_pooled_with_the_clip_empty_prompt(server):
    server.run({**base_graph("xl_s0"), "neg": load_node("e2e_xl.safetensors", 0.0)})
    server.run({**base_graph("xl_s05"), "neg": load_node("e2e_xl.safetensors", 0.5)})
    null, _ = probe(server, "xl_s0")
    half, _ = probe(server, "xl_s05")
    emb = load_embedding(server.reneg_dir / "e2e_xl.safetensors")
    null_pooled = null["negative_y"][:, :1280].float()
    assert not torch.allclose(null["negative"].float(), emb.context)
    assert torch.allclose(half["negative"].float(), torch.lerp(null["negative"].float(), emb.context, 0.5), atol=1e-5)
    assert torch.allclose(half["negative_y"][:, :1280].float(), torch.lerp(null_pooled, emb.pooled, 0.5), atol=1e-5)


def test_family_mismatches_are_one_clear_node_error(server):
    entry = server.wait(server.queue({**base_graph("xl_sd1"), "neg": load_node("e2e_sd1.safetensors")}))
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and len(errors) == 1, entry["status"]
    assert errors[0]["node_type"] == "ReNegLoadEmbedding"
    message = errors[0]["exception_message"]
    assert "768-wide" in message and "SDXL" in message and "not yet" not in message


def test_refine_and_train_on_the_sdxl_model_save_two_tensor_files(server):
    tag = "xl_refine"
    graph = {**base_graph(tag), "neg0": load_node("e2e_xl.safetensors"), "reward": reward_node(),
             "refine": {"class_type": "ReNegRefine", "inputs": {
                 "model": ["ckpt", 0], "clip": ["clip", 0], "vae": ["ckpt", 2], "negative": ["neg0", 0],
                 "reward": ["reward", 0], "prompt": PROMPT, "seed": 5, "sampling_steps": SAMPLING_STEPS,
                 "cfg": 7.5, "width": SIZE, "height": SIZE, "max_steps": 2, "patience": 3, "lr": 0.05}},
             "save_neg": {"class_type": "ReNegSaveEmbedding",
                          "inputs": {"conditioning": ["refine", 1], "filename_prefix": "e2e_xl_refined"}},
             "train": {"class_type": "ReNegTrainGlobal", "inputs": {
                 "model": ["ckpt", 0], "clip": ["clip", 0], "vae": ["ckpt", 2], "reward": ["reward", 0],
                 "prompts": "a cat on a sofa\na red car", "prompts_file": "", "steps": 2, "batch_size": 2,
                 "micro_batch": 1, "lr": 0.05, "save_name": "e2e_xl_train", "if_exists": "restart", "seed": 0,
                 "sampling_steps": SAMPLING_STEPS, "cfg": 7.5, "width": SIZE, "height": SIZE, "save_every": 0,
                 "preview_every": 0}},
             "save_trained": {"class_type": "ReNegSaveEmbedding",
                              "inputs": {"conditioning": ["train", 0], "filename_prefix": "e2e_xl_trained"}}}
    graph["ks"]["inputs"].update(positive=["refine", 0], negative=["refine", 1])
    entry = server.run(graph, timeout=1200)
    report = json.loads(entry["outputs"]["refine"]["text"][0])
    assert len(report["trace"]) >= 2 and all(math.isfinite(x) for x in report["trace"])
    assert report["best_reward"] >= report["trace"][0]

    refined_path = saved_path(entry, "save_neg")
    keys, meta = two_tensor_keys(refined_path)
    assert POOLED_KEY in keys and len(keys) == 2 and meta["family"] == "sdxl"
    refined = load_embedding(refined_path)
    got, _ = probe(server, tag)
    assert torch.equal(got["negative"].float(), refined.context)  # the KSampler got the refined pair
    assert torch.equal(got["negative_y"][:, :1280].float(), refined.pooled)
    start = load_embedding(server.reneg_dir / "e2e_xl.safetensors")
    assert (report["best_step"] == 0) == torch.equal(refined.tensor, start.tensor)

    trained_file = server.reneg_dir / "e2e_xl_train.safetensors"
    keys, meta = two_tensor_keys(trained_file)
    assert POOLED_KEY in keys and meta["family"] == "sdxl" and meta["status"] == "complete" and meta["steps"] == "2"
    trained = load_embedding(trained_file)
    assert torch.isfinite(trained.tensor).all()
    assert torch.equal(load_embedding(saved_path(entry, "save_trained")).tensor, trained.tensor)


def test_refine_a_latent_batch_on_sdxl_gives_each_row_its_own_context_and_pooled(server):
    """A latent batch of two, one prompt per line, on the SDXL MODEL: row i of the KSampler's uncond is row i's
    refined context, row i of its uncond ``y`` is row i's refined pooled + ComfyUI's size embedding, row i of the
    positive is CLIP Text Encode of line i; Save writes one two-tensor file per row."""
    tag = "xl_refine_batch"
    prompts = ["a red car on a bridge", PROMPT]
    graph = {**base_graph(tag), "neg0": load_node("e2e_xl.safetensors"), "reward": reward_node(),
             "refine": {"class_type": "ReNegRefine", "inputs": {
                 "model": ["ckpt", 0], "clip": ["clip", 0], "vae": ["ckpt", 2], "negative": ["neg0", 0],
                 "reward": ["reward", 0], "prompt": "\n".join(prompts), "seed": 5, "sampling_steps": SAMPLING_STEPS,
                 "cfg": 7.5, "width": SIZE, "height": SIZE, "max_steps": 2, "patience": 3, "lr": 0.05,
                 "latent": ["latent", 0]}},
             "save_neg": {"class_type": "ReNegSaveEmbedding",
                          "inputs": {"conditioning": ["refine", 1], "filename_prefix": "e2e_xl_refined_batch"}}}
    graph["latent"]["inputs"]["batch_size"] = 2
    graph["ks"]["inputs"].update(positive=["refine", 0], negative=["refine", 1])
    cs.add_reference_rows(graph, tag, prompts, ["clip", 0], ["neg0", 0], SIZE)  # reference: CLIP Text Encode of each line, sampled alone
    entry = server.run(graph, timeout=1200)
    report = json.loads(entry["outputs"]["refine"]["text"][0])
    assert len(report["rows"]) == 2
    for row in report["rows"]:
        assert row["best_reward"] >= row["trace"][0] and all(math.isfinite(x) for x in row["trace"])
    saved = [Path(p) for p in entry["outputs"]["save_neg"]["text"][0].splitlines()]
    assert len(saved) == 2
    refined = [load_embedding(p) for p in saved]
    assert all(r.metadata["family"] == "sdxl" and r.pooled is not None for r in refined)
    got, _ = probe(server, tag)
    assert got["negative_rows"].shape == (2, 77, 2048) and got["negative_y_rows"].shape == (2, 2816)
    for i, r in enumerate(refined):
        assert torch.equal(got["negative_rows"][i:i + 1].float(), r.context)
        assert torch.equal(got["negative_y_rows"][i:i + 1, :1280].float(), r.pooled)
    size = size_embedding(SIZE, SIZE)
    torch.testing.assert_close(got["negative_y_rows"][:, 1280:].float(), size.expand(2, -1), atol=1e-5, rtol=0)
    start = load_embedding(server.reneg_dir / "e2e_xl.safetensors")
    for i, row in enumerate(report["rows"]):
        assert (row["best_step"] == 0) == torch.equal(refined[i].tensor, start.tensor)
    for i in range(2):  # the batch positive: row i is CLIP Text Encode of line i (context and pooled), bit for bit
        ref, _ = probe(server, f"{tag}_ref{i}")
        assert torch.equal(got["positive_rows"][i:i + 1], ref["positive"])
        assert torch.equal(got["positive_y_rows"][i:i + 1], ref["positive_y"])
    assert not torch.equal(got["positive_rows"][0], got["positive_rows"][1])
    assert len(entry["outputs"]["save_img"]["images"]) == 2


def test_adapter_equals_comfyuis_own_sdxl_sampler_path(tmp_path):
    """The pack's backend on ComfyUI's SDXL MODEL (y from the model's encode_adm, context = first 77 rows of the
    packed negative) gives the ε ComfyUI's sampler path gives (SDXL.extra_conds + apply_model), for a
    non-square image; the gradient reaches the context and the pooled part, not the packed row's padding."""
    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path)
    checkpoint = ensure_sdxl_checkpoint(cache)
    env = {**os.environ, "COMFYUI_PATH": str(cs.comfyui_path())}
    proc = subprocess.run([cs.comfyui_python(), str(cs.HERE / "comfy_sdxl_builders.py"), "adapter-check",
                           str(checkpoint)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["model_base"] == "SDXL"
    assert facts["relative_max_abs_diff"] < 1e-4, facts  # measured 4.3e-6 (float32 on CPU)
    assert facts["context_grad_norm"] > 0 and facts["pooled_grad_norm"] > 0 and facts["pad_grad_norm"] == 0, facts
