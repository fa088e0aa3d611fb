"""Test-only A1111 extension (linked into the e2e webui's ``extensions/zz-reneg-probe``): records the conditioning
the sampler really gets.

Its ``on_cfg_denoiser`` callback is registered at ``app_started`` — after every extension's scripts loaded, so it
runs after ReNeg's hook and sees the uncond ReNeg left. For the first denoiser call of each generation it writes
``$RENEG_PROBE_DIR/<n>.safetensors`` (n counts generations) with the uncond's and cond's ``crossattn`` / ``vector``
and, for SDXL, ``adapter_size``: the ReNeg SDXL adapter's own size/crop embedding for this generation's size and the
crop settings in force (``runtime.current_backend().size_embedding``), to compare with the webui's
``vector[:, 1280:]``.
"""
import os
import sys

import torch

from modules import script_callbacks

OUT = os.environ.get("RENEG_PROBE_DIR")
_count = [0]


def _tensors(prefix, cond):
    if isinstance(cond, dict):
        return {f"{prefix}_{k}": v for k, v in cond.items() if isinstance(v, torch.Tensor)}
    return {f"{prefix}_crossattn": cond} if isinstance(cond, torch.Tensor) else {}


def _on_cfg_denoiser(params):
    p = getattr(params.denoiser, "p", None)
    if not OUT or p is None or getattr(p, "_reneg_probe_seen", False):
        return
    p._reneg_probe_seen = True
    from safetensors.torch import save_file

    record = {**_tensors("uncond", params.text_uncond), **_tensors("cond", params.text_cond)}
    pack = sys.modules.get("reneg")
    if getattr(p.sd_model, "is_sdxl", False) and pack is not None:
        from reneg.a1111_extension import runtime

        record["adapter_size"] = runtime.current_backend().size_embedding(p.height, p.width)
    _count[0] += 1
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{_count[0]:04d}.safetensors")
    save_file({k: v.detach().float().cpu().contiguous() for k, v in record.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def _register(*_args):
    script_callbacks.on_cfg_denoiser(_on_cfg_denoiser, name="reneg_e2e_probe")


script_callbacks.on_app_started(_register)
