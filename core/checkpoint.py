"""Training checkpoints ``<out>.state``: a ``torch.save`` of tensors, numbers, strings, lists and dicts only, so
``torch.load(weights_only=True)`` reads it; written atomically (a kill never leaves a half-written state)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .embedding_io import atomic_write
from .errors import RenegError
from .outputs import CLI_CHOICES, RunChoices, sentence

STATE_FORMAT = "reneg-train-state"
STATE_VERSION = 1


def state_path(out: str | Path) -> Path:
    """``<out>.state`` next to the output embedding."""
    out = Path(out)
    return out.with_name(out.name + ".state")


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


#: Keys a state must hold, with the types ``_Trainer.load_state_dict`` needs.
REQUIRED = {"step": int, "skipped": int, "log": list, "negative": torch.Tensor, "optimizer": dict,
            "lr_scheduler": dict, "generator": torch.Tensor, "recipe": str, "prompts_sha256": str}
MAX_STATE_BYTES = 1 << 30


def load_state(path: str | Path, choices: RunChoices = CLI_CHOICES) -> dict[str, Any]:
    """Read and check ``<out>.state``; every problem (missing, empty, truncated, foreign, old) is one error
    (``choices``: the host's words for starting over)."""
    from .embedding_io import clean_cause

    def _unreadable(p: Path, why: str) -> RenegError:
        return RenegError(f"{p}: unreadable training state ({why}); it cannot be resumed. To start again, "
                          f"{choices.overwrite}, or delete it and {choices.no_resume}.")

    p = Path(path)
    if p.is_dir():
        raise RenegError(f"{p} is a folder, not a training state; remove it and {choices.no_resume}.")
    if not p.is_file():
        raise RenegError(f"No training state at {p}; nothing to resume. {sentence(choices.no_resume)}.")
    size = p.stat().st_size
    if size == 0:
        raise _unreadable(p, "the file is empty (0 bytes), e.g. the disk was full when it was saved")
    if size > MAX_STATE_BYTES:
        raise _unreadable(p, f"{size:,} bytes is far more than a ReNeg state holds")
    try:
        state = torch.serialization.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(p, clean_cause(exc)) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RenegError(f"{p}: not a ReNeg training state; delete it (or {choices.overwrite}) or choose another "
                         "output.")
    if state.get("version") != STATE_VERSION:
        raise RenegError(f"{p}: training state version {state.get('version')!r} is not supported "
                         f"(expected {STATE_VERSION}).")
    bad = [k for k, kind in REQUIRED.items() if not isinstance(state.get(k), kind)]
    if bad:
        raise _unreadable(p, f"missing or malformed entries: {', '.join(bad)}")
    if state["step"] < 0 or not 0 <= state["skipped"] <= state["step"]:
        raise _unreadable(p, f"inconsistent step counts (step {state['step']}, skipped {state['skipped']})")
    if not bool(torch.isfinite(state["negative"]).all()):
        raise _unreadable(p, "the saved embedding holds NaN/Inf")
    return state
