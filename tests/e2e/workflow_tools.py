"""ComfyUI workflow (UI format, as in ``example_workflows/``) -> API prompt, using the server's ``/object_info``.

The frontend does this conversion in JavaScript; this is the small subset our example workflows use: widget
values are assigned to the node's widget inputs in schema order (required, then optional), a seed with
``control_after_generate`` carries one extra value, and linked inputs become ``[source_id, slot]``.
"""
from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


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


def to_api(workflow: dict, object_info: dict) -> dict[str, dict[str, Any]]:
    links = links_by_id(workflow)
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]["input"]
        specs = {**info.get("required", {}), **info.get("optional", {})}
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for name, spec in specs.items():
            if _is_widget(spec):
                if not values:
                    raise AssertionError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
                inputs[name] = values.pop(0)
                if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate"):
                    values.pop(0)
            if name in linked:
                _, src, slot, *_ = linked[name]
                inputs[name] = [str(src), slot]
        if values:
            raise AssertionError(f"node {node['id']} ({node['type']}): {len(values)} unused widget values {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
