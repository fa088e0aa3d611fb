"""End-to-end tests against a real ComfyUI (opt-in: set ``COMFYUI_PATH``; see ``comfy_server.py``).

A headless ``main.py --cpu`` server gets this pack, a probe node pack and a random-weight SD1.5-architecture
checkpoint; graphs go through HTTP ``/prompt`` and results come back from ``/history`` and the files written.

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python -m pytest tests/e2e/test_comfyui_e2e.py -v``
"""
from __future__ import annotations

import json
import math
import time
import urllib.parse
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import comfy_server as cs
from reneg.core.embedding_io import load_embedding, save_embedding

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(cs.skip_reason() is not None, reason=str(cs.skip_reason()))]

RELEASED_SD15 = cs.REPO_ROOT.parent / "shared" / "fixtures" / "released" / "sd1.5_reneg_emb.bin"
PROMPT = "a watercolor painting of a lighthouse at dawn"
TOY_REFINE_GAIN = 5.0  # measured in ComfyUI and the CLI alike: 80.42 -> 88.40 (6 steps, seed 2000)
SIZE = 64
SAMPLING_STEPS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import os

    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("ckpt"))
    checkpoint = cs.ensure_checkpoint(cache)
    emb_dir = tmp_path_factory.mktemp("emb")
    generated = save_embedding(emb_dir / "e2e_random.safetensors", torch.randn(1, 77, 768) * 0.1, note="e2e")
    embeddings = {"e2e_random.safetensors": generated}
    if RELEASED_SD15.is_file():
        embeddings[RELEASED_SD15.name] = RELEASED_SD15
    srv = cs.ComfyServer(tmp_path_factory.mktemp("comfy_base"), checkpoint, embeddings).start()
    yield srv
    srv.stop()


