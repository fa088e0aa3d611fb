"""ReNeg: learned negative embeddings with reward guidance (CVPR 2025) — engine, CLI, ComfyUI nodes, A1111.

This folder is the ``reneg`` package for the CLI, tests and A1111, and a ComfyUI custom-node pack. ComfyUI
imports it (under its folder name) after loading its own ``folder_paths`` and ``comfy`` modules; only then are
the nodes exported (V3 ``comfy_entrypoint``). Everywhere else importing the package loads nothing heavy and
nothing from ComfyUI.
"""
import sys


def _inside_comfyui() -> bool:
    return "folder_paths" in sys.modules and "comfy" in sys.modules


if _inside_comfyui():
    try:
        import comfy_api.latest  # noqa: F401  (V3 node API, ComfyUI >= 0.3.48)
    except ImportError as _exc:  # pragma: no cover - depends on the host version
        import logging

        logging.getLogger("reneg").error(
            "ReNeg nodes need ComfyUI's V3 node API (comfy_api.latest, ComfyUI >= 0.3.60): update ComfyUI. (%s)",
            _exc)
    else:
        from .comfy_nodes.nodes import comfy_entrypoint  # noqa: F401

        # The frontend reads example workflows from example_workflows/ by itself; no web directory is needed.
        __all__ = ["comfy_entrypoint"]
