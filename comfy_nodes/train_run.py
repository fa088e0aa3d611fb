"""What the *ReNeg Train Global* node does, on ComfyUI objects (imported inside ComfyUI only)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..core.checkpoint import state_path
from ..core.errors import RenegError
from ..core.train import TrainCallbacks, TrainConfig, TrainResult, train_global
from ..core.training_log import log_paths
from .model_adapter import prepared
from .progress import Reporter, comfy_reporter


def model_title(model) -> str:
    """A short description of a ComfyUI MODEL for metadata (the checkpoint file name is not known here)."""
    return f"comfyui:{type(model.model.model_config).__name__}"


def train_embedding(model, clip, vae, reward, prompts: Sequence[str], out: Path, config: TrainConfig,
                    resume: bool, reporter: Optional[Reporter] = None) -> TrainResult:
    """Train (or resume) a global negative into ``out``; on interrupt save the partial file, then re-raise."""
    state = state_path(out)
    if state.exists() and not resume:
        raise RenegError(f"{out.name} already has a training state ({state.name}). Turn on 'resume' to continue "
                         "it, or choose another save name (or delete the old files).")
    reporter = reporter or comfy_reporter(config.steps)
    with prepared(model, vae, clip, name=model_title(model)) as backend:
        reward = reward.to(backend.device)

        def progress(step: int, total: int, mean_reward: float, preview: Optional[torch.Tensor]) -> None:
            reporter.step(step, preview)

        result = train_global(backend, reward, list(prompts), config,
                              TrainCallbacks(progress=progress, should_stop=reporter.should_stop),
                              out=out, resume=resume and state.exists(),
                              metadata={"created_by": "reneg-comfyui"})
    reporter.raise_if_interrupted()  # the partial embedding and state are on disk by now
    return result


def reward_curve_image(out: Path) -> torch.Tensor:
    """The reward-curve PNG written next to ``out`` as a ComfyUI IMAGE ``[1, H, W, 3]``."""
    import numpy as np
    from PIL import Image

    png = log_paths(out)[1]
    if not png.is_file():
        raise RenegError(f"Reward curve {png} was not written.")
    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    with torch.inference_mode(False):
        return torch.from_numpy(arr.copy()).unsqueeze(0)
