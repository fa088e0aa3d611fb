"""The main job in one call: learn a global negative, refine it for EACH held-out prompt, compare the images.

* ``world="toy"`` (the default of ``reneg demo``): the trained TOY WORLD (``core/toy_world``: 32x32 coloured
  shapes, SD-architecture generator, toy preference reward). It trains a global negative from the null text on
  24 captions, refines it for each of 8 held-out captions and shows null / global / refined side by side -- the
  learned negative visibly removes the blur, haze and clutter the generator produces unprompted. A few minutes
  on a CPU.
* ``world="real"``: an SD1.x/SD2.x model. It starts from the authors' released embedding for that family
  (downloaded, sha256-verified) when available and trains ``train_steps`` more steps (0 by default: the
  released one is the global negative), then refines per prompt and evaluates on HPSv2.1.
* ``world="tiny"``: the random test model (plumbing only; images are noise-like).

Refinement for prompt ``i`` uses the x_T of the evaluation seed of that prompt (``seed + i``): "refine for this
prompt" as a user does it for the image in front of them. The evaluation table, grid and bar chart come from
:mod:`.evaluate` (same seeds for every negative).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .embedding_io import load_embedding, save_embedding
from .errors import RenegError
from .evaluate import EvalConfig, EvalResult, _thumb, summarise, write_outputs
from .model_boundary import DiffusionBackend
from .prompts import PromptItem
from .refine import refine_negative
from .released import PACK_EMBEDDINGS_DIR, download_released
from .rewards.base import Reward
from .train import TrainConfig, batch_latents, render, train_global

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
WORLDS = ("toy", "tiny", "real")
COLUMNS = ("null", "reneg-global", "reneg-refined")


def toy_prompts(n_eval: int = 8) -> tuple[list[str], list[PromptItem]]:
    """The toy world's ReNeg training captions and ``n_eval`` held-out ones (disjoint)."""
    from .toy_world.data import split_prompts

    train, held_out = split_prompts()
    return train, [PromptItem(p, "toy") for p in held_out[:n_eval]]


@dataclass
class DemoSettings:
    """Sizes that fit the model: small and fast for the built-in models, the paper's for real ones."""

    train_steps: int
    batch_size: int
    micro_batch: int
    lr: float
    size: int
    ddim_steps: int
    refine_steps: int = 10
    refine_lr: Optional[float] = None   #: default: ``lr``
    last_k: int = 10                    #: t is drawn from the last ``last_k`` DDIM steps (paper: 10 of 30, a third)
    guidance_scale: float = 7.5
    eval_prompts: int = 8
    grid_thumb: int = 128

    @classmethod
    def for_world(cls, world: str) -> "DemoSettings":
        if world == "toy":
            # the paper's last third of the steps (3 of 10): with t anywhere in 10 steps the reward of noisy
            # one-step predictions rose while the finished images got worse (tests/test_toy_reneg.py)
            return cls(train_steps=60, batch_size=16, micro_batch=16, lr=0.05, size=32, ddim_steps=10,
                       refine_lr=0.05, last_k=3)
        if world == "tiny":
            return cls(train_steps=25, batch_size=4, micro_batch=4, lr=0.3, size=64, ddim_steps=8, eval_prompts=4)
        if world == "real":
            return cls(train_steps=0, batch_size=64, micro_batch=4, lr=5e-3, size=512, ddim_steps=30,
                       grid_thumb=256)
        raise RenegError(f"Unknown demo world {world!r}; choose from {', '.join(WORLDS)}.")


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


def evaluate_per_prompt(backend: DiffusionBackend, columns: dict[str, Sequence[torch.Tensor]],
                        items: Sequence[PromptItem], reward: Reward, config: EvalConfig,
                        out_dir: Optional[Path] = None, info: Optional[dict] = None) -> EvalResult:
    """Like :func:`.evaluate.evaluate_negatives`, but each column holds one negative PER PROMPT.

    Prompt ``i`` is rendered from the x_T of seed ``config.seed + i`` with ``columns[label][i]``.
    """
    result = EvalResult(list(columns), [reward.name], list(dict.fromkeys(it.group for it in items)), [])
    grid: dict[tuple[int, str], torch.Tensor] = {}
    for i, item in enumerate(items):
        seed = config.seed + i
        cond = backend.encode_prompts([item.text])
        latents = batch_latents(backend, [seed], config.height, config.width)
        for label, negatives in columns.items():
            image = render(backend, cond, negatives[i].to(backend.device), latents, config.num_inference_steps,
                           config.guidance_scale, config.mixed_precision)
            with torch.no_grad():
                score = float(reward.score(image, [item.text]).float())
            result.rows.append({"prompt_id": i, "group": item.group, "prompt": item.text, "seed": seed,
                                "negative": label, reward.name: score})
            if i < config.grid_prompts:
                grid[(i, label)] = _thumb(image[0], config.grid_thumb)
    summarise(result)
    if out_dir is not None:
        write_outputs(result, Path(out_dir), config, grid, list(items), info)
    return result


