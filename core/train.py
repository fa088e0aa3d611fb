"""Global ReNeg training: one negative embedding for all prompts by gradient ascent on a reward (paper Sec. 3).

Each optimizer step draws, from a ``torch.Generator`` the trainer owns (saved in checkpoints), ``batch_size``
(DDIM step index ``t`` among the last ``last_k`` steps, prompt, x_T seed) samples -- one ``t`` per sample, as
ReFL draws per forward (``t_sampling="step"``: one ``t`` shared by the step's samples, the earlier rule). The global batch is
split evenly over processes and, within a process, into micro-batches whose gradients accumulate; the
gradients of ``−mean(reward)`` are summed over processes. Because the draws do not depend on the number of
processes or the micro-batch size, a run's result depends only on the recipe (up to float summation order),
and a resumed run replays exactly what an uninterrupted one does.

The forward is :func:`~.objective.reneg_objective` (the same one per-prompt refinement uses).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .checkpoint import load_state, save_state, state_path
from .ddim import initial_latents, make_scheduler, sample
from .distributed import DistContext
from .embedding_io import check_compatible, save_embedding
from .errors import NothingLearnedError, RenegError
from .model_boundary import DiffusionBackend, encode_fp32, frozen_entries
from .outputs import CLI_CHOICES, OutputLock, RunChoices
from .objective import draw_step_index, reneg_objective
from .rewards.base import Reward
from .training_log import log_paths, plot_rewards, write_csv
from .train_outputs import check_output, clear_previews

MIXED_PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Config fields that do not change the optimisation (may differ between a run and its resumption).
NON_RECIPE_FIELDS = ("micro_batch", "gradient_checkpointing", "save_every", "preview_every", "preview_prompt")
#: Recipe fields added later, with the value a saved recipe without them was trained with (for --resume).
RECIPE_DEFAULTS = {"t_sampling": "step", "weight_decay_target": "zero", "freeze_pooled": False}

ProgressFn = Callable[[int, int, float, Optional[torch.Tensor]], None]


@dataclass
class TrainConfig:
    """Recipe and run settings; defaults are the paper's (SD1.5, HPSv2.1)."""

    steps: int = 4000
    batch_size: int = 64          #: global batch per optimizer step (all processes, all micro-batches)
    micro_batch: int = 8          #: samples per forward/backward on one process
    lr: float = 5e-3
    weight_decay: float = 1e-2    #: AdamW's decoupled weight decay (torch default)
    warmup_steps: int = 0
    lr_schedule: str = "cosine"   #: "cosine" or "constant" (both after linear warm-up)
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    last_k: int = 10              #: t is drawn uniformly from the last ``last_k`` DDIM steps
    t_sampling: str = "sample"    #: "sample": one t per sample; "step": one t per optimizer step (earlier rule)
    weight_decay_target: str = "zero"  #: "zero": AdamW's decay toward 0; "init": decay toward the start embedding
    height: int = 512
    width: int = 512
    seed: int = 0
    mixed_precision: str = "no"   #: "no", "fp16" or "bf16" autocast; the embedding stays fp32
    max_grad_norm: float = 0.0    #: clip the embedding gradient (0: off)
    gradient_checkpointing: bool = False
    save_every: int = 0           #: write ``<out>`` and ``<out>.state`` every N steps (0: only at the end)
    preview_every: int = 0        #: pass a preview image to ``progress`` every N steps (0: never)
    preview_prompt: Optional[str] = None  #: default: the first training prompt
    freeze_pooled: bool = False   #: SDXL: keep the pooled part of the negative at its start (learn the context only)

    def validate(self, world_size: int = 1) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise RenegError(msg)

        need(self.steps >= 1, f"steps must be >= 1 (got {self.steps}).")
        need(self.batch_size >= 1 and self.micro_batch >= 1, "batch_size and micro_batch must be >= 1.")
        need(self.batch_size % world_size == 0,
             f"batch_size {self.batch_size} must be divisible by the number of processes ({world_size}).")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr}).")
        need(1 <= self.num_inference_steps, "num_inference_steps must be >= 1.")
        need(self.last_k >= 1, "last_k must be >= 1.")
        need(self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {sorted(MIXED_PRECISION)} (got {self.mixed_precision!r}).")
        need(self.lr_schedule in ("cosine", "constant"),
             f"lr_schedule must be 'cosine' or 'constant' (got {self.lr_schedule!r}).")
        need(0 <= self.warmup_steps < self.steps or self.warmup_steps == 0, "warmup_steps must be < steps.")
        need(self.height > 0 and self.width > 0, "height and width must be positive.")
        need(self.t_sampling in ("sample", "step"),
             f"t_sampling must be 'sample' or 'step' (got {self.t_sampling!r}).")
        need(self.weight_decay_target in ("zero", "init"),
             f"weight_decay_target must be 'zero' or 'init' (got {self.weight_decay_target!r}).")

    def recipe(self) -> dict:
        """The fields that define the optimisation (stored in the embedding metadata and checkpoints)."""
        return {k: v for k, v in asdict(self).items() if k not in NON_RECIPE_FIELDS}


@dataclass
class TrainCallbacks:
    """Host hooks. ``progress(step, total, mean_reward, preview_or_None)`` runs after every optimizer step on
    the main process; ``should_stop()`` is polled before every step (then the run saves and returns)."""

    progress: Optional[ProgressFn] = None
    should_stop: Optional[Callable[[], bool]] = None


@dataclass
class TrainResult:
    negative: torch.Tensor         #: ``[1, T, D]`` fp32 on CPU
    step: int                      #: optimizer steps done
    total_steps: int
    skipped_steps: int             #: steps whose gradient was NaN/Inf (no update)
    stopped: bool                  #: interrupted by ``should_stop`` before ``total_steps``
    log: list[dict] = field(default_factory=list)
    out: Optional[Path] = None


def default_resolution(backend: DiffusionBackend, fallback: int = 512) -> int:
    """Native image size of a diffusers backend (UNet sample size x VAE factor), else ``fallback``."""
    unet = getattr(backend, "unet", None)
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) * backend.vae_scale_factor if isinstance(size, int) else fallback


