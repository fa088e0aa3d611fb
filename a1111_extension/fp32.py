"""fp32 where ReNeg's precision matters inside a half-precision webui (no webui import).

* Rewards compute in fp32 whatever dtype the webui runs the model in: built in fp32 and scored on fp32 images
  with autocast off (:func:`fp32_reward`), so an fp16 webui does not round HPSv2.1 scores and their gradients.
* The null-text start of training is encoded with the text encoder temporarily in fp32 (:func:`fp32_module`),
  so it is not rounded through fp16 (the backends' ``encode_prompts_fp32``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..core.train import RewardOutsideAutocast

#: The dtype rewards are built in, whatever the webui's ``devices.dtype``.
REWARD_DTYPE = torch.float32


def fp32_reward(reward) -> RewardOutsideAutocast:
    """``reward`` (already built in fp32) scoring fp32 images with autocast disabled."""
    if isinstance(reward, RewardOutsideAutocast):
        return reward
    return RewardOutsideAutocast(reward)


@contextlib.contextmanager
def fp32_module(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` with fp32 parameters/buffers inside the block, autocast off; the original tensors (whatever
    their dtypes) are put back afterwards, bit for bit (no second rounding)."""
    saved_params = {id(p): p.data for p in module.parameters()}
    saved_buffers = [(m, name, b) for m in module.modules() for name, b in m._buffers.items() if b is not None]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        for p in module.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        for m, name, b in saved_buffers:
            if b.is_floating_point() and b.dtype != torch.float32:
                m._buffers[name] = b.float()
        with torch.autocast(device_type=device.type, enabled=False):
            yield module
    finally:
        for p in module.parameters():
            p.data = saved_params.get(id(p), p.data)
        for m, name, b in saved_buffers:
            m._buffers[name] = b