# --- graph pieces ---------------------------------------------------------------------------------------------
def base_graph(tag: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cs.CHECKPOINT_NAME}},
        "probe": {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": tag}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }


def sampler(negative: list, prefix: str, seed: int = 1) -> dict:
    return {
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["probe", 0], "seed": seed, "steps": 3, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": negative, "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save_img": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }


def reward_node() -> dict:
    return {"class_type": "ReNegLoadReward", "inputs": {"reward": "tiny", "weights": "auto", "mix": ""}}


def train_node(save_name: str, steps: int, save_every: int = 0, preview_every: int = 0,
               if_exists: str = "continue", lr: float = 0.05) -> dict:
    return {"class_type": "ReNegTrainGlobal", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "reward": ["reward", 0],
        "prompts": "a cat on a sofa\na red car\n" + PROMPT, "prompts_file": "", "steps": steps, "batch_size": 2,
        "micro_batch": 1, "lr": lr, "save_name": save_name, "if_exists": if_exists, "seed": 0,
        "sampling_steps": SAMPLING_STEPS, "cfg": 7.5, "width": SIZE, "height": SIZE, "save_every": save_every,
        "preview_every": preview_every}}


def load_node(embedding: str, strength: float = 1.0) -> dict:
    return {"class_type": "ReNegLoadEmbedding",
            "inputs": {"embedding": embedding, "strength": strength, "clip": ["ckpt", 1]}}


def probe_tensor(server, tag: str, which: str = "negative") -> tuple[torch.Tensor, dict]:
    with safe_open(str(server.output_dir / "reneg_probe" / f"{tag}.safetensors"), "pt") as fh:
        return fh.get_tensor(which), fh.metadata()


def node_errors(status: int, body) -> dict:
    """``/prompt``'s refusal: ``{node_id: [error dicts]}``."""
    assert status == 400, (status, body)
    return {nid: e["errors"] for nid, e in body["node_errors"].items()}


def saved_path(entry: dict, node: str) -> Path:
    return Path(entry["outputs"][node]["text"][0])


# --- tests ------------------------------------------------------------------------------------------------------
def test_nodes_registered_with_dropdowns(server):
    info = server.get("/object_info")
    for node in ("ReNegLoadEmbedding", "ReNegLoadReward", "ReNegRefine", "ReNegTrainGlobal", "ReNegSaveEmbedding"):
        assert node in info, f"{node} missing from /object_info"
    options = info["ReNegLoadEmbedding"]["input"]["required"]["embedding"][1]["options"]
    assert "e2e_random.safetensors" in options and "sd2.1_reneg_emb.bin" in options  # files + registry
    assert info["ReNegRefine"]["output"] == ["CONDITIONING", "CONDITIONING", "STRING", "IMAGE"]
    assert info["ReNegRefine"]["output_name"][:2] == ["positive", "refined_negative"]
    templates = server.get("/workflow_templates")  # the frontend's template browser
    assert sorted(templates[cs.PACK_FOLDER]) == sorted(p.stem for p in EXAMPLES)
    refine = next(p for p in EXAMPLES if "Refine" in p.stem)
    served = server.get(f"/api/workflow_templates/{cs.PACK_FOLDER}/{urllib.parse.quote(refine.name)}")
    assert any(n["type"] == "ReNegRefine" for n in served["nodes"])


def test_recorded_object_info_is_the_servers(server):
    """CI converts the examples with tests/fixtures/comfyui_object_info.json: it must be this server's."""
    from workflow_tools import recordable_object_info

    recorded = json.loads((cs.REPO_ROOT / "tests" / "fixtures" / "comfyui_object_info.json").read_text())
    live = recordable_object_info(server.get("/object_info"), recorded)
    assert live == recorded, ("re-record tests/fixtures/comfyui_object_info.json from a live server with "
                              "workflow_tools.recordable_object_info")


def test_every_reneg_input_has_a_tooltip(server):
    info = server.get("/object_info")
    missing = [f"{node}.{name}" for node, spec in info.items() if node.startswith("ReNeg") and node != "ReNegE2EProbe"
               for group in ("required", "optional") for name, (_, opts, *_) in spec["input"].get(group, {}).items()
               if not (opts or {}).get("tooltip")]
    assert not missing, f"inputs without a tooltip: {missing}"


def test_released_pixart_file_on_an_sd_model_is_one_node_error(server):
    """All four released files are offered (PixArt-α's for ComfyUI's PixArt MODEL, see
    test_comfyui_pixart_e2e.py); the 4096-wide PixArt file with an SD1.5 CLIP is one Load-node error naming the
    files that fit."""
    options = server.get("/object_info")["ReNegLoadEmbedding"]["input"]["required"]["embedding"][1]["options"]
    assert {"sd1.4_reneg_emb.bin", "sd1.5_reneg_emb.bin", "sd2.1_reneg_emb.bin",
            "pixart-alpha_reneg_emb.bin"} <= set(options)
    pixart = cs.REPO_ROOT.parent / "shared" / "fixtures" / "released" / "pixart-alpha_reneg_emb.bin"
    if not (server.reneg_dir / pixart.name).exists():
        if not pixart.is_file():
            pytest.skip("pixart-alpha_reneg_emb.bin not available (released embeddings live in ../shared)")
        (server.reneg_dir / pixart.name).symlink_to(pixart)  # never downloaded in a test
    graph = {**base_graph("pixart"), **sampler(["neg", 0], "pixart"), "neg": load_node(pixart.name)}
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1 and errors[0]["node_type"] == "ReNegLoadEmbedding", errors
    text = errors[0]["exception_message"]
    assert "4096-wide" in text and "PixArt" in text and "sd1.5_reneg_emb.bin" in text, text


def test_unknown_embedding_is_rejected_at_queue_time_with_the_fix(server):
    graph = {**base_graph("unknown"), **sampler(["neg", 0], "unknown"), "neg": load_node("no_such_file.safetensors")}
    errors = node_errors(*server.post("/prompt", {"prompt": graph}))
    assert list(errors) == ["neg"], errors
    text = json.dumps(errors["neg"])
    assert "no_such_file.safetensors" in text and "not found" in text and "models/reneg/" in text
    # a file copied into models/reneg/ after the page was loaded is accepted (checked on disk, not a stale list)
    save_embedding(server.reneg_dir / "e2e_late.safetensors", torch.zeros(1, 77, 768))
    graph["neg"] = load_node("e2e_late.safetensors")
    server.run(graph)


@pytest.mark.parametrize("name", ["e2e_random.safetensors", "sd1.5_reneg_emb.bin"])
def test_load_to_ksampler_feeds_the_file_bit_for_bit(server, name):
    if not (server.reneg_dir / name).exists():
        pytest.skip(f"{name} not available (released embeddings live in ../shared/fixtures/released)")
    tag = "load_" + name.split(".")[0].replace("-", "_")
    graph = {**base_graph(tag), **sampler(["neg", 0], tag), "neg": load_node(name)}
    server.run(graph)
    got, meta = probe_tensor(server, tag)
    expected = load_embedding(server.reneg_dir / name).tensor
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert meta["all_identical"] == "True" and int(meta["calls"]) >= 3


def test_strength_blends_with_the_clip_empty_prompt(server):
    """strength 0 = ComfyUI's own CLIPTextEncode("") negative; 0.5 = the exact lerp towards the file."""
    graph = dict(base_graph("unused"))
    graph["empty"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}}
    negatives = {"s0": ["neg0", 0], "s05": ["neg05", 0], "empty": ["empty", 0]}
    for strength, node in ((0.0, "neg0"), (0.5, "neg05")):
        graph[node] = load_node("e2e_random.safetensors", strength)
    cs.add_probed_samplers(graph, negatives, sampler)
    server.run(graph)
    emb = load_embedding(server.reneg_dir / "e2e_random.safetensors").tensor
    s0, s05, empty = (probe_tensor(server, tag)[0] for tag in ("s0", "s05", "empty"))
    assert torch.equal(s0, empty)
    assert torch.equal(s05, torch.lerp(empty, emb, 0.5))


