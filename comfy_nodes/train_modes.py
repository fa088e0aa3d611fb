"""What *ReNeg Train Global* does when its save name already has a run: continue, restart or a new name.

Plain Python (no ComfyUI import), so the choice is tested in CI. ``continue`` resumes the saved state and may
change the total ``steps`` (2 → 4 trains two more steps; the learning-rate schedule is re-planned over the new
total); every other setting and the prompts must be the saved run's. ``restart`` replaces the saved run.
``new name`` keeps it and saves under the first free ``<save_name>_00002`` … instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..core.checkpoint import load_state, state_path
from ..core.errors import RenegError
from ..core.outputs import RunChoices
from ..core.train import TrainConfig, prompts_digest
from ..core.train_outputs import existing_run_files
from .files import check_relative_name, with_suffix

CONTINUE, RESTART, NEW_NAME = "continue", "restart", "new name"
IF_EXISTS = (CONTINUE, RESTART, NEW_NAME)


@dataclass(frozen=True)
class TrainPlan:
    out: Path              #: the embedding this run writes (``<out>.state``, log and curve beside it)
    resume: bool           #: continue from ``<out>.state``
    overwrite: bool        #: replace an existing run of ``out``
    done_steps: int = 0    #: steps already in the saved state (0 for a fresh run)

    def describe(self, total: int) -> str:
        if self.resume:
            return f"continued {self.out.name} from step {self.done_steps} to {total}"
        return f"{'restarted' if self.overwrite else 'trained'} {self.out.name} ({total} steps)"


#: The node's words for continuing or starting over a run (its ``if_exists`` input).
NODE_CHOICES = RunChoices(resume=f"set if_exists to '{CONTINUE}'", overwrite=f"set if_exists to '{RESTART}'",
                          no_resume="queue the graph again")


def _taken(out: Path) -> bool:
    """Any file of a run of ``out`` exists (embedding, state, log, curve, previews)."""
    return bool(existing_run_files(out))


def plan_run(directory: str | os.PathLike, save_name: str, if_exists: str, config: TrainConfig,
             prompts: Sequence[str],
             read_state: Callable[[Path], dict] = lambda p: load_state(p, NODE_CHOICES)) -> TrainPlan:
    """Decide where the run goes and whether it resumes. Every refusal happens here, before a model loads, and
    names the ``if_exists`` choice that gets the user what they want."""
    if if_exists not in IF_EXISTS:
        raise RenegError(f"if_exists must be one of {', '.join(IF_EXISTS)} (got {if_exists!r}).")
    name = with_suffix(check_relative_name(save_name, "save name"))
    out = Path(directory) / name
    state = state_path(out)
    if not _taken(out):
        return TrainPlan(out, resume=False, overwrite=False)
    if if_exists == RESTART:
        return TrainPlan(out, resume=False, overwrite=True)
    if if_exists == NEW_NAME:
        stem = name[: -len(".safetensors")]
        for k in range(2, 100_000):
            candidate = Path(directory) / f"{stem}_{k:05d}.safetensors"
            if not _taken(candidate):
                return TrainPlan(candidate, resume=False, overwrite=False)
        raise RenegError(f"No free name left for {stem}_NNNNN: choose another save_name.")
    other_choices = "set if_exists to 'restart' to replace it, or 'new name' to keep it and train a new one"
    if not state.is_file():
        found = ", ".join(existing_run_files(out))
        raise RenegError(f"{out.name} has files of an earlier run ({found}) but no training state ({state.name}) "
                         f"to continue: {other_choices}.")
    saved = read_state(state)
    done = int(saved["step"])
    if config.steps < done:
        raise RenegError(f"{out.name} already has {done} training steps; 'continue' needs steps >= {done} "
                         f"(got {config.steps}). Raise steps to train further, or {other_choices}.")
    try:
        theirs = json.loads(saved["recipe"])
        if not isinstance(theirs, dict):
            raise TypeError
    except (TypeError, ValueError):
        raise RenegError(f"{state.name}: its saved settings are unreadable, so it cannot be continued: "
                         f"{other_choices}.") from None
    mine = config.recipe()
    changed = sorted(k for k in set(mine) | set(theirs) if k != "steps" and mine.get(k) != theirs.get(k))
    if changed:
        details = ", ".join(f"{k} {theirs.get(k)!r} -> {mine.get(k)!r}" for k in changed)
        raise RenegError(f"{out.name} was trained with other settings ({details}); 'continue' can only change "
                         f"steps. Put the saved values back to continue it, or {other_choices}.")
    if saved.get("prompts_sha256") != prompts_digest(list(prompts)):
        raise RenegError(f"{out.name} was trained on other prompts; 'continue' needs the same prompt list. "
                         f"Put the saved prompts back to continue it, or {other_choices}.")
    return TrainPlan(out, resume=True, overwrite=False, done_steps=done)
