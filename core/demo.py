"""The main job in one call: learn a global negative, refine it for a prompt, compare on held-out prompts.

With a real SD1.x/SD2.x model it starts from the authors' released embedding for that family (downloaded,
sha256-verified) when available, trains ``train_steps`` more steps on HPSv2.1 (0 by default: the released one is
the global negative), refines for the first evaluation prompt and evaluates null text vs global vs refined.
With the built-in random test model (``tiny``) it trains from the null text on the ``synthetic`` reward, so the
reward gain is visible offline in about a minute on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .embedding_io import load_embedding, save_embedding
from .errors import RenegError
from .evaluate import EvalConfig, evaluate_negatives
from .model_boundary import DiffusionBackend
from .prompts import PromptItem
from .refine import refine_negative
from .released import PACK_EMBEDDINGS_DIR, download_released
from .rewards.base import Reward
from .train import TrainConfig, train_global

TRAIN_PROMPTS = (
    "a cozy cabin in a snowy pine forest at dusk", "portrait of an old fisherman, dramatic light",
    "a red fox curled up in autumn leaves", "a futuristic city skyline at night, neon reflections",
    "a bowl of ramen on a wooden table, steam rising", "watercolor painting of a lighthouse on a cliff",
    "an astronaut riding a horse on the moon", "a hummingbird drinking from a hibiscus flower",
    "a medieval castle on a hill under storm clouds", "a cup of coffee with latte art, morning light",
    "anime girl with silver hair in a cherry blossom garden", "a sailing ship in a stormy sea, oil painting",
    "a golden retriever puppy playing in the grass", "a desert oasis with palm trees at sunset",
    "concept art of a floating island with waterfalls", "a vintage car parked on a rainy street",
)
EVAL_PROMPTS = (
    PromptItem("a mountain lake reflecting snowy peaks at sunrise", "photo"),
    PromptItem("a cute robot reading a book in a library", "concept-art"),
    PromptItem("still life of fruit and flowers, oil on canvas", "paintings"),
    PromptItem("a girl with a red umbrella in the rain, anime style", "anime"),
)


@dataclass
class DemoSettings:
    """Sizes that fit the model: small and fast for the random test models, the paper's for real ones."""

    train_steps: int
    batch_size: int
    micro_batch: int
    lr: float
    size: int
    ddim_steps: int
    refine_steps: int = 10

    @classmethod
    def for_backend(cls, backend: DiffusionBackend, tiny: bool) -> "DemoSettings":
        if tiny:
            return cls(train_steps=25, batch_size=4, micro_batch=4, lr=0.3, size=64, ddim_steps=8)
        return cls(train_steps=0, batch_size=64, micro_batch=4, lr=5e-3, size=512, ddim_steps=30)


def released_start(backend: DiffusionBackend, log: Callable[[str], None]) -> Optional[torch.Tensor]:
    """The released embedding of the model's family (sd1.5 for 768-wide, sd2.1 for 1024-wide), if obtainable."""
    name = {768: "sd1.5", 1024: "sd2.1"}.get(backend.context_dim)
    if name is None:
        return None
    try:
        path = download_released(name, PACK_EMBEDDINGS_DIR)
    except RenegError as exc:
        log(f"note: released {name} embedding unavailable ({exc}); starting from the null text.")
        return None
    log(f"global start: released {name} embedding ({path})")
    return load_embedding(path).tensor


def run_demo(backend: DiffusionBackend, reward: Reward, out_dir: str | Path, *, tiny: bool,
             settings: Optional[DemoSettings] = None, seed: int = 0,
             log: Callable[[str], None] = print) -> dict:
    """Train (or take) a global negative, refine it, evaluate; write everything to ``out_dir``; return a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = settings or DemoSettings.for_backend(backend, tiny)
    null = backend.encode_prompts([""]).float().cpu()
    start = None if tiny else released_start(backend, log)
    global_neg = null if start is None else start
    if s.train_steps > 0:
        log(f"training a global negative: {s.train_steps} steps x batch {s.batch_size} on {len(TRAIN_PROMPTS)} prompts")
        config = TrainConfig(steps=s.train_steps, batch_size=s.batch_size, micro_batch=s.micro_batch, lr=s.lr,
                             num_inference_steps=s.ddim_steps, height=s.size, width=s.size, seed=seed)
        result = train_global(backend, reward, list(TRAIN_PROMPTS), config, init_negative=global_neg,
                              out=out / "global.safetensors", overwrite=True)
        global_neg = result.negative
    else:
        save_embedding(out / "global.safetensors", global_neg, overwrite=True, base_model=backend.name,
                       reward=reward.name)
    prompt = EVAL_PROMPTS[0].text
    log(f"refining for: {prompt!r}")
    refined = refine_negative(backend, reward, prompt, global_neg, seed=seed, max_steps=s.refine_steps,
                              lr=s.lr, num_inference_steps=s.ddim_steps, height=s.size, width=s.size)
    save_embedding(out / "refined.safetensors", refined.best, overwrite=True, base_model=backend.name,
                   reward=reward.name,
                   prompt=prompt, refine_trace=refined.trace)
    log("refine trace: " + ", ".join(f"{v:.3f}" for v in refined.trace))
    negatives = {"null": null, "reneg-global": global_neg, "reneg-refined": refined.best}
    log("evaluating null vs global vs refined on held-out prompts (same seeds)")
    res = evaluate_negatives(backend, negatives, EVAL_PROMPTS, {reward.name: reward},
                             EvalConfig(num_inference_steps=s.ddim_steps, height=s.size, width=s.size, seed=seed,
                                        grid_thumb=max(128, s.size)), out_dir=out,
                             info={"model": backend.name, "demo": True})
    means = {neg: res.means[reward.name][neg]["all"] for neg in negatives}
    for neg, value in means.items():
        log(f"  {reward.name} mean  {neg:14s} {value:9.4f}")
    log(f"wrote {out}/grid.png, bars.png, results.json, global.safetensors, refined.safetensors")
    return {"means": means, "refine_trace": refined.trace, "files": res.files}
