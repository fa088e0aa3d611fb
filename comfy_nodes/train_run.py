"""What the *ReNeg Train Global* node does, on ComfyUI objects (imported inside ComfyUI only)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..core.errors import RenegError
from ..core.train import TrainCallbacks, TrainConfig, TrainResult, train_global
from ..core.training_log import log_paths
from .model_adapter import prepared
from .progress import Reporter, comfy_reporter
from .train_modes import NODE_CHOICES, TrainPlan


def model_title(model) -> str:
    """A short description of a ComfyUI MODEL for metadata (the checkpoint file name is not known here)."""
    return f"comfyui:{type(model.model.model_config).__name__}"


def train_embedding(model, clip, vae, reward, prompts: Sequence[str], plan: TrainPlan, config: TrainConfig,
                    reporter: Optional[Reporter] = None) -> TrainResult:
    """Train, continue or restart a global negative as ``plan`` says (see :mod:`.train_modes`); on interrupt
    save the partial file, then re-raise."""
    reporter = reporter or comfy_reporter(config.steps)
    if plan.done_steps:
        reporter.step(plan.done_steps)  # the bar starts where the saved run stopped
    with prepared(model, vae, clip, name=model_title(model)) as backend:
        reward = reward.to(backend.device)
        if backend.pixart:  # all T5 encodings up front (cached on the CPU): the T5 is not needed while training
            backend.cache_prompts([""] + list(prompts))

        def progress(step: int, total: int, mean_reward: float, preview: Optional[torch.Tensor]) -> None:
            reporter.step(step, preview)

        result = train_global(backend, reward, list(prompts), config,
                              TrainCallbacks(progress=progress, should_stop=reporter.should_stop),
                              out=plan.out, resume=plan.resume, overwrite=plan.overwrite, extend=plan.resume,
                              metadata={"created_by": "reneg-comfyui"}, choices=NODE_CHOICES)
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
