"""The GPU benchmark suite of issue 13: every figure the targets need, measured side by side in ONE run.

    bash benchmarks/gpu_suite.sh                      # on the lent GPU (see that file: wheels, $OUT)
    python benchmarks/gpu_suite.py --cpu-smoke --out /tmp/suite   # plumbing check on CPU with the tiny models

Rows (SD1.5 architecture, random weights — cost does not depend on values — 512², DDIM 30, CFG 7.5):

* ``pipeline_generation``: plain eager diffusers ``StableDiffusionPipeline`` (the unit of every ratio);
* ``generation_text_negative`` / ``generation_embedding``: our CFG-DDIM with an encoded text negative vs a loaded
  ReNeg tensor (target: embedding ≤ 1.00× text);
* ``train_*``: global training throughput at 2–3 settings (micro-batch, gradient checkpointing, dtype);
* ``refine_b1``: per-prompt refinement, 10 steps + final image, B=1 (target ≤ 3× one pipeline generation,
  peak memory ≤ 8 GB);
* ``refine_batched``: batched refinement of 8 prompts, if this commit has ``core.refine.refine_batch``
  (target ≤ 1.5× one generation per prompt);
* ``sdxl_generation`` / ``sdxl_train_*``: SDXL base architecture (random weights, fp16 UNet, fp32 VAE), 1024²:
  one CFG-DDIM generation with a ReNeg pair, and global-training throughput + peak memory at the ``--sdxl``
  settings (default micro-batch 2 with gradient checkpointing; no target yet: the figures are the first).

Writes ``<out>/gpu_suite.json`` (figures, ratios, date, GPU, torch version, git commit) and prints a table last.
A row that fails is recorded with its error and the run goes on; the exit code is 1 if any row failed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
TARGETS = {"train_samples_per_s": (">=", 9.0), "refine_x_generation": ("<=", 3.0),
           "batched_refine_x_generation_per_prompt": ("<=", 1.5), "refine_peak_gb": ("<=", 8.0),
           "embedding_over_text_negative_generation": ("<=", 1.00)}
PROMPTS = ["a photograph of an astronaut riding a horse", "a bowl of fruit on a wooden table",
           "a city street at night in the rain", "a portrait of an old fisherman", "a red fox in fresh snow",
           "a watercolor painting of a lighthouse", "a bowl of ramen, studio lighting", "a castle on a hill at dawn"]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_reneg", HERE / "bench_reneg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Timer:
    """Device-synchronised wall time and peak allocated GPU memory (GiB) of a callable, median of repeats."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(repeats):
            self._sync()
            start = time.perf_counter()
            fn()
            self._sync()
            times.append(time.perf_counter() - start)
        row = {"seconds": statistics.median(times), "all_seconds": times}
        if self.cuda:
            row["peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        return row


def build(cpu_smoke: bool):
    """(backend, reward, device, dtype, size, steps) for the GPU run or the CPU plumbing check."""
    if cpu_smoke:
        from reneg.core.rewards import build_reward
        from reneg.core.tiny_models import load_tiny_backend

        return load_tiny_backend("tiny", fresh=True), build_reward("tiny"), torch.device("cpu"), torch.float32, 64, 3
    if not torch.cuda.is_available():
        raise SystemExit("gpu_suite.py needs a CUDA device (use --cpu-smoke for a CPU plumbing check).")
    bench = _bench_module()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = torch.float16
    return (bench.build_sd15_backend("cuda", dtype), bench.build_vit_h_reward("cuda", dtype), torch.device("cuda"),
            dtype, 512, 30)


def build_sdxl(cpu_smoke: bool):
    """(SDXL backend, image size) for the GPU run (full-size random weights) or the CPU check (``tiny-xl``)."""
    if cpu_smoke:
        from reneg.core.tiny_sdxl import load_tiny_sdxl_backend

        return load_tiny_sdxl_backend(fresh=True), 64
    return _bench_module().build_sdxl_backend("cuda", torch.float16), 1024


def sdxl_rows(cpu_smoke: bool, reward, row: Callable, timer: "Timer", repeats: int, n: int, g: float,
              settings: list[tuple[int, bool]], rows: dict) -> None:
    """The SDXL rows (after the SD1.5 ones, whose backend is released first to leave the GPU to SDXL)."""
    from reneg.core.train import TrainConfig, batch_latents, render, train_global

    try:
        backend, size = build_sdxl(cpu_smoke)
    except Exception as exc:  # building must not lose the other rows' figures
        rows["sdxl_generation"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        return
    device = backend.device
    cond = backend.encode_prompts([PROMPTS[0]])
    negative = backend.encode_prompts_fp32(["blurry, low quality"]).to(device)
    latents = batch_latents(backend, [0], size, size)
    row("sdxl_generation", lambda: dict(timer.measure(lambda: render(backend, cond, negative, latents, n, g),
                                                      repeats), resolution=size))
    if any(ckpt for _, ckpt in settings):
        backend.enable_gradient_checkpointing()
    for micro_batch, ckpt in settings:
        def train_row(micro_batch=micro_batch, ckpt=ckpt) -> dict:
            if not ckpt:
                backend.unet.disable_gradient_checkpointing()
                backend.vae.disable_gradient_checkpointing()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            config = TrainConfig(steps=repeats + 1, batch_size=micro_batch, micro_batch=micro_batch,
                                 num_inference_steps=n, guidance_scale=g, last_k=10, height=size, width=size, seed=0)
            result = train_global(backend, reward, PROMPTS, config)
            per_step = statistics.median(r["seconds"] for r in result.log[1:])  # the first step is warm-up
            out = {"micro_batch": micro_batch, "gradient_checkpointing": ckpt, "resolution": size,
                   "seconds_per_step": per_step, "samples_per_s": micro_batch / per_step}
            if device.type == "cuda":
                out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            return out
        row(f"sdxl_train_mb{micro_batch}{'_ckpt' if ckpt else ''}", train_row)


def run_suite(cpu_smoke: bool, repeats: int, train_settings: list[tuple[int, bool]], refine_steps: int = 10,
              sdxl_settings: list[tuple[int, bool]] = ((2, True),)) -> dict:
    from reneg.core import refine as refine_mod
    from reneg.core.train import TrainConfig, batch_latents, render, train_global

    backend, reward, device, dtype, size, n = build(cpu_smoke)
    timer, g = Timer(device), 7.5
    rows: dict[str, dict] = {}

    def row(name: str, fn: Callable[[], dict]) -> None:
        print(f"[suite] {name} ...", flush=True)
        try:
            rows[name] = fn()
        except Exception as exc:  # a benchmark row failing must not lose the other rows' figures
            rows[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(rows[name]["traceback"], file=sys.stderr, flush=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    prompt = PROMPTS[0]
    pipe = backend.pipeline()
    pipe.set_progress_bar_config(disable=True)

    def pipeline_generation() -> dict:
        gen = torch.Generator(device=device)
        return timer.measure(lambda: pipe(prompt, negative_prompt="blurry, low quality", height=size, width=size,
                                          num_inference_steps=n, guidance_scale=g, output_type="pt",
                                          generator=gen.manual_seed(0)), repeats)
    row("pipeline_generation", pipeline_generation)

    cond = backend.encode_prompts([prompt])
    latents = batch_latents(backend, [0], size, size)

    def generation_text_negative() -> dict:
        return timer.measure(lambda: render(backend, cond, backend.encode_prompts(["blurry, low quality"]), latents,
                                            n, g), repeats)
    row("generation_text_negative", generation_text_negative)

    embedding = torch.randn(1, 77, backend.context_dim, generator=torch.Generator().manual_seed(0)) * 0.5
    row("generation_embedding",
        lambda: timer.measure(lambda: render(backend, cond, embedding.to(device), latents, n, g), repeats))

    for micro_batch, ckpt in train_settings:
        name = f"train_mb{micro_batch}{'_ckpt' if ckpt else ''}"

        def train_row(micro_batch=micro_batch, ckpt=ckpt) -> dict:
            if ckpt:
                backend.enable_gradient_checkpointing()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            config = TrainConfig(steps=repeats + 1, batch_size=micro_batch, micro_batch=micro_batch,
                                 num_inference_steps=n, guidance_scale=g, last_k=10, height=size, width=size,
                                 seed=0, mixed_precision="no")
            result = train_global(backend, reward, PROMPTS, config)
            per_step = statistics.median(r["seconds"] for r in result.log[1:])  # the first step is warm-up
            out = {"micro_batch": micro_batch, "gradient_checkpointing": ckpt, "seconds_per_step": per_step,
                   "samples_per_s": micro_batch / per_step}
            if device.type == "cuda":
                out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            return out
        row(name, train_row)

    null = backend.encode_prompts([""]).float()

    def refine_b1() -> dict:
        return timer.measure(lambda: refine_mod.refine_negative(
            backend, reward, prompt, null, seed=0, max_steps=refine_steps, patience=refine_steps + 1, lr=5e-3, num_inference_steps=n,
            guidance_scale=g, height=size, width=size, final_image=True), max(1, repeats - 1), warmup=1)
    row("refine_b1", refine_b1)

    if hasattr(refine_mod, "refine_batch"):
        def refine_batched() -> dict:
            config = refine_mod.RefineConfig(max_steps=refine_steps, patience=refine_steps + 1, lr=5e-3,
                                             num_inference_steps=n, guidance_scale=g, height=size, width=size)
            seeds = list(range(len(PROMPTS)))
            measured = timer.measure(lambda: refine_mod.refine_batch(backend, reward, PROMPTS, null, seeds, config,
                                                                     final_image=True), 1)
            measured["prompts"] = len(PROMPTS)
            return measured
        row("refine_batched", refine_batched)
    else:
        rows["refine_batched"] = {"error": "core.refine.refine_batch does not exist in this commit"}
    if sdxl_settings:
        del pipe, backend
        if device.type == "cuda":
            torch.cuda.empty_cache()
        sdxl_rows(cpu_smoke, reward, row, timer, repeats, n, g, list(sdxl_settings), rows)
    return {"rows": rows, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).replace("torch.", ""), "resolution": size, "ddim_steps": n, "guidance": g}


def summarise(suite: dict) -> dict:
    """The issue's headline fields from the rows (None where a row failed or is missing)."""
    rows = suite["rows"]

    def sec(name: str):
        return rows.get(name, {}).get("seconds")

    unit = sec("pipeline_generation")
    trains = [r["samples_per_s"] for k, r in rows.items() if k.startswith("train_") and "samples_per_s" in r]
    sdxl_trains = [r for k, r in rows.items() if k.startswith("sdxl_train_") and "samples_per_s" in r]
    out = {
        "pipeline_generation_s": unit,
        "train_samples_per_s": max(trains) if trains else None,
        "refine_x_generation": sec("refine_b1") / unit if unit and sec("refine_b1") else None,
        "refine_peak_gb": rows.get("refine_b1", {}).get("peak_gb"),
        "batched_refine_x_generation_per_prompt": (sec("refine_batched") / rows["refine_batched"]["prompts"] / unit
                                                   if unit and sec("refine_batched") else None),
        "embedding_over_text_negative_generation": (sec("generation_embedding") / sec("generation_text_negative")
                                                    if sec("generation_embedding") and sec("generation_text_negative")
                                                    else None),
    }
    if out["train_samples_per_s"]:
        out["paper_scale_hours"] = 4000 * 64 / out["train_samples_per_s"] / 3600
    if sdxl_trains:
        best = max(sdxl_trains, key=lambda r: r["samples_per_s"])
        out["sdxl_train_samples_per_s"], out["sdxl_train_peak_gb"] = best["samples_per_s"], best.get("peak_gb")
        out["sdxl_paper_scale_hours"] = 4000 * 64 / best["samples_per_s"] / 3600
    return out


def table(suite: dict, summary: dict) -> str:
    lines = [f"ReNeg GPU suite — {suite['device']}, torch {suite['torch']}, commit {suite['commit']}, "
             f"{suite['date']}, {suite['resolution']}², DDIM {suite['ddim_steps']}, CFG {suite['guidance']}",
             f"{'row':32} {'seconds':>9} {'peak GB':>8} {'other':>24}"]
    for name, r in suite["rows"].items():
        if "error" in r:
            lines.append(f"{name:32} FAILED: {r['error'][:80]}")
            continue
        s = r.get("seconds", r.get("seconds_per_step"))
        other = f"{r['samples_per_s']:.2f} samples/s" if "samples_per_s" in r else ""
        peak = f"{r['peak_gb']:.2f}" if "peak_gb" in r else "-"
        lines.append(f"{name:32} {s:9.3f} {peak:>8} {other:>24}")
    lines.append(f"{'target':42} {'measured':>10} {'goal':>8}  met")
    for key, (op, goal) in TARGETS.items():
        value = summary.get(key)
        met = "n/a" if value is None else ("yes" if (value >= goal if op == ">=" else value <= goal) else "NO")
        shown = "-" if value is None else f"{value:.3f}"
        lines.append(f"{key:42} {shown:>10} {op}{goal:<7} {met}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_suite.json")
    p.add_argument("--commit", default="unknown", help="git commit of the code measured")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU: checks the plumbing, not speed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", default="8,8c,16c",
                   help="training settings: micro-batch sizes, 'c' = gradient checkpointing (default 8,8c,16c)")
    p.add_argument("--refine-steps", type=int, default=10, help="refinement steps (default 10, the target's)")
    p.add_argument("--sdxl", default="2c",
                   help="SDXL 1024² training settings, as --train (default 2c; '' skips the SDXL rows)")
    args = p.parse_args(argv)
    settings = [(int(s.rstrip("c")), s.endswith("c")) for s in args.train.split(",") if s]
    sdxl = [(int(s.rstrip("c")), s.endswith("c")) for s in args.sdxl.split(",") if s]
    suite = run_suite(args.cpu_smoke, args.repeats, settings, args.refine_steps, sdxl)
    suite.update(commit=args.commit, torch=torch.__version__,
                 date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), cpu_smoke=args.cpu_smoke)
    suite["summary"] = summarise(suite)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(suite, indent=2), encoding="utf-8")
    print(table(suite, suite["summary"]), flush=True)
    failed = [k for k, r in suite["rows"].items() if "error" in r and k != "refine_batched"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