def autocast_context(device: torch.device, mixed_precision: str):
    """``torch.autocast`` for "fp16"/"bf16", a no-op context for "no"."""
    dtype = MIXED_PRECISION[mixed_precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class RewardOutsideAutocast:
    """Runs a reward with autocast disabled on float32 images: mixed precision applies to the diffusion model;
    the reward computes in its own dtype (and its caches never see autocast dtypes)."""

    def __init__(self, reward: Reward):
        self.reward, self.name = reward, getattr(reward, "name", type(reward).__name__)

    def to(self, device=None, dtype=None) -> "RewardOutsideAutocast":
        self.reward.to(device, dtype)
        return self

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.reward.score(images.float(), prompts)


def for_precision(reward: Reward, mixed_precision: str) -> Reward:
    """``reward`` itself, or wrapped in :class:`RewardOutsideAutocast` when autocast is on."""
    return reward if MIXED_PRECISION[mixed_precision] is None else RewardOutsideAutocast(reward)


def enable_gradient_checkpointing(backend: DiffusionBackend) -> None:
    fn = getattr(backend, "enable_gradient_checkpointing", None)
    if fn is None:
        raise RenegError(f"Backend {backend.name!r} does not support gradient checkpointing; drop the option.")
    fn()


def make_lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 0 at ``steps`` (or constant)."""
    warm, total, cosine = config.warmup_steps, config.steps, config.lr_schedule == "cosine"

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def prompts_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


@dataclass
class StepDraw:
    """What one optimizer step uses: per sample a DDIM step index, a prompt index and an x_T seed."""

    step_indices: list[int]
    prompt_ids: list[int]
    seeds: list[int]

    @property
    def step_index(self) -> float:
        """The step index (its mean over the samples when they differ), for logs."""
        return self.step_indices[0] if len(set(self.step_indices)) == 1 else \
            round(sum(self.step_indices) / len(self.step_indices), 2)


def draw_step(generator: torch.Generator, n_prompts: int, config: TrainConfig) -> StepDraw:
    """The draws of one optimizer step, all up front (so they do not depend on micro-batch or world size).

    With one sample both rules draw the same numbers (a batch of one trains as before per-sample t existed).
    """
    n, k = config.num_inference_steps, max(1, min(config.last_k, config.num_inference_steps))
    if config.t_sampling == "step":
        ts = [draw_step_index(n, k, generator)] * config.batch_size
    else:
        ts = (n - k + torch.randint(k, (config.batch_size,), generator=generator)).tolist()
    ids = torch.randint(n_prompts, (config.batch_size,), generator=generator).tolist()
    seeds = torch.randint(2 ** 62, (config.batch_size,), generator=generator).tolist()
    return StepDraw(ts, ids, seeds)


def batch_latents(backend: DiffusionBackend, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """x_T for each seed (each drawn as diffusers draws a batch-1 x_T, in the network dtype), stacked."""
    return torch.cat([initial_latents(backend, 1, height, width, s, dtype=backend.dtype) for s in seeds])


@torch.no_grad()
def render(backend: DiffusionBackend, cond: torch.Tensor, negative: torch.Tensor, latents: torch.Tensor,
           num_inference_steps: int, guidance_scale: float, mixed_precision: str = "no",
           scheduler=None) -> torch.Tensor:
    """Full CFG-DDIM generation + decode: images ``[B,3,H,W]`` in [0, 1] (previews, final images, evaluation)."""
    with autocast_context(backend.device, mixed_precision):
        lat = sample(backend, cond, negative, latents, num_inference_steps, guidance_scale, scheduler=scheduler)
        return backend.decode(lat).float()


class _Trainer:
    def __init__(self, backend: DiffusionBackend, reward: Reward, prompts: list[str], config: TrainConfig,
                 callbacks: TrainCallbacks, dist: DistContext, out: Optional[Path], init_negative, meta: dict):
        self.backend, self.prompts, self.config = backend, prompts, config
        self.reward = for_precision(reward, config.mixed_precision)
        self.callbacks, self.dist, self.out, self.meta = callbacks, dist, out, meta
        self.device = backend.device
        init = init_negative if init_negative is not None else encode_fp32(backend, [""])
        check_compatible(init, backend.context_dim, where=f"model '{backend.name}'")
        if init.dim() == 2:
            init = init.unsqueeze(0)
        if init.shape[0] != 1:
            raise RenegError(f"The initial negative must be [1, T, D]; got {list(init.shape)}.")
        self.negative = torch.nn.Parameter(init.detach().to(self.device, torch.float32).clone())
        self.anchor = self.negative.detach().clone()  # the start: target of weight_decay_target="init"
        #: entries kept at the start (SDXL: the pooled row's padding, the pooled part with freeze_pooled); or None
        self.frozen = frozen_entries(backend, self.anchor, config.freeze_pooled)
        to_init = config.weight_decay_target == "init"
        self.optimizer = torch.optim.AdamW([self.negative], lr=config.lr,
                                           weight_decay=0.0 if to_init else config.weight_decay)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(config))
        use_scaler = config.mixed_precision == "fp16" or backend.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 10, enabled=use_scaler)
        self.generator = torch.Generator("cpu").manual_seed(int(config.seed))
        self.scheduler = make_scheduler(backend)
        self.step, self.skipped, self.log = 0, 0, []

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step, "skipped": self.skipped, "log": self.log,
            "negative": self.negative.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_sched.state_dict(),
            "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
            "recipe": json.dumps(self.config.recipe(), sort_keys=True),
            "prompts_sha256": prompts_digest(self.prompts), "meta": dict(self.meta),
            "identity": self.identity(),
            "anchor": self.anchor.cpu().clone(),
        }

    def identity(self) -> dict:
        """What a resumed run must share besides the recipe: the reward and the model."""
        return {"reward": str(self.meta.get("reward", "")), "model": model_identity(self.backend.name),
                "context_dim": int(self.backend.context_dim)}

    def load_state_dict(self, state: dict, where: str, extend: bool = False,
                        choices: RunChoices = CLI_CHOICES) -> None:
        saved_id = state.get("identity") or {  # states written before the identity was recorded
            "reward": str(state.get("meta", {}).get("reward", "")),
            "model": model_identity(str(state.get("meta", {}).get("base_model", "")))}
        now_id = self.identity()
        id_diff = [k for k in ("reward", "model", "context_dim") if k in saved_id and saved_id[k] != now_id[k]]
        if id_diff:
            details = ", ".join(f"{k}: saved {saved_id[k]!r} vs now {now_id[k]!r}" for k in id_diff)
            raise RenegError(f"{where}: cannot resume with a different {' and '.join(id_diff)} ({details}); that "
                             "would mix two objectives in one embedding. Resume with the same model and reward, "
                             f"or {choices.overwrite} to start over, or choose another output.")
        try:
            theirs = json.loads(state["recipe"])
        except (TypeError, ValueError) as exc:
            raise RenegError(f"{where}: the saved recipe is unreadable; delete the state and start over.") from exc
        mine, theirs = self.config.recipe(), {**RECIPE_DEFAULTS, **theirs}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if extend and "steps" in diff:  # a new total is allowed; the lr schedule is re-planned over it
            if self.config.steps < int(state["step"]):
                raise RenegError(f"{where}: {state['step']} steps are already done; ask for at least that many "
                                 f"steps to continue (got {self.config.steps}).")
            diff.remove("steps")
        if diff:
            details = ", ".join(f"{k}: saved {theirs.get(k)!r} vs now {mine.get(k)!r}" for k in diff)
            raise RenegError(f"{where}: cannot resume with a different recipe ({details}). "
                             "Use the saved settings or start a new run.")
        if state["prompts_sha256"] != prompts_digest(self.prompts):
            raise RenegError(f"{where}: the prompt list differs from the one this run started with; "
                             "resume with the same prompts file.")
        neg = state["negative"]
        check_compatible(neg, self.backend.context_dim, where=f"model '{self.backend.name}'")
        with torch.no_grad():
            self.negative.copy_(neg.to(self.device))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_sched.load_state_dict(state["lr_scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.generator.set_state(state["generator"])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise RenegError(f"{where}: the optimizer/RNG part of the state is damaged ({type(exc).__name__}); "
                             f"delete it, or {choices.overwrite} to start over.") from exc
        if "anchor" in state:
            self.anchor = state["anchor"].to(self.device, torch.float32)
        self.step, self.skipped, self.log = int(state["step"]), int(state["skipped"]), list(state["log"])
        if extend:  # the optimizer holds the old schedule's lr for the next step: take the new schedule's
            for group, base, factor in zip(self.optimizer.param_groups, self.lr_sched.base_lrs,
                                           self.lr_sched.lr_lambdas):
                group["lr"] = base * factor(self.lr_sched.last_epoch)

    def save(self, final: bool) -> None:
        """Write the embedding, ``<out>.state``, the CSV log and the reward curve (main process only)."""
        if self.out is None:
            return
        if self.dist.is_main:
            self._write_files(final)
        self.dist.barrier()

    def _write_files(self, final: bool) -> None:
        status = "complete" if final and self.step >= self.config.steps else "partial"
        if self.step > 0 and self.skipped >= self.step:
            status = "failed"  # every step was skipped: nothing was learned
        save_embedding(self.out, self.negative.detach().cpu(), overwrite=True,  # our own, checked & locked output
                       **{**self.meta, "steps": self.step, "status": status,
                          "skipped_steps": str(self.skipped), "recipe": self.config.recipe()})
        save_state(state_path(self.out), self.state_dict())
        csv_path, png_path = log_paths(self.out)
        write_csv(self.log, csv_path)
        plot_rewards(self.log, png_path, title=f"ReNeg: {self.meta.get('reward', '')} on "
                                               f"{self.meta.get('base_model', '')}")

    def _save_after_error(self) -> None:
        """On a crash (out of memory, a host exception) keep the last completed step as a resumable partial file."""
        if self.out is None or not self.dist.is_main or self.step == 0:
            return
        step, generator_state = getattr(self, "_step_start", (None, None))
        if step == self.step:  # failed inside a step: rewind its draw so a resume replays it exactly
            self.generator.set_state(generator_state)
        try:
            self._write_files(final=False)
            print(f"[ReNeg] training failed at step {self.step}; partial embedding and state saved to {self.out} "
                  "(resume with --resume).", file=sys.stderr)
        except Exception as exc:  # never hide the original error behind a save error
            print(f"[ReNeg] could not save the partial embedding after the failure: {exc}", file=sys.stderr)

    # ----------------------------------------------------------------- steps
    def _objective_chunk(self, draw: StepDraw, lo: int, hi: int) -> torch.Tensor:
        cfg = self.config
        prompts = [self.prompts[i] for i in draw.prompt_ids[lo:hi]]
        cond = self.backend.encode_prompts(prompts)
        latents = batch_latents(self.backend, draw.seeds[lo:hi], cfg.height, cfg.width)
        with autocast_context(self.device, cfg.mixed_precision):
            rewards, _ = reneg_objective(self.backend, self.reward, prompts, cond, self.negative, latents,
                                         draw.step_indices[lo:hi], cfg.num_inference_steps, cfg.guidance_scale,
                                         scheduler=self.scheduler)
        return rewards.float()

    def train_step(self) -> dict:
        cfg, dist = self.config, self.dist
        started = time.perf_counter()
        draw = draw_step(self.generator, len(self.prompts), cfg)
        share = cfg.batch_size // dist.world_size
        first = dist.rank * share
        self.optimizer.zero_grad(set_to_none=True)
        stats = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, sum of squares
        for lo in range(first, first + share, cfg.micro_batch):
            hi = min(lo + cfg.micro_batch, first + share)
            rewards = self._objective_chunk(draw, lo, hi)
            self.scaler.scale(-rewards.sum() / cfg.batch_size).backward()
            r = rewards.detach().double()
            stats += torch.stack([r.sum(), (r * r).sum()])
        if self.negative.grad is None:  # e.g. guidance_scale <= 1: the negative does not enter the output
            self.negative.grad = torch.zeros_like(self.negative)
        dist.all_reduce_sum(self.negative.grad)
        dist.all_reduce_sum(stats)
        self.scaler.unscale_(self.optimizer)
        grad = self.negative.grad
        if self.frozen is not None:
            grad.masked_fill_(self.frozen, 0.0)
        finite = bool(torch.isfinite(grad).all())
        grad_norm = float(grad.norm()) if finite else float("nan")
        if finite:
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([self.negative], cfg.max_grad_norm)
            if cfg.weight_decay_target == "init" and cfg.weight_decay > 0:  # AdamW's decoupled decay, toward the start
                with torch.no_grad():
                    self.negative.sub_(self.optimizer.param_groups[0]["lr"] * cfg.weight_decay
                                       * (self.negative - self.anchor))
            self.scaler.step(self.optimizer)
            if self.frozen is not None:  # AdamW's weight decay moves them too: back to the start
                with torch.no_grad():
                    self.negative.copy_(torch.where(self.frozen, self.anchor, self.negative))
        else:
            self.skipped += 1
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.lr_sched.step()
        self.step += 1
        n = cfg.batch_size
        mean = float(stats[0] / n)
        var = max(0.0, float(stats[1] / n) - mean * mean)
        row = {"step": self.step, "reward_mean": mean, "reward_std": math.sqrt(var), "lr": lr,
               "step_index": draw.step_index, "grad_norm": grad_norm, "skipped": int(not finite),
               "seconds": round(time.perf_counter() - started, 4)}
        self.log.append(row)
        return row

    def preview(self) -> torch.Tensor:
        cfg = self.config
        prompt = cfg.preview_prompt or self.prompts[0]
        latents = batch_latents(self.backend, [cfg.seed], cfg.height, cfg.width)
        cond = self.backend.encode_prompts([prompt])
        return render(self.backend, cond, self.negative.detach(), latents, cfg.num_inference_steps,
                      cfg.guidance_scale, cfg.mixed_precision, self.scheduler).cpu()

    def run(self) -> TrainResult:
        cfg, cb = self.config, self.callbacks
        stopped = False
        try:
            while self.step < cfg.steps:
                if self.dist.any(bool(cb.should_stop and cb.should_stop())):
                    stopped = True
                    break
                self._step_start = (self.step, self.generator.get_state())
                row = self.train_step()
                due = lambda every: every > 0 and self.step % every == 0  # noqa: E731
                if self.dist.is_main and cb.progress is not None:
                    preview = self.preview() if due(cfg.preview_every) else None
                    cb.progress(self.step, cfg.steps, row["reward_mean"], preview)
                if due(cfg.save_every) and self.step < cfg.steps:
                    self.save(final=False)
        except Exception:  # a crash (e.g. out of memory): keep what was learned, then re-raise
            self._save_after_error()
            raise
        self.save(final=True)
        return TrainResult(self.negative.detach().cpu().clone(), self.step, cfg.steps, self.skipped, stopped,
                           list(self.log), self.out)


def model_identity(name: str) -> str:
    """A model's identity for resume checks: the resolved path of a local model, else its name/hub id."""
    p = Path(os.path.expanduser(name)) if name else None
    return str(p.resolve()) if p is not None and p.exists() else name


def train_global(backend: DiffusionBackend, reward: Reward, prompts: Sequence[str], config: TrainConfig,
                 callbacks: Optional[TrainCallbacks] = None, *, init_negative: Optional[torch.Tensor] = None,
                 out: Optional[str | Path] = None, resume: bool = False, overwrite: bool = False,
                 dist: Optional[DistContext] = None, metadata: Optional[dict] = None,
                 extend: bool = False, choices: RunChoices = CLI_CHOICES) -> TrainResult:
    """Train one negative embedding for ``prompts``; see the module docstring.

    ``init_negative``: ``[1,T,D]`` start (default: the null-text embedding ``encode_prompts([""])``).
    ``out``: ``.safetensors`` path; the embedding (``status`` metadata ``partial``/``complete``), ``<out>.state``
    (resumable checkpoint), ``<stem>.log.csv`` and ``<stem>.rewards.png`` are written there every
    ``save_every`` steps, on interrupt and at the end. ``resume``: continue from ``<out>.state`` (same recipe
    and prompts required). An existing state is never overwritten unless ``overwrite``. ``extend`` (with
    ``resume``): ``config.steps`` may differ from the saved run's (at least the steps done); the run continues
    to the new total with the learning-rate schedule re-planned over it.
    ``dist``: process context of a launched multi-process run (:func:`.distributed.init_distributed`).
    An earlier run's files (:func:`.train_outputs.check_output`) are refused unless ``resume`` or ``overwrite``;
    a run that starts over removes the earlier run's preview images. ``choices``: the host's words for
    resume/overwrite in those messages.
    """
    prompts = [p for p in prompts]
    if not prompts:
        raise RenegError("No training prompts given; pass a non-empty prompt list/file.")
    dist = dist or DistContext(device=backend.device)
    config.validate(dist.world_size)
    out_path = Path(out) if out is not None else None
    if out_path is None and (config.save_every or resume):
        raise RenegError("Checkpoints (save_every/resume) need an output path.")
    if out_path is not None:
        check_output(out_path, resume, overwrite, choices=choices)
    lock = OutputLock(out_path) if out_path is not None and dist.is_main else None
    if lock is not None:
        lock.acquire()
        try:
            check_output(out_path, resume, overwrite, choices=choices)  # again under the lock: another run may
            if overwrite and not resume:                                 # have just finished
                clear_previews(out_path)  # starting over: no earlier run's previews among this run's
        except BaseException:
            lock.release()
            raise
    try:
        return _train_locked(backend, reward, prompts, config, callbacks, init_negative, out_path, resume, dist,
                             metadata, extend, choices)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(backend, reward, prompts, config, callbacks, init_negative, out_path, resume, dist,
                  metadata, extend, choices) -> TrainResult:
    meta = {"base_model": backend.name, "reward": getattr(reward, "name", type(reward).__name__),
            "processes": str(dist.world_size), "weight_decay": str(config.weight_decay),
            "weight_decay_target": config.weight_decay_target, "t_sampling": config.t_sampling, **{k: str(v) for k, v in (metadata or {}).items()}}
    trainer = _Trainer(backend, reward, prompts, config, callbacks or TrainCallbacks(), dist, out_path,
                       init_negative, meta)
    if out_path is not None:
        spath = state_path(out_path)
        if resume:
            trainer.load_state_dict(load_state(spath, choices), str(spath), extend=extend, choices=choices)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(backend)
    result = trainer.run()
    if not result.stopped and result.step > 0 and result.skipped_steps >= result.step:
        raise NothingLearnedError(
            f"All {result.step} training steps were skipped (NaN/Inf gradients): nothing was learned"
            + (f"; {result.out} is marked status=failed and equals its start" if result.out else "")
            + ". Lower the learning rate or guidance, set a max gradient norm, or train in fp32 "
              "(--mixed-precision no / --dtype fp32).")
    return result