def test_mismatched_embedding_is_a_clear_node_error(server):
    save_embedding(server.reneg_dir / "e2e_sd2_width.safetensors", torch.zeros(1, 77, 1024))
    graph = {**base_graph("mismatch"), **sampler(["neg", 0], "mismatch"), "neg": load_node("e2e_sd2_width.safetensors")}
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1 and errors[0]["node_type"] == "ReNegLoadEmbedding", errors
    message = errors[0]["exception_message"]
    assert "1024-wide" in message and "768-wide" in message
    assert "sd1.5_reneg_emb.bin" in message and "sd2.1" not in message  # names the files that fit this model


def test_sd2_file_without_clip_is_refused_at_queue_not_inside_ksampler(server):
    """Issue 3c: without the CLIP the loader could not check the family and KSampler failed with
    'mat1 and mat2 shapes cannot be multiplied'. The CLIP input is required: one error on the ReNeg node."""
    save_embedding(server.reneg_dir / "e2e_sd2_noclip.safetensors", torch.zeros(1, 77, 1024))
    neg = load_node("e2e_sd2_noclip.safetensors")
    del neg["inputs"]["clip"]
    graph = {**base_graph("noclip"), **sampler(["neg", 0], "noclip"), "neg": neg}
    errors = node_errors(*server.post("/prompt", {"prompt": graph}))
    assert list(errors) == ["neg"], errors
    assert errors["neg"][0]["type"] == "required_input_missing" and "clip" in json.dumps(errors["neg"])


