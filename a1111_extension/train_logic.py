"""The ReNeg tab's training job without the webui: inputs, output path, live view images, the run itself.

:func:`run_training` drives :func:`..core.train.train_global` with host hooks (progress text, live image,
interrupt); the tab (:mod:`.tab`) supplies webui implementations of those hooks. Tested on a tiny ldm model.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..core.errors import RenegError
from ..core.outputs import RunChoices
from ..core.images import to_pil_images as tensor_to_pil
from ..core.model_boundary import encode_fp32
from ..core.prompts import load_prompts

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def parse_prompts(text: str, file: str = "") -> list[str]:
    """Prompts from the text box (one per line, ``#`` comments skipped) plus an optional prompt file."""
    prompts = [" ".join(line.split()) for line in (text or "").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if file and file.strip():
        prompts += load_prompts(file.strip())
    if not prompts:
        raise RenegError("No training prompts: type some (one per line) or give a prompt file.")
    return prompts


def output_path(folder: str | Path, name: str, forbidden: Sequence[str | Path] = ()) -> Path:
    """``<folder>/<name>.safetensors``; refuses odd names and the webui's textual-inversion folder."""
    name = (name or "").strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not NAME_RE.match(name):
        raise RenegError(f"Output name {name!r} is not valid: use letters, digits, '.', '_', '-' or spaces "
                         "(no folders), e.g. 'my-reneg-sd15'.")
    folder = Path(folder)
    for bad in forbidden:
        if bad and folder.resolve() == Path(bad).resolve():
            raise RenegError(f"{folder} is the webui's textual-inversion embeddings folder; ReNeg files there would "
                             "load as 77-vector textual inversions (SD1.x/SD2.x) or fail to load as broken ones "
                             "(SDXL's two-tensor files). Set another ReNeg folder in Settings → ReNeg.")
    return folder / f"{name}.safetensors"


#: The tab's words for continuing or starting over a run (its two check boxes).
TAB_CHOICES = RunChoices(resume="tick 'Resume from <name>.safetensors.state'",
                         overwrite="tick 'Overwrite an existing run'", no_resume="untick 'Resume'")


def prepare_output(folder: str | Path, name: str, *, resume: bool, overwrite: bool,
                   forbidden: Sequence[str | Path] = ()) -> Path:
    """The output of a tab run, checked before any model or reward is touched: its name, and an earlier
    run's files (embedding, state, log, curve) are only replaced with 'Overwrite' or continued with 'Resume'."""
    from ..core.train_outputs import check_output

    out = output_path(folder, name, forbidden)
    if resume and overwrite:
        raise RenegError("Tick either 'Resume' (continue the saved run) or 'Overwrite' (start over), not both.")
    check_output(out, resume, overwrite, choices=TAB_CHOICES)
    return out


def load_start(choice: str, dirs: Sequence[str | Path], context_dim: int, empty: str) -> Optional[torch.Tensor]:
    """The 'Start from' embedding (None for ``empty``, the empty prompt), checked against the loaded model."""
    from ..core.embedding_io import check_compatible
    from .library import EmbeddingCache, resolve

    if not choice or choice == empty:
        return None
    tensor = EmbeddingCache().load(resolve(choice, dirs).path)[0].tensor
    check_compatible(tensor, context_dim, where="loaded checkpoint")
    return tensor


def curve_image(rewards: Sequence[float], title: str = "ReNeg training reward", size=(640, 360)):
    """Reward per step and a moving average, as a PIL image (the core's reward-curve figure)."""
    from PIL import Image

    from ..core.training_log import reward_curve_figure

    buf = io.BytesIO()
    reward_curve_figure(rewards, title, size).savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def compose(preview, curve):
    """Preview (or nothing) left of the curve, one RGB image for the webui's live-preview slot."""
    from PIL import Image

    if preview is None:
        return curve
    h = max(preview.height, curve.height)
    scale = h / preview.height
    prev = preview.resize((max(1, round(preview.width * scale)), h))
    out = Image.new("RGB", (prev.width + curve.width, h), "white")
    out.paste(prev, (0, 0))
    out.paste(curve, (prev.width, (h - curve.height) // 2))
    return out


@dataclass
class TrainHooks:
    """Host callbacks: progress text, live image, job counters and interrupt polling."""

    set_text: Callable[[str], None] = lambda text: None
    set_image: Callable[[object], None] = lambda image: None
    set_step: Callable[[int, int], None] = lambda step, total: None
    should_stop: Callable[[], bool] = lambda: False
    curve_every: int = 10


@dataclass
class TrainOutcome:
    path: Path
    steps: int
    total: int
    stopped: bool
    rewards: list[float] = field(default_factory=list)
    images: list = field(default_factory=list)  #: [before, after, curve] PIL images

    def html(self) -> str:
        status = "interrupted — partial embedding saved" if self.stopped else "complete"
        last = f"{self.rewards[-1]:.4f}" if self.rewards else "n/a"
        first = f"{self.rewards[0]:.4f}" if self.rewards else "n/a"
        return (f"<p>ReNeg training {status}: {self.steps}/{self.total} steps, reward {first} → {last}.</p>"
                f"<p>Saved <code>{self.path}</code> (use it from the ReNeg dropdown; resumable state in "
                f"<code>{self.path.name}.state</code>).</p>")


def run_training(backend, reward, prompts: Sequence[str], config, out: Path, *, resume: bool = False,
                 overwrite: bool = False, init_negative: Optional[torch.Tensor] = None,
                 hooks: Optional[TrainHooks] = None, metadata: Optional[dict] = None) -> TrainOutcome:
    """Train with live progress; an interrupt stops after the current step and saves a valid (partial) file."""
    from ..core.train import TrainCallbacks, render, train_global
    from ..core.ddim import initial_latents

    hooks = hooks or TrainHooks()
    rewards: list[float] = []
    latest = {"preview": None}

    def progress(step: int, total: int, mean: float, preview: Optional[torch.Tensor]) -> None:
        rewards.append(float(mean))
        hooks.set_step(step, total)
        best = max(r for r in rewards if math.isfinite(r)) if any(math.isfinite(r) for r in rewards) else float("nan")
        hooks.set_text(f"ReNeg training: step {step}/{total}, reward {mean:.4f} (best {best:.4f})")
        if preview is not None:
            latest["preview"] = tensor_to_pil(preview)[0]
        if preview is not None or step == 1 or step % max(1, hooks.curve_every) == 0 or step == total:
            hooks.set_image(compose(latest["preview"], curve_image(rewards)))

    def preview_images(negative: torch.Tensor):
        prompt = config.preview_prompt or prompts[0]
        cond = backend.encode_prompts([prompt])
        latents = initial_latents(backend, 1, config.height, config.width, config.seed)
        with torch.no_grad():
            img = render(backend, cond, negative.to(backend.device), latents, config.num_inference_steps,
                         config.guidance_scale)
        return tensor_to_pil(img.cpu())[0]

    start = init_negative if init_negative is not None else encode_fp32(backend, [""])  # as train_global's
    hooks.set_text("ReNeg training: preparing")
    before = preview_images(start.float()) if config.preview_every else None
    result = train_global(backend, reward, prompts, config, TrainCallbacks(progress=progress,
                                                                           should_stop=hooks.should_stop),
                          init_negative=init_negative, out=out, resume=resume, overwrite=overwrite,
                          metadata=metadata, choices=TAB_CHOICES)
    images = []
    if config.preview_every:
        images = [before, preview_images(result.negative)]
    images.append(curve_image([r["reward_mean"] for r in result.log]))
    return TrainOutcome(Path(out), result.step, result.total_steps, result.stopped,
                        [float(r["reward_mean"]) for r in result.log], images)
