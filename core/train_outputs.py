"""The files a training run writes beside its output embedding, and the checks made before a run starts.

A run of ``x.safetensors`` writes ``x.safetensors.state``, ``x.log.csv``, ``x.rewards.png`` and (CLI previews)
``x.previews/step_NNNNNN.png``. A *new* run never replaces any of an earlier run's files unless the user chose to
start over; a resume of the same run keeps updating its own. Hosts name that choice in their own words
(:class:`RunChoices`): the CLI's flags, ComfyUI's ``if_exists`` or the A1111 tab's check boxes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from .checkpoint import state_path
from .errors import OutputError, RenegError
from .outputs import CLI_CHOICES, RunChoices, check_output_file, sentence
from .training_log import log_paths, preview_dir

#: Preview images of a run: ``<stem>.previews/step_NNNNNN.png``.
PREVIEW_GLOB = "step_*.png"


def train_outputs(out: str | Path) -> list[Path]:
    """Every single file a training run writes for ``out``: the embedding, its state, the CSV log, the curve."""
    out = Path(out).expanduser()
    return [out, state_path(out), *log_paths(out)]


def previews_of(out: str | Path) -> list[Path]:
    """The preview images an earlier run of ``out`` left in ``<stem>.previews/`` (sorted)."""
    folder = preview_dir(Path(out).expanduser())
    return sorted(folder.glob(PREVIEW_GLOB)) if folder.is_dir() else []


def existing_run_files(out: str | Path) -> list[str]:
    """Names (relative to ``out``'s folder) of the files an earlier run of ``out`` left there."""
    out = Path(out).expanduser()
    names = [p.name for p in train_outputs(out) if os.path.lexists(p)]
    return names + [f"{p.parent.name}/{p.name}" for p in previews_of(out)]


def _listed(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_output(out: str | Path, resume: bool = False, overwrite: bool = False,
                 inputs: Sequence[Optional[str | Path]] = (), choices: RunChoices = CLI_CHOICES) -> None:
    """The output-path errors of :func:`~.train.train_global` (hosts call it before loading models, to fail
    fast): wrong extension or kind, an input among the outputs, an earlier run's files (embedding, state, log,
    curve, previews) without resume/overwrite, resume without a state, an unwritable folder."""
    out_path = Path(out).expanduser()
    if out_path.suffix.lower() != ".safetensors":
        raise RenegError(f"{out_path}: the output embedding must be a .safetensors file.")
    spath = state_path(out_path)
    for path in train_outputs(out_path):  # kinds, inputs, writability; existence is decided below
        check_output_file(path, overwrite=True, inputs=inputs, what="training output")
    folder = preview_dir(out_path)
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"{folder} is a file; training previews go into a folder of that name. Move the file "
                          "away or choose another output name.")
    if resume and not spath.is_file():
        raise RenegError(f"No training state at {spath}; nothing to resume. {sentence(choices.no_resume)}.")
    if not resume and not overwrite:
        if spath.exists():
            raise RenegError(f"{spath} exists (a previous run of {out_path.name}). {sentence(choices.resume)} to "
                             f"continue it, or {choices.overwrite} to start over.")
        existing = existing_run_files(out_path)
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise OutputError(f"{_listed(existing)} of an earlier run already {verb} in {out_path.parent}; "
                              f"{choices.overwrite} to replace them, or choose another output name.")


def clear_previews(out: str | Path) -> int:
    """Remove an earlier run's preview images of ``out`` (a run that starts over); returns how many."""
    removed = 0
    for p in previews_of(out):
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
