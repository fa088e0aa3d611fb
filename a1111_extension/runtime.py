"""Webui glue shared by the script and the tab: backend for the loaded model, rewards, grad contexts, progress.

Imports webui modules (``modules.shared``, ``modules.devices``); loaded only inside A1111/Forge.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch

from modules import devices, shared

from ..core.errors import RenegError
from ..core.rewards import build_reward
from . import settings
from .fp32 import REWARD_DTYPE, fp32_reward
from .model_adapter import ForgeBackend, backend_for

log = logging.getLogger("reneg.a1111")

_reward_cache: dict[str, Any] = {}


def loaded_sd_model() -> Any:
    """``shared.sd_model``, loaded first on Forge: Forge keeps a placeholder (``FakeInitialModel``) until the first
    generation and loads the selected checkpoint in ``sd_models.forge_model_reload()``, as its txt2img does."""
    model = shared.sd_model
    if type(model).__name__ == "FakeInitialModel" or model is None:
        from modules import sd_models

        reload = getattr(sd_models, "forge_model_reload", None)
        if reload is not None:
            model, _ = reload()
    return model


def current_backend():
    """A DiffusionBackend over ``shared.sd_model`` (SD1.x/SD2.x, A1111's SDXL, Forge; refuses --lowvram/--medvram,
    inpainting models and the SDXL refiner)."""
    sd_model = loaded_sd_model()
    kwargs = {}
    if not hasattr(sd_model, "forge_objects"):
        kwargs = dict(dtype=getattr(devices, "dtype_unet", None), vae_dtype=getattr(devices, "dtype_vae", None))
        if getattr(sd_model, "is_sdxl", False):  # A1111's SDXL: the size/crop inputs as get_learned_conditioning's
            kwargs.update(cond_dtype=getattr(devices, "dtype", None),
                          crop=(int(getattr(shared.opts, "sdxl_crop_top", 0) or 0),
                                int(getattr(shared.opts, "sdxl_crop_left", 0) or 0)))
    backend = backend_for(sd_model, shared.cmd_opts, **kwargs)
    if isinstance(backend, ForgeBackend):
        backend.prepare_for_grad()
    return backend


def model_hash() -> str:
    m = shared.sd_model
    return str(getattr(m, "sd_model_hash", None) or getattr(getattr(m, "sd_checkpoint_info", None), "hash", "")
               or id(m))


def load_reward(spec: str, device: torch.device):
    """Build (or reuse) the reward ``spec`` with the weights configured in Settings → ReNeg, in fp32 and scored
    with autocast off."""
    spec = (spec or settings.opt("reneg_default_reward") or "hpsv2.1").strip().lower()
    weights = {n: str(path) for n, path in check_reward(spec).items()}
    dtype = REWARD_DTYPE  # fp32 whatever precision the webui runs the model in (see .fp32)
    key = (spec, tuple(sorted(weights.items())), str(device), str(dtype))
    if _reward_cache.get("key") == key:
        return _reward_cache["reward"]
    _reward_cache.clear()
    devices.torch_gc()
    with settings.rewards_dir_env():
        reward = fp32_reward(build_reward(spec, weights or None, device=device, dtype=dtype))
    if settings.opt("reneg_keep_reward_loaded"):
        _reward_cache.update(key=key, reward=reward)
    return reward


def check_reward(spec: str) -> dict:
    """``{reward: weights path}`` for ``spec``; a :class:`RenegError` in the webui's terms (which file, which
    Settings → ReNeg entry) when a reward is unknown, not installed or its file is broken. Loads nothing."""
    from .reward_setup import resolve_spec

    spec = (spec or "").strip().lower()
    if not spec:
        raise RenegError("No reward chosen. " + (reward_note() or "Pick one in the Reward dropdown."))
    return resolve_spec(spec, settings.reward_weights(), settings.rewards_dir())


def reward_note() -> str:
    """Plain-text version of the 'no reward installed' note ('' when one is installed)."""
    import re

    from .reward_setup import status_html

    return re.sub(r"<[^>]+>", "", status_html(settings.installed_rewards(), settings.rewards_dir()))


def release_reward() -> None:
    """Drop a cached reward unless the settings ask to keep it."""
    if not settings.opt("reneg_keep_reward_loaded"):
        _reward_cache.clear()
        devices.torch_gc()


def _weights_only_load(f, *args, **kwargs):
    kwargs.setdefault("weights_only", True)
    return torch.serialization.load(f, *args, **kwargs)


@contextlib.contextmanager
def torch_load_unpatched() -> Iterator[None]:
    """Use torch's own ``weights_only`` loader while ReNeg reads its files.

    A1111 replaces ``torch.load`` by ``modules.safe.load``, whose zip-name check predates newer torch's
    ``.format_version`` record (so it rejects files torch >= 2.4 writes, e.g. ReNeg's ``.state``) and which
    returns None instead of raising. torch's ``weights_only=True`` unpickler is the safe check ReNeg relies on.
    The swap is scoped to the job, which holds the webui's queue lock.
    """
    current = torch.load
    if current is torch.serialization.load:
        yield
        return
    torch.load = _weights_only_load
    try:
        yield
    finally:
        torch.load = current


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """Gradients inside the webui's ``no_grad`` (A1111) or ``inference_mode`` (Forge) processing."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def maybe_checkpointing(backend) -> Iterator[None]:
    if settings.opt("reneg_gradient_checkpointing") and hasattr(backend, "gradient_checkpointing"):
        with backend.gradient_checkpointing():
            yield
    else:
        yield


def interrupted() -> bool:
    return bool(shared.state.interrupted or getattr(shared.state, "skipped", False)
                or getattr(shared.state, "stopping_generation", False))


def set_textinfo(text: str) -> None:
    shared.state.textinfo = text


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, RenegError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
