"""Training checkpoints ``<out>.state``: a ``torch.save`` of tensors, numbers, strings, lists and dicts only, so
``torch.load(weights_only=True)`` reads it; written atomically (a kill never leaves a half-written state)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .embedding_io import atomic_write
from .errors import RenegError

STATE_FORMAT = "reneg-train-state"
STATE_VERSION = 1


def state_path(out: str | Path) -> Path:
    """``<out>.state`` next to the output embedding."""
    out = Path(out)
    return out.with_name(out.name + ".state")


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RenegError(f"No training state at {p}; nothing to resume. Start without --resume.")
    try:
        state = torch.serialization.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RenegError(f"{p}: unreadable training state ({str(exc).splitlines()[0][:200]}). "
                         "Delete it and start again without --resume.") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RenegError(f"{p}: not a ReNeg training state.")
    if state.get("version") != STATE_VERSION:
        raise RenegError(f"{p}: training state version {state.get('version')} is not supported "
                         f"(expected {STATE_VERSION}).")
    return state