def test_refine_to_ksampler(server):
    """The prompt is typed once (Refine outputs the positive, equal to CLIP Text Encode's bit for bit) and the
    KSampler gets exactly the refined negative."""
    tag = "refine"
    graph = {**base_graph(tag), **sampler(["refine", 1], tag),
             "neg": load_node("e2e_random.safetensors"),
             "reward": reward_node(),
             "refine": {"class_type": "ReNegRefine", "inputs": {
                 "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "negative": ["neg", 0],
                 "reward": ["reward", 0], "prompt": PROMPT, "seed": 5, "sampling_steps": SAMPLING_STEPS,
                 "cfg": 7.5, "width": SIZE, "height": SIZE, "max_steps": 3, "patience": 3, "lr": 0.05}},
             "save_neg": {"class_type": "ReNegSaveEmbedding",
                          "inputs": {"conditioning": ["refine", 1], "filename_prefix": "e2e_refined"}},
             "preview": {"class_type": "PreviewImage", "inputs": {"images": ["refine", 3]}}}
    graph["ks"]["inputs"]["positive"] = ["refine", 0]
    # a second sampler fed by CLIP Text Encode of the same text: the reference positive
    ref = sampler(["neg", 0], "refine_ref")
    graph.update({"probe_ref": {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": "refine_ref"}},
                  "ks_ref": {**ref["ks"], "inputs": {**ref["ks"]["inputs"], "model": ["probe_ref", 0]}},
                  "decode_ref": {**ref["decode"], "inputs": {**ref["decode"]["inputs"], "samples": ["ks_ref", 0]}},
                  "save_ref": {**ref["save_img"], "inputs": {**ref["save_img"]["inputs"], "images": ["decode_ref", 0]}}})
    entry = server.run(graph)
    assert torch.equal(probe_tensor(server, tag, "positive")[0], probe_tensor(server, "refine_ref", "positive")[0])
    report = json.loads(entry["outputs"]["refine"]["text"][0])
    trace = report["trace"]
    assert len(trace) >= 2 and all(math.isfinite(x) for x in trace)
    running_best = [max(trace[: i + 1]) for i in range(len(trace))]
    assert running_best == sorted(running_best)  # the best value never decreases
    assert report["best_reward"] == pytest.approx(max(trace), abs=1e-6) and report["best_reward"] >= trace[0]
    assert trace[report["best_step"]] == pytest.approx(report["best_reward"], abs=1e-6)
    refined = load_embedding(saved_path(entry, "save_neg")).tensor
    got, _ = probe_tensor(server, tag)
    assert torch.equal(got, refined)  # the KSampler got exactly the refined negative
    start = load_embedding(server.reneg_dir / "e2e_random.safetensors").tensor
    assert (report["best_step"] == 0) == torch.equal(refined, start)
    assert entry["outputs"]["preview"]["images"], "preview image missing"


def test_refine_a_latent_batch_to_ksampler(server):
    """A latent batch of two with one prompt per line: one Refine call refines a negative per row (row i for the
    KSampler's noise of row i), the KSampler samples the batch with the B-row positive and negative, Save ReNeg
    Embedding writes one file per row, and guaranteed_image holds the refinement's own render of each row."""
    tag = "refine_batch"
    prompts = ["a red car on a bridge", PROMPT]
    graph = {**base_graph(tag), **sampler(["refine", 1], tag, seed=5),
             "neg": load_node("e2e_random.safetensors"),
             "reward": reward_node(),
             "refine": {"class_type": "ReNegRefine", "inputs": {
                 "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "negative": ["neg", 0],
                 "reward": ["reward", 0], "prompt": "\n".join(prompts), "seed": 5,
                 "sampling_steps": SAMPLING_STEPS, "cfg": 7.5, "width": SIZE, "height": SIZE, "max_steps": 3,
                 "patience": 3, "lr": 0.05, "latent": ["latent", 0]}},
             "save_neg": {"class_type": "ReNegSaveEmbedding",
                          "inputs": {"conditioning": ["refine", 1], "filename_prefix": "e2e_refined_batch"}},
             "save_guaranteed": {"class_type": "SaveImage",
                                 "inputs": {"images": ["refine", 3], "filename_prefix": "e2e_guaranteed"}}}
    graph["latent"]["inputs"]["batch_size"] = 2
    graph["ks"]["inputs"]["positive"] = ["refine", 0]
    cs.add_reference_rows(graph, tag, prompts, ["ckpt", 1], ["neg", 0], SIZE)  # reference: CLIP Text Encode of each line
    entry = server.run(graph)
    report = json.loads(entry["outputs"]["refine"]["text"][0])
    assert len(report["rows"]) == 2
    for row in report["rows"]:
        assert row["best_reward"] >= row["trace"][0] and all(math.isfinite(x) for x in row["trace"])
    saved = [Path(p) for p in entry["outputs"]["save_neg"]["text"][0].splitlines()]
    assert len(saved) == 2 and all(p.is_file() for p in saved)
    refined = torch.cat([load_embedding(p).tensor for p in saved])
    got_neg, meta = probe_tensor(server, tag, "negative_rows")
    assert got_neg.shape == (2, 77, 768) and torch.equal(got_neg, refined)  # row i of the uncond = row i's negative
    start = load_embedding(server.reneg_dir / "e2e_random.safetensors").tensor
    for i, row in enumerate(report["rows"]):
        assert (row["best_step"] == 0) == torch.equal(refined[i:i + 1], start)
    got_pos, _ = probe_tensor(server, tag, "positive_rows")
    for i in range(2):  # the batch positive: row i is CLIP Text Encode of line i, bit for bit
        ref, _ = probe_tensor(server, f"{tag}_ref{i}", "positive")
        assert torch.equal(got_pos[i:i + 1], ref)
    assert not torch.equal(got_pos[0], got_pos[1])
    assert len(entry["outputs"]["save_guaranteed"]["images"]) == 2
    assert len(entry["outputs"]["save_img"]["images"]) == 2


def test_train_three_steps_save_then_load(server):
    train_graph = {"ckpt": base_graph("x")["ckpt"], "reward": reward_node(),
                   "train": train_node("e2e_train", steps=3, preview_every=2),
                   "save_neg": {"class_type": "ReNegSaveEmbedding",
                                "inputs": {"conditioning": ["train", 0], "filename_prefix": "e2e_trained"}},
                   "curve": {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}}
    entry = server.run(train_graph)
    trained_file = server.reneg_dir / "e2e_train.safetensors"
    trained = load_embedding(trained_file)
    assert trained.metadata["status"] == "complete" and trained.metadata["steps"] == "3"
    assert (server.reneg_dir / "e2e_train.safetensors.state").is_file()
    assert (server.reneg_dir / "e2e_train.rewards.png").is_file()
    assert torch.equal(load_embedding(saved_path(entry, "save_neg")).tensor, trained.tensor)
    assert entry["outputs"]["curve"]["images"], "reward curve image missing"

    tag = "load_trained"
    graph = {**base_graph(tag), **sampler(["neg", 0], tag), "neg": load_node("e2e_train.safetensors")}
    server.run(graph)
    got, _ = probe_tensor(server, tag)
    assert torch.equal(got, trained.tensor)


def _train_graph(save_name: str, steps: int, **kw) -> dict:
    return {"ckpt": base_graph("x")["ckpt"], "reward": reward_node(), "train": train_node(save_name, steps, **kw)}


def _log_rows(path: Path) -> list[dict]:
    import csv

    with open(path.with_name(path.stem + ".log.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def _train_error(server, graph: dict) -> str:
    entry = server.wait(server.queue(graph))
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and len(errors) == 1, entry["status"]
    assert errors[0]["node_type"] == "ReNegTrainGlobal"
    return errors[0]["exception_message"]


def test_training_graph_reruns_continues_restarts_and_takes_a_new_name(server):
    """Issue 3b: queueing a training graph twice, or asking for more steps (2 -> 4), must not fail with
    'cannot resume with a different recipe'; continue / restart / new name do what they say."""
    out = server.reneg_dir / "e2e_cont.safetensors"
    server.run(_train_graph("e2e_cont", 2))
    first = _log_rows(out)
    assert load_embedding(out).metadata["steps"] == "2" and len(first) == 2
    server.run(_train_graph("e2e_cont", 2))  # the same graph again: fine (nothing to do)
    server.run(_train_graph("e2e_cont", 4))  # continue to 4 steps from the saved state
    meta = load_embedding(out).metadata
    assert (meta["steps"], meta["status"]) == ("4", "complete")
    rows = _log_rows(out)
    assert len(rows) == 4 and rows[:2] == first  # steps 1-2 are the saved run's: continued, not restarted
    assert float(rows[2]["lr"]) > 0  # the schedule was re-planned over 4 steps (the 2-step one ended at 0)

    message = _train_error(server, _train_graph("e2e_cont", 3))
    assert "already has 4 training steps" in message and "restart" in message
    message = _train_error(server, _train_graph("e2e_cont", 5, lr=0.01))
    assert "lr 0.05 -> 0.01" in message and "'restart'" in message and "'new name'" in message

    kept = load_embedding(out).tensor
    server.run(_train_graph("e2e_cont", 3, if_exists="new name"))
    renamed = server.reneg_dir / "e2e_cont_00002.safetensors"
    assert load_embedding(renamed).metadata["steps"] == "3" and torch.equal(load_embedding(out).tensor, kept)
    server.run(_train_graph("e2e_cont", 3, if_exists="new name"))  # every Run with 'new name' is a new file
    assert (server.reneg_dir / "e2e_cont_00003.safetensors").is_file()

    server.run(_train_graph("e2e_cont", 2, if_exists="restart"))
    assert load_embedding(out).metadata["steps"] == "2"
    again = _log_rows(out)  # started over: the same seed draws the same steps again
    assert [(r["step"], r["step_index"], r["lr"]) for r in again] == [(r["step"], r["step_index"], r["lr"]) for r in first]
    assert [float(r["reward_mean"]) for r in again] == pytest.approx([float(r["reward_mean"]) for r in first], rel=1e-5)


def test_interrupt_mid_train_leaves_valid_partial_file(server):
    out = server.reneg_dir / "e2e_interrupt.safetensors"
    graph = {"ckpt": base_graph("x")["ckpt"], "reward": reward_node(),
             "train": train_node("e2e_interrupt", steps=500, save_every=1)}
    prompt_id = server.queue(graph)
    state = out.with_name(out.name + ".state")
    deadline = time.monotonic() + 600
    while not state.exists():  # the first step's checkpoint: training is under way
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    server.interrupt()
    entry = server.wait(prompt_id)
    kinds = cs.message_types(entry)
    assert "execution_interrupted" in kinds and "execution_error" not in kinds, kinds
    assert entry["status"]["status_str"] == "error"  # ComfyUI's history marks interrupted prompts this way
    partial = load_embedding(out)
    assert partial.metadata["status"] == "partial"
    assert 1 <= int(partial.metadata["steps"]) < 500
    assert partial.tensor.shape == (1, 77, 768) and torch.isfinite(partial.tensor).all()


def test_adapter_matches_diffusers_backend_on_tiny_models():
    """ComfyBackend on ComfyUI's classes holding the tiny eps/v weights equals the diffusers backend per call,
    is differentiable in the context from inference-mode inputs, and honours a ModelSamplingDiscrete patch."""
    facts = json.loads(cs.run_helper("adapter-checks"))
    for name, pred in (("tiny", "epsilon"), ("tiny-v", "v_prediction")):
        f = facts[name]
        assert f["prediction_type"] == pred
        assert f["model_output_max_abs_diff"] < 1e-5 and f["decode_max_abs_diff"] < 1e-5, f
        assert f["alphas_max_abs_diff"] < 1e-6 and f["context_grad_norm"] > 0, f
    assert facts["patched_v_zsnr"]["prediction_type"] == "v_prediction"
    assert facts["patched_v_zsnr"]["alpha_T"] < 1e-7  # zero-terminal-SNR schedule seen through the object patch
    assert "epsilon- or v-prediction" in facts["x0_error"]


def _refine_in_comfyui_and_cli(tmp_path, model: str, prompt: str, seed: int, kw: dict):
    """The Refine node's code path on ComfyUI's own UNetModel/AutoencoderKL classes holding ``model``'s weights vs
    ``reneg refine --model MODEL`` (the CLI, diffusers backend): same prompt conditioning, init and seed. Returns
    the ComfyUI run's summary, its best negative, the init and the CLI's file."""
    from reneg.core.cli import main as cli
    from reneg.core.diffusers_backend import load_backend

    summary = json.loads(cs.run_helper("refine-equivalence", str(tmp_path), "--json",
                                       json.dumps({**kw, "seed": seed, "prompt": prompt, "model": model})))
    with safe_open(str(tmp_path / "comfy_refine.safetensors"), "pt") as fh:
        comfy_best, cond, init = fh.get_tensor("best"), fh.get_tensor("cond"), fh.get_tensor("init")
    backend = load_backend(model)
    # the ComfyUI run got exactly the CLI's prompt conditioning and its default init (the null-text embedding)
    assert torch.equal(cond, backend.encode_prompts([prompt])) and torch.equal(init, backend.encode_prompts([""]))
    out = tmp_path / "cli_refined.safetensors"
    reward = "toy" if model.startswith("toy") else "tiny"
    assert cli(["refine", "--model", model, "--device", "cpu", "--dtype", "fp32", "--reward", reward,
                "--prompt", prompt, "--out", str(out), "--seed", str(seed), "--max-steps", str(kw["max_steps"]),
                "--patience", str(kw["patience"]), "--lr", str(kw["lr"]),
                "--ddim-steps", str(kw["num_inference_steps"]), "--guidance", str(kw["guidance_scale"]),
                "--height", str(kw["height"]), "--width", str(kw["width"])]) == 0
    cli_file = load_embedding(out)
    assert int(cli_file.metadata["steps"]) == summary["best_step"]  # the CLI stores the best iterate's index
    assert float(cli_file.metadata["best_reward"]) == pytest.approx(max(summary["trace"]), rel=1e-5)
    return summary, comfy_best, init, cli_file


def test_refine_in_comfyui_equals_cli_refine_on_the_same_tiny_model(tmp_path):
    """The Refine node on ComfyUI copies of the random tiny model ends where ``reneg refine --model tiny`` ends."""
    kw = dict(num_inference_steps=6, guidance_scale=7.5, width=64, height=64, max_steps=4, patience=3, lr=0.05)
    _, comfy_best, init, cli_file = _refine_in_comfyui_and_cli(tmp_path, "tiny", PROMPT, 3, kw)
    moved = (cli_file.tensor - init).norm()
    assert moved > 0.1  # the refinement did move the embedding
    assert float((comfy_best - cli_file.tensor).norm() / moved) < 1e-3  # measured ~2e-5 (float32 noise)


def test_refine_in_comfyui_learns_on_the_trained_toy_world(tmp_path):
    """The toy world in ComfyUI's own classes (its 8 / 1 GroupNorm groups and latent scale): the Refine node's
    code raises the toy reward of the final image for a held-out caption, exactly as the CLI does."""
    from reneg.core.toy_world.data import split_prompts

    prompt = split_prompts()[1][0]
    kw = dict(num_inference_steps=10, guidance_scale=7.5, width=32, height=32, max_steps=6, patience=3, lr=0.05)
    summary, comfy_best, init, cli_file = _refine_in_comfyui_and_cli(tmp_path, "toy", prompt, 2000, kw)
    trace = summary["trace"]
    print("toy refine trace in ComfyUI", trace)
    assert max(trace) >= trace[0] + TOY_REFINE_GAIN, trace
    moved = (cli_file.tensor - init).norm()
    assert float((comfy_best - cli_file.tensor).norm() / moved) < 1e-3


EXAMPLES = sorted((cs.REPO_ROOT / "example_workflows").glob("*.json"))
#: Shrink the example graphs to the test model and CPU sizes (by input name; only widget values are replaced).
EXAMPLE_OVERRIDES = {"ckpt_name": cs.CHECKPOINT_NAME, "width": SIZE, "height": SIZE, "steps": 2,
                     "sampling_steps": SAMPLING_STEPS, "max_steps": 2, "batch_size": 1, "save_every": 0,
                     "preview_every": 1}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_runs(server, path):
    from workflow_tools import check_structure, to_api

    workflow = json.loads(path.read_text())
    check_structure(workflow)
    prompt = to_api(workflow, server.get("/object_info"))
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in EXAMPLE_OVERRIDES.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
        if node["class_type"] == "ReNegLoadReward":
            inputs["reward"] = "tiny"
        if node["class_type"] == "ReNegLoadEmbedding" and not (server.reneg_dir / inputs["embedding"]).exists():
            inputs["embedding"] = "e2e_random.safetensors"  # offline: no released file to download
        if node["class_type"] == "ReNegTrainGlobal":
            inputs["save_name"] = f"e2e_example_{path.stem}"
    entry = server.run(prompt)
    assert entry["outputs"], f"{path.name} produced no outputs"
