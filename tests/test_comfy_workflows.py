"""The example workflows, checked without ComfyUI: structure, readable template titles, thumbnails, layout, and the
frontend's UI -> API conversion against a recorded ``/object_info`` of ComfyUI 0.3.64 (the browser tests load and
run each file in the real frontend; ``test_comfyui_e2e.py`` checks the recording against the live server)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
OBJECT_INFO = json.loads((REPO / "tests" / "fixtures" / "comfyui_object_info.json").read_text())
_spec = importlib.util.spec_from_file_location("workflow_tools", REPO / "tests" / "e2e" / "workflow_tools.py")
workflow_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflow_tools)
NODE_IDS = set(re.findall(r'node_id="([^"]+)"', (REPO / "comfy_nodes" / "nodes.py").read_text()))
#: LiteGraph draws the title bar above ``pos`` (LiteGraph.NODE_TITLE_HEIGHT).
TITLE_HEIGHT = 30


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _types(path: Path) -> set[str]:
    return {n["type"] for n in _load(path)["nodes"]}


def test_examples_cover_load_refine_train():
    assert any({"ReNegLoadEmbedding", "KSampler"} <= _types(p) and "ReNegRefine" not in _types(p) for p in EXAMPLES)
    assert any("ReNegRefine" in _types(p) for p in EXAMPLES)
    assert any("ReNegTrainGlobal" in _types(p) for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_structure(path):
    wf = _load(path)
    workflow_tools.check_structure(wf)
    used = {n["type"] for n in wf["nodes"] if n["type"].startswith("ReNeg")}
    assert used and used <= NODE_IDS, used - NODE_IDS
    assert "KSampler" in {n["type"] for n in wf["nodes"]}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_template_title_is_readable(path):
    """The frontend shows a custom node's template under its file name (issue 3f: 'reneg_train' was the title)."""
    assert re.fullmatch(r"ReNeg - [A-Z][a-z]+( [A-Za-z0-9.]+)+", path.stem), path.stem


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_template_has_a_thumbnail(path):
    """The frontend loads ``<name>.jpg`` beside each template as its card image."""
    from PIL import Image

    jpg = path.with_suffix(".jpg")
    assert jpg.is_file(), f"missing thumbnail {jpg.name}"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.width >= 256 and im.height >= 128, (im.format, im.size)
    assert jpg.stat().st_size < 200_000


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_no_nodes_overlap(path):
    boxes = [(n["title"] if "title" in n else n["type"], n["pos"][0], n["pos"][1] - TITLE_HEIGHT,
              n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in _load(path)["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]), f"{a[0]} overlaps {b[0]}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_saved_widget_values_convert_to_valid_inputs(path):
    """Issue 3a: the frontend adds a 'control after generate' widget after an INT named 'seed', so a file saved
    without its value shifted every later widget ('Value 512.0 bigger than max of 100.0: cfg')."""
    prompt = workflow_tools.to_api(_load(path), OBJECT_INFO)
    assert not workflow_tools.out_of_range(prompt, OBJECT_INFO)


def test_the_converter_applies_the_frontend_seed_rule():
    """An INT 'seed' without control_after_generate gets the extra widget value; 'false' means none. A file saved
    without that value does not convert (the frontend would shift the values; the server then refuses them)."""
    info = {"N": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {"min": 1, "max": 1000}],
                                         "cfg": ["FLOAT", {"max": 100.0}], "width": ["INT", {"max": 4096}]}}},
            "F": {"input": {"required": {"seed": ["INT", {"control_after_generate": False}],
                                         "steps": ["INT", {"min": 1, "max": 1000}], "cfg": ["FLOAT", {"max": 100.0}],
                                         "width": ["INT", {"max": 4096}]}}}}
    wf = {"nodes": [{"id": 1, "type": "N", "widgets_values": [5, "fixed", 30, 7.5, 512]},
                    {"id": 2, "type": "F", "widgets_values": [5, 30, 7.5, 512]}], "links": []}
    api = workflow_tools.to_api(wf, info)
    assert api["1"]["inputs"] == {"seed": 5, "steps": 30, "cfg": 7.5, "width": 512} == api["2"]["inputs"]
    assert not workflow_tools.out_of_range(api, info)
    old_style = {"nodes": [{"id": 1, "type": "N", "widgets_values": [5, 30, 7.5, 512]}], "links": []}
    with pytest.raises(AssertionError, match="no widget value for 'width'"):
        workflow_tools.to_api(old_style, info)
    shifted = {"1": {"class_type": "N", "inputs": {"seed": 5, "steps": 7.5, "cfg": 512.0, "width": 512}}}
    problems = workflow_tools.out_of_range(shifted, info)
    assert len(problems) == 2 and "steps=7.5: not a INT" in problems[0] and "cfg=512.0: outside" in problems[1]


def test_check_structure_catches_a_type_mismatch():
    wf = _load(EXAMPLES[0])
    wf["links"][0][5] = "IMAGE"
    with pytest.raises(AssertionError, match="link 1"):
        workflow_tools.check_structure(wf)


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "ReNegRefine" in _types(p)],
                         ids=[p.stem for p in EXAMPLES if "ReNegRefine" in _types(p)])
def test_refine_example_types_the_prompt_once_and_shares_one_fixed_seed(path):
    """Issues 3d/3e: the prompt lives in ReNeg Refine only (a CLIP Text Encode may only give Refine its start
    negative, as in the SDXL example); one Int node feeds Refine's and KSampler's seed."""
    api = workflow_tools.to_api(_load(path), OBJECT_INFO)
    by_type = {n["class_type"]: (nid, n["inputs"]) for nid, n in api.items()}
    refine_id, refine = by_type["ReNegRefine"]
    assert refine["prompt"].strip()
    encoders = [nid for nid, n in api.items() if n["class_type"] == "CLIPTextEncode"]
    assert all(refine["negative"] == [nid, 0] for nid in encoders), encoders
    ks = by_type["KSampler"][1]
    assert ks["positive"] == [refine_id, 0] and ks["negative"] == [refine_id, 1]
    seed_id, seed = by_type["PrimitiveInt"]
    assert refine["seed"] == ks["seed"] == [seed_id, 0]
    primitive = next(n for n in _load(path)["nodes"] if n["type"] == "PrimitiveInt")
    assert primitive["widgets_values"][1] == "fixed"


def test_reneg_seeds_have_no_randomising_control():
    """Issue 3b/3d: ReNeg's seeds declare control_after_generate false, so a fresh node's seed stays fixed."""
    for node in ("ReNegRefine", "ReNegTrainGlobal"):
        spec = OBJECT_INFO[node]["input"]["required"]["seed"]
        assert spec[0] == "INT" and spec[1]["control_after_generate"] is False
        assert not workflow_tools.has_control_widget("seed", spec)
