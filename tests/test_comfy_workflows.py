"""The example workflows are well-formed ComfyUI UI graphs using only existing ReNeg node ids (no ComfyUI needed;
the opt-in e2e test converts and runs each of them on a real ComfyUI)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
_spec = importlib.util.spec_from_file_location("workflow_tools", REPO / "tests" / "e2e" / "workflow_tools.py")
workflow_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflow_tools)
NODE_IDS = set(re.findall(r'node_id="([^"]+)"', (REPO / "comfy_nodes" / "nodes.py").read_text()))


def test_examples_cover_load_refine_train():
    names = {p.stem for p in EXAMPLES}
    assert {"reneg_load_ksampler", "reneg_refine", "reneg_train"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_structure(path):
    wf = json.loads(path.read_text())
    workflow_tools.check_structure(wf)
    used = {n["type"] for n in wf["nodes"] if n["type"].startswith("ReNeg")}
    assert used and used <= NODE_IDS, used - NODE_IDS
    assert "KSampler" in {n["type"] for n in wf["nodes"]}


def test_check_structure_catches_a_type_mismatch():
    wf = json.loads(EXAMPLES[0].read_text())
    wf["links"][0][5] = "IMAGE"
    with pytest.raises(AssertionError, match="link 1"):
        workflow_tools.check_structure(wf)


def test_to_api_maps_widgets_seed_control_and_links():
    wf = json.loads((REPO / "example_workflows" / "reneg_refine.json").read_text())
    info = {  # the relevant part of /object_info (V1 combos are lists, V3 combos "COMBO")
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors"], {}]}}},
        "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {}], "clip": ["CLIP", {}]}}},
        "ReNegLoadEmbedding": {"input": {"required": {"embedding": ["COMBO", {"options": []}],
                                                      "strength": ["FLOAT", {}]},
                                         "optional": {"clip": ["CLIP", {}]}}},
        "ReNegLoadReward": {"input": {"required": {"reward": ["COMBO", {}], "weights": ["COMBO", {}]},
                                      "optional": {"mix": ["STRING", {}]}}},
        "ReNegRefine": {"input": {"required": {
            "model": ["MODEL", {}], "vae": ["VAE", {}], "positive": ["CONDITIONING", {}],
            "negative": ["CONDITIONING", {}], "reward": ["RENEG_REWARD", {}], "prompt_text": ["STRING", {}],
            "seed": ["INT", {"control_after_generate": True}], "sampling_steps": ["INT", {}], "cfg": ["FLOAT", {}],
            "width": ["INT", {}], "height": ["INT", {}], "max_steps": ["INT", {}], "patience": ["INT", {}],
            "lr": ["FLOAT", {}]}, "optional": {"latent": ["LATENT", {}]}}},
        "PreviewImage": {"input": {"required": {"images": ["IMAGE", {}]}}},
        "EmptyLatentImage": {"input": {"required": {"width": ["INT", {}], "height": ["INT", {}],
                                                    "batch_size": ["INT", {}]}}},
        "KSampler": {"input": {"required": {
            "model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": True}], "steps": ["INT", {}],
            "cfg": ["FLOAT", {}], "sampler_name": [["ddim"], {}], "scheduler": [["ddim_uniform"], {}],
            "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}], "latent_image": ["LATENT", {}],
            "denoise": ["FLOAT", {}]}}},
        "VAEDecode": {"input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}}},
        "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}}},
    }
    api = workflow_tools.to_api(wf, info)
    refine = next(n for n in api.values() if n["class_type"] == "ReNegRefine")["inputs"]
    assert refine["seed"] == 1234 and refine["sampling_steps"] == 30 and refine["lr"] == 0.005
    assert refine["negative"][1] == 0 and api[refine["negative"][0]]["class_type"] == "ReNegLoadEmbedding"
    assert "latent" not in refine
    ks = next(n for n in api.values() if n["class_type"] == "KSampler")["inputs"]
    assert api[ks["negative"][0]]["class_type"] == "ReNegRefine"
    assert (ks["sampler_name"], ks["scheduler"], ks["denoise"]) == ("ddim", "ddim_uniform", 1.0)
