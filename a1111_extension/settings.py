"""Settings → ReNeg (``on_ui_settings``) and the helpers that read them. Imports webui modules."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr

from modules import paths, shared

from ..core.rewards.weights import REWARDS_DIR_ENV
from .library import PACK_EMBEDDINGS_DIR

SECTION = ("reneg", "ReNeg")

#: key -> (default, label, component, component args, info)
OPTIONS: dict[str, tuple[Any, str, Any, Optional[dict], str]] = {
    "reneg_dir": ("", "Folder for ReNeg embeddings (trained, refined, downloaded)", gr.Textbox, None,
                  "empty = models/ReNeg; never the webui's embeddings/ folder"),
    "reneg_default_reward": ("hpsv2.1", "Default reward", gr.Textbox, None,
                             "hpsv2.1, hpsv2, pickscore, aesthetic or a mix like hpsv2.1:1,aesthetic:0.5"),
    "reneg_rewards_dir": ("", "Folder with reward weights", gr.Textbox, None,
                          "files/folders by their hub names (HPS_v2.1_compressed.pt, PickScore_v1/, ...); "
                          "empty = models/ReNeg-rewards; $RENEG_REWARDS_DIR and the Hugging Face cache are "
                          "searched next"),
    "reneg_weights_hpsv2_1": ("", "HPSv2.1 weights file (HPS_v2.1_compressed.pt)", gr.Textbox, None, ""),
    "reneg_weights_hpsv2": ("", "HPSv2 weights file (HPS_v2_compressed.pt)", gr.Textbox, None, ""),
    "reneg_weights_pickscore": ("", "PickScore weights folder (PickScore_v1)", gr.Textbox, None, ""),
    "reneg_weights_aesthetic": ("", "Aesthetic predictor weights (sac+logos+ava1-l14-linearMSE.pth)", gr.Textbox,
                                None, ""),
    "reneg_refine_lr": (5e-3, "Refinement learning rate", gr.Number, None, ""),
    "reneg_gradient_checkpointing": (True, "Gradient checkpointing for refinement and training", gr.Checkbox,
                                     None, "less GPU memory, ~30% slower"),
    "reneg_keep_reward_loaded": (True, "Keep the reward model loaded between generations", gr.Checkbox, None,
                                 "faster repeated refinement; uses GPU memory"),
    "reneg_refine_max_rows": (0, "Refine at most this many images of a batch at once", gr.Number, {"precision": 0},
                              "0 = the whole batch in one batched refinement (fastest); lower it if refining a "
                              "large batch runs out of GPU memory"),
    "reneg_save_refined": (False, "Save per-prompt refined embeddings to <ReNeg folder>/refined/", gr.Checkbox,
                           None, ""),
}

REWARD_NAMES = ("hpsv2.1", "hpsv2", "pickscore", "aesthetic")


def on_ui_settings() -> None:
    for key, (default, label, component, args, info) in OPTIONS.items():
        option = shared.OptionInfo(default, label, component, args, section=SECTION)
        if info:
            option = option.info(info)
        shared.opts.add_option(key, option)


def opt(key: str) -> Any:
    """A ReNeg option's current value (its default before the settings UI registered it)."""
    return getattr(shared.opts, key, OPTIONS[key][0])


def reneg_dir() -> Path:
    """Where ReNeg files are listed from first and written to."""
    d = str(opt("reneg_dir") or "").strip()
    return Path(d).expanduser() if d else Path(paths.models_path) / "ReNeg"


def rewards_dir() -> Path:
    """Where the webui looks for reward weights first (Settings → ReNeg, default ``models/ReNeg-rewards``)."""
    d = str(opt("reneg_rewards_dir") or "").strip()
    return Path(d).expanduser() if d else Path(paths.models_path) / "ReNeg-rewards"


def installed_rewards() -> list[str]:
    """Rewards whose weights are present (the reward dropdowns' choices)."""
    from .reward_setup import installed

    return installed(reward_weights(), rewards_dir())


def default_reward(choices: list[str]) -> str:
    """The settings' default reward if installed, else the first installed one, else ''."""
    wanted = str(opt("reneg_default_reward") or "").strip()
    return wanted if wanted in choices else (choices[0] if choices else "")


def embedding_dirs() -> list[Path]:
    return [reneg_dir(), PACK_EMBEDDINGS_DIR]


def reward_weights() -> dict[str, Optional[str]]:
    """``{reward name: explicit weights path}`` from the settings (None = default lookup)."""
    out: dict[str, Optional[str]] = {}
    for name in REWARD_NAMES:
        value = str(opt("reneg_weights_" + name.replace(".", "_")) or "").strip()
        out[name] = value or None
    return out


@contextlib.contextmanager
def rewards_dir_env() -> Iterator[None]:
    """Temporarily expose the settings' reward folder as ``$RENEG_REWARDS_DIR`` (the core's lookup)."""
    folder = str(rewards_dir())
    if os.environ.get(REWARDS_DIR_ENV):
        yield
        return
    os.environ[REWARDS_DIR_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(REWARDS_DIR_ENV, None)