def run_demo(backend: DiffusionBackend, reward: Reward, out_dir: str | Path, *, world: str = "toy",
             settings: Optional[DemoSettings] = None, seed: int = 0,
             train_prompts: Optional[Sequence[str]] = None, eval_items: Optional[Sequence[PromptItem]] = None,
             log: Callable[[str], None] = print) -> dict:
    """Train (or take) a global negative, refine it for each held-out prompt, evaluate; write to ``out_dir``."""
    if world not in WORLDS:
        raise RenegError(f"Unknown demo world {world!r}; choose from {', '.join(WORLDS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = settings or DemoSettings.for_world(world)
    if world == "toy":
        default_train, default_eval = toy_prompts(s.eval_prompts)
    else:
        default_train, default_eval = list(TRAIN_PROMPTS), list(EVAL_PROMPTS)[:s.eval_prompts]
    train_prompts = list(train_prompts or default_train)
    items = list(eval_items or default_eval)
    null = backend.encode_prompts([""]).float().cpu()
    start = released_start(backend, log) if world == "real" else None
    global_neg = null if start is None else start
    train_log: list[dict] = []
    if s.train_steps > 0:
        log(f"training a global negative: {s.train_steps} steps x batch {s.batch_size} on {len(train_prompts)} "
            f"prompts")
        config = TrainConfig(steps=s.train_steps, batch_size=s.batch_size, micro_batch=s.micro_batch, lr=s.lr,
                             num_inference_steps=s.ddim_steps, guidance_scale=s.guidance_scale, height=s.size,
                             width=s.size, seed=seed, last_k=s.last_k)
        result = train_global(backend, reward, train_prompts, config, init_negative=global_neg,
                              out=out / "global.safetensors", overwrite=True)
        global_neg, train_log = result.negative, result.log
    else:
        save_embedding(out / "global.safetensors", global_neg, overwrite=True, base_model=backend.name, reward=reward.name)
    refined, traces = [], []
    (out / "refined").mkdir(exist_ok=True)
    for i, item in enumerate(items):
        res = refine_negative(backend, reward, item.text, global_neg, seed=seed + i, max_steps=s.refine_steps,
                              lr=s.refine_lr or s.lr, num_inference_steps=s.ddim_steps,
                              guidance_scale=s.guidance_scale, height=s.size, width=s.size, last_k=s.last_k)
        refined.append(res.best)
        traces.append(res.trace)
        save_embedding(out / "refined" / f"{i:02d}.safetensors", res.best, overwrite=True, base_model=backend.name,
                       reward=reward.name, prompt=item.text, refine_trace=res.trace)
        log(f"refined for {item.text!r}: {res.trace[0]:.3f} -> {res.best_reward:.3f} ({len(res.trace) - 1} steps)")
    log(f"evaluating null vs global vs refined on {len(items)} held-out prompts (same seeds)")
    columns = {"null": [null] * len(items), "reneg-global": [global_neg] * len(items), "reneg-refined": refined}
    ev = evaluate_per_prompt(backend, columns, items, reward,
                             EvalConfig(num_inference_steps=s.ddim_steps, guidance_scale=s.guidance_scale,
                                        height=s.size, width=s.size, seed=seed, grid_prompts=len(items),
                                        grid_thumb=s.grid_thumb),
                             out_dir=out, info={"model": backend.name, "demo": True, "world": world})
    means = {neg: ev.means[reward.name][neg]["all"] for neg in columns}
    wins = {neg: ev.win_rates[reward.name][neg]["null"] for neg in columns if neg != "null"}
    for neg, value in means.items():
        extra = f"   win rate vs null {wins[neg]:.2f}" if neg in wins else ""
        log(f"  {reward.name} mean  {neg:14s} {value:9.4f}{extra}")
    log(f"wrote {out}/grid.png, bars.png, results.json, global.safetensors, refined/*.safetensors")
    return {"means": means, "win_rates_vs_null": wins, "refine_traces": traces, "train_log": train_log,
            "files": ev.files, "rows": ev.rows}
