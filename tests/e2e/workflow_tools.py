"""ComfyUI workflow (UI format, as in ``example_workflows/``) -> API prompt, using the server's ``/object_info``.

The frontend does this conversion in JavaScript; this is the small subset our example workflows use: widget
values are assigned to the node's widget inputs in schema order (required, then optional), an input with
``control_after_generate`` carries one extra value — and so does any INT input named ``seed``/``noise_seed``
unless its spec says ``control_after_generate: false`` (the frontend's legacy rule, which shifted the saved values
of ``reneg_train.json``, issue 3a) — and linked inputs become ``[source_id, slot]``. The browser tests check the
real frontend; this converter lets CI check the examples against a recorded ``/object_info``.
"""
from __future__ import annotations

import json
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: Combo inputs whose options are the server's files (they differ per machine): not recorded, not checked.
DYNAMIC_COMBOS = ("ckpt_name", "embedding", "weights")


def links_by_id(workflow: dict) -> dict[int, list]:
    return {link[0]: link for link in workflow["links"]}


def check_structure(workflow: dict) -> None:
    """Links and node sockets agree (ids, slots, types); raises AssertionError naming the first problem."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for lid, src, slot, dst, dslot, typ in workflow["links"]:
        out = nodes[src]["outputs"][slot]
        inp = nodes[dst]["inputs"][dslot]
        assert lid in (out["links"] or []), f"link {lid} not listed on node {src} output {slot}"
        assert inp["link"] == lid, f"node {dst} input {inp['name']} does not point at link {lid}"
        assert out["type"] == inp["type"] == typ, f"link {lid}: {out['type']} -> {inp['type']} ({typ})"
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)
    assert workflow["last_node_id"] >= max(nodes, default=0)


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def input_specs(node_info: dict) -> dict[str, list]:
    """``{input name: spec}`` in the order the frontend creates the widgets (``input_order`` when given)."""
    info = node_info["input"]
    specs = {**info.get("required", {}), **info.get("optional", {})}
    order = node_info.get("input_order")
    if order:
        names = [n for group in ("required", "optional") for n in order.get(group, [])]
        specs = {n: specs[n] for n in names if n in specs} | specs
    return specs


def has_control_widget(name: str, spec: list) -> bool:
    """Whether the frontend (1.27) adds a 'control after generate' widget after this input."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = opts.get("control_after_generate")
    if control is None:  # legacy convention: INT inputs named seed / noise_seed get one
        return spec[0] == "INT" and name in ("seed", "noise_seed")
    return bool(control)


def out_of_range(prompt: dict[str, dict[str, Any]], object_info: dict) -> list[str]:
    """Widget values the server would refuse: numbers outside min/max, combo values not offered, wrong types."""
    problems = []
    for nid, node in prompt.items():
        specs = input_specs(object_info[node["class_type"]])
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                continue  # a link
            kind, opts = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {}) or {}
            where = f"node {nid} ({node['class_type']}) {name}={value!r}"
            if kind in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                        kind == "INT" and not float(value).is_integer()):
                    problems.append(f"{where}: not a {kind}")
                elif ("min" in opts and value < opts["min"]) or ("max" in opts and value > opts["max"]):
                    problems.append(f"{where}: outside [{opts.get('min')}, {opts.get('max')}]")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: not a BOOLEAN")
            elif kind == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: not a STRING")
            elif kind == "COMBO" or isinstance(kind, list):
                options = kind if isinstance(kind, list) else opts.get("options")
                if options is not None and name not in DYNAMIC_COMBOS and value not in options:
                    problems.append(f"{where}: not one of {options}")
    return problems


def to_api(workflow: dict, object_info: dict) -> dict[str, dict[str, Any]]:
    links = links_by_id(workflow)
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        specs = input_specs(object_info[node["type"]])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for name, spec in specs.items():
            if _is_widget(spec):
                if not values:
                    raise AssertionError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
                inputs[name] = values.pop(0)
                if has_control_widget(name, spec):
                    if not values:
                        raise AssertionError(f"node {node['id']} ({node['type']}): no 'control after generate' "
                                             f"value after {name!r}")
                    values.pop(0)
            if name in linked:
                _, src, slot, *_ = linked[name]
                inputs[name] = [str(src), slot]
        if values:
            raise AssertionError(f"node {node['id']} ({node['type']}): {len(values)} unused widget values {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def recordable_object_info(object_info: dict, node_types) -> dict:
    """The part of ``/object_info`` the examples use, without per-machine file lists (for tests/fixtures/)."""
    out = {}
    for node_type in sorted(set(node_types)):
        info = json.loads(json.dumps(object_info[node_type]))
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                if name in DYNAMIC_COMBOS:
                    if isinstance(spec[0], list):
                        spec[0] = []
                    elif len(spec) > 1 and isinstance(spec[1], dict) and "options" in spec[1]:
                        spec[1]["options"] = []
        out[node_type] = {k: info[k] for k in ("input", "input_order", "output", "output_name") if k in info}
    return out
