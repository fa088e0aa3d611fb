"""Registers ReNeg's webui callbacks exactly once per script load (A1111 clears callbacks on "Reload UI")."""
from __future__ import annotations

import logging

from modules import script_callbacks

from .uncond import apply_to_params

log = logging.getLogger("reneg.a1111")


def _warn(message: str) -> None:
    print(message, flush=True)  # the webui console is where users look; logging may be unconfigured


def on_cfg_denoiser(params) -> None:
    """Replace ``params.text_uncond`` for generations that enabled ReNeg (gated on ``params.denoiser.p``)."""
    apply_to_params(params, warn=_warn)


def _registered(callback_list_name: str, fn) -> bool:
    callbacks = getattr(script_callbacks, "callback_map", {}).get(callback_list_name, [])
    return any(getattr(c, "callback", None) is fn for c in callbacks)


def on_before_ui() -> None:
    """Add the X/Y/Z plot axes (the plot script is loaded by then, and builds its dropdowns afterwards)."""
    from .xyz import add_axes

    if not add_axes():
        _warn("ReNeg: the X/Y/Z plot script is not loaded; no ReNeg axes added.")


def register(ui_tabs=None, ui_settings=None) -> None:
    """Register the CFG hook, the X/Y/Z axes, and the tab/settings builders when given; idempotent."""
    if not _registered("callbacks_cfg_denoiser", on_cfg_denoiser):
        script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="reneg_uncond")
    if not _registered("callbacks_before_ui", on_before_ui):
        script_callbacks.on_before_ui(on_before_ui, name="reneg_xyz_axes")
    if ui_settings is not None and not _registered("callbacks_ui_settings", ui_settings):
        script_callbacks.on_ui_settings(ui_settings, name="reneg_settings")
    if ui_tabs is not None and not _registered("callbacks_ui_tabs", ui_tabs):
        script_callbacks.on_ui_tabs(ui_tabs, name="reneg_tab")
