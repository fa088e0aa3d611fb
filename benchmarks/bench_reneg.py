"""ReNeg cost benchmark: training step, per-prompt refinement and, as the unit, one plain CFG generation --
measured side by side in one run on one device, with peak memory and ratios; refinement under both selection
rules (proxy / final image) and B prompts refined in one batch vs one by one.

    python benchmarks/bench_reneg.py                 # CPU, tiny random test models (seconds)
    python benchmarks/bench_reneg.py --model toy --ddim-steps 10 --refine-batch 8 --compare-rules 8 \
        --refine-lr 0.05 --json benchmarks/results/cpu-DATE.json   # CPU, the trained toy world (minutes)
    python benchmarks/bench_reneg.py --gpu           # CUDA, full-size random-weight SD1.5 + ViT-H-14 reward, 512px
    python benchmarks/bench_reneg.py --gpu --micro-batch 8 --gradient-checkpointing --json out.json

Weights are random (nothing is downloaded): the cost of a forward/backward does not depend on the values.
``--model toy`` uses the trained toy world (``core/toy_world``, 32x32, its ``toy`` reward) and its held-out captions;
``--compare-rules N`` then also measures what each selection rule does to the FINAL image on N held-out prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch


# ------------------------------------------------------------------------------------------ full-size models
def sd15_configs() -> dict:
    """diffusers configs of Stable Diffusion 1.5 (UNet, VAE) and its CLIP ViT-L/14 text encoder."""
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
    text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    return {"unet": unet, "vae": vae, "text": text}


def build_sd15_modules(device: str | torch.device = "cpu") -> dict:
    """Random-weight SD1.5 modules built directly on ``device`` (``"meta"`` builds no storage)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15_configs()
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**cfg["unet"]), "vae": AutoencoderKL(**cfg["vae"]),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text"]))}


def build_sd15_backend(device: str, dtype: torch.dtype):
    from diffusers import DDIMScheduler

    from reneg.core.clip_tokenizer import offline_clip_tokenizer
    from reneg.core.ddim import SD_DDIM_CONFIG
    from reneg.core.diffusers_backend import DiffusersBackend

    mods = build_sd15_modules(device)
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG, prediction_type="epsilon")
    backend = DiffusersBackend(mods["unet"], mods["vae"], mods["text_encoder"], offline_clip_tokenizer(),
                               scheduler, name="SD1.5 architecture (random weights)")
    return backend.to(dtype=dtype)


def sdxl_configs() -> dict:
    """diffusers/transformers configs of SDXL base 1.0 (UNet, VAE, CLIP ViT-L/14, OpenCLIP ViT-bigG/14)."""
    unet = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, norm_num_groups=32)
    vae = dict(sd15_configs()["vae"], sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    text = sd15_configs()["text"]
    text_2 = dict(text, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  hidden_act="gelu", projection_dim=1280)
    return {"unet": unet, "vae": vae, "text": text, "text_2": text_2}


def build_sdxl_backend(device: str, dtype: torch.dtype):
    """Random-weight full-size SDXL base as an :class:`SDXLBackend` (VAE kept fp32 under fp16, as the pipeline)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from reneg.core.clip_tokenizer import offline_clip_tokenizer
    from reneg.core.ddim import SD_DDIM_CONFIG
    from reneg.core.sdxl_backend import SDXLBackend

    cfg = sdxl_configs()
    with torch.device(device):
        mods = dict(unet=UNet2DConditionModel(**cfg["unet"]), vae=AutoencoderKL(**cfg["vae"]),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text"])),
                    text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_2"])))
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG, prediction_type="epsilon")
    backend = SDXLBackend(**mods, tokenizer=offline_clip_tokenizer(), tokenizer_2=offline_clip_tokenizer("!"),
                          scheduler=scheduler, name="SDXL base architecture (random weights)")
    return backend.to(dtype=dtype)


def build_vit_h_reward(device: str, dtype: torch.dtype):
    """An HPSv2-shaped reward: open_clip ViT-H-14 (random weights) with HPS preprocessing."""
    import open_clip

    from reneg.core.rewards.hps import HPS_ARCH, OpenClipReward, build_open_clip

    with torch.device(device):
        model = build_open_clip(HPS_ARCH)
    return OpenClipReward(model, open_clip.get_tokenizer(HPS_ARCH), name="hpsv2.1-arch (random)").to(device, dtype)


# ------------------------------------------------------------------------------------------ measuring
class Meter:
    """Wall time (device-synchronised) and peak memory of a phase."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, record: dict) -> Iterator[None]:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        record["seconds"] = time.perf_counter() - start
        if self.cuda:
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        else:  # process-wide peak resident set so far (monotonic over the run)
            record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _median_time(meter: Meter, fn, repeats: int) -> tuple[float, dict]:
    fn()  # warm-up (kernel selection, lazy init)
    times, record = [], {}
    for _ in range(repeats):
        with meter.phase(record):
            fn()
        times.append(record["seconds"])
    record["seconds"] = statistics.median(times)
    return record["seconds"], record


def run(args: argparse.Namespace) -> dict:
    from reneg.core.refine import refine_negative
    from reneg.core.train import TrainConfig, batch_latents, render, train_global

    if args.gpu or args.full_size:
        device = torch.device(args.device or "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device (or pass --full-size --device cpu for a slow CPU check).")
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        backend = build_sd15_backend(str(device), dtype)
        reward = build_vit_h_reward(str(device), dtype)
        size = args.resolution or 512
    else:
        from reneg.core.rewards import build_reward
        from reneg.core.tiny_models import load_tiny_backend

        device, dtype = torch.device("cpu"), torch.float32
        if args.model.startswith("toy"):
            from reneg.core.toy_world.load import load_toy_backend

            backend = load_toy_backend(args.model)
        else:
            backend = load_tiny_backend(args.model)
        reward = build_reward(args.reward or ("toy" if args.model.startswith("toy") else "tiny"))
        size = args.resolution or (32 if args.model.startswith("toy") else 64)
    if args.gradient_checkpointing:
        backend.enable_gradient_checkpointing()
    meter = Meter(device)
    n, g = args.ddim_steps, args.guidance
    toy = args.model.startswith("toy") and not (args.gpu or args.full_size)
    if toy:
        from reneg.core.toy_world import data

        train_prompts, held_out = data.split_prompts()
    else:
        train_prompts = ["a photograph of an astronaut riding a horse", "a bowl of fruit", "a city at night"]
        held_out = ["a photograph of an astronaut riding a horse", "a bowl of fruit", "a city at night",
                    "a red fox in snow", "a lighthouse at dusk", "portrait of an old man", "a cat on a sofa",
                    "a mountain lake at sunrise"]
    prompt = train_prompts[0]
    cond = backend.encode_prompts([prompt])
    null = backend.encode_prompts([""]).float()
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "model": backend.name, "reward": reward.name, "resolution": size, "ddim_steps": n,
                     "micro_batch": args.micro_batch, "dtype": str(dtype).replace("torch.", ""),
                     "gradient_checkpointing": args.gradient_checkpointing, "threads": torch.get_num_threads(),
                     "refine_lr": args.refine_lr}

    # 1. the unit: one plain 30-step CFG generation (B=1) + VAE decode
    latents = batch_latents(backend, [0], size, size)
    gen_s, gen = _median_time(meter, lambda: render(backend, cond, null, latents, n, g), args.repeats)
    results["generation"] = gen

    # 2. training: optimizer steps of micro-batch m (prefix, one grad step, decode, reward, backward, AdamW)
    m = args.micro_batch
    steps = args.repeats + 1
    config = TrainConfig(steps=steps, batch_size=m, micro_batch=m, num_inference_steps=n, guidance_scale=g,
                         last_k=10, height=size, width=size, seed=0)
    train: dict = {}
    with meter.phase(train):
        result = train_global(backend, reward, train_prompts[:3], config)
    step_times = [row["seconds"] for row in result.log[1:]]  # the first step is warm-up
    train["seconds_per_step"] = statistics.median(step_times)
    train["samples_per_s"] = m / train["seconds_per_step"]
    train["phase_seconds"] = train.pop("seconds")  # whole phase incl. the warm-up step
    results["train_step"] = train

    # 3. refinement: 10 steps (patience off) + the final image, under both selection rules
    for rule in ("proxy", "final"):
        refine: dict = {}
        with meter.phase(refine):
            res = refine_negative(backend, reward, prompt, null, seed=0, max_steps=10, patience=11, lr=args.refine_lr,
                                  num_inference_steps=n, guidance_scale=g, height=size, width=size,
                                  final_image=True, selection=rule)
        refine["iterates"] = len(res.trace)
        refine["step_index"] = res.step_index
        results[f"refine_{rule}"] = refine
    results["refine_10_steps_plus_image"] = results["refine_proxy"]  # the earlier key (proxy rule + final render)

    # 4. batching: B prompts refined in one batch vs one by one (same settings, patience off)
    from reneg.core.refine import RefineConfig, refine_batch

    b = args.refine_batch
    prompts = [held_out[k % len(held_out)] for k in range(b)]
    rcfg = RefineConfig(max_steps=args.batch_refine_steps, patience=99, lr=args.refine_lr, num_inference_steps=n,
                        guidance_scale=g, height=size, width=size)
    batched: dict = {}
    with meter.phase(batched):
        refine_batch(backend, reward, prompts, null, list(range(b)), rcfg)
    single: dict = {}
    with meter.phase(single):
        for k, p in enumerate(prompts):
            refine_batch(backend, reward, [p], null, [k], rcfg)
    results["refine_batching"] = {"prompts": b, "max_steps": rcfg.max_steps, "selection": rcfg.selection,
                                  "batched_seconds": batched["seconds"], "one_by_one_seconds": single["seconds"],
                                  "speedup": single["seconds"] / batched["seconds"]}

    # 5. what each selection rule does to the FINAL image (start = the null text; paper settings: <= 10 steps,
    #    patience 3), on held-out prompts, batched
    if args.compare_rules:
        results["rule_comparison"] = compare_rules(backend, reward, held_out[:args.compare_rules], null, size, n, g,
                                                   args.refine_lr)

    per_sample = train["seconds_per_step"] / m
    results["ratios"] = {
        "train_sample_over_generation": per_sample / gen_s,
        "refine_over_generation": results["refine_proxy"]["seconds"] / gen_s,
        "refine_proxy_over_generation": results["refine_proxy"]["seconds"] / gen_s,
        "refine_final_over_generation": results["refine_final"]["seconds"] / gen_s,
        "paper_run_hours_estimate": 4000 * 64 * per_sample / 3600,  # 4000 steps x batch 64, one device
    }
    return results


def compare_rules(backend, reward, prompts, init, size: int, n: int, g: float, lr: float,
                  max_steps: int = 10, patience: int = 3) -> dict:
    """Final-image reward of the start negative vs the refined one under each selection rule, per prompt.

    Both images are rendered by the engine's CFG-DDIM from the same x_T (seed 2000 + i) and scored by ``reward``
    here, independently of the refinement's own bookkeeping. "worse" counts refined < start beyond float noise
    (1e-4 relative: batched and single renders round differently)."""
    from reneg.core.refine import RefineConfig, refine_batch
    from reneg.core.train import batch_latents, render

    seeds = [2000 + i for i in range(len(prompts))]
    cond = backend.encode_prompts(list(prompts))
    latents = batch_latents(backend, seeds, size, size)
    with torch.no_grad():
        start = reward.score(render(backend, cond, init, latents, n, g), list(prompts)).float().cpu()
    out: dict = {"prompts": list(prompts), "seeds": seeds, "start_negative": "null text", "max_steps": max_steps,
                 "patience": patience, "lr": lr, "start_mean": float(start.mean())}
    for rule in ("final", "proxy"):
        t0 = time.perf_counter()
        res = refine_batch(backend, reward, list(prompts), init, seeds,
                           RefineConfig(max_steps=max_steps, patience=patience, lr=lr, num_inference_steps=n,
                                        guidance_scale=g, height=size, width=size, selection=rule),
                           final_image=True)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            refined = reward.score(torch.cat([r.image for r in res]).to(backend.device),
                                   list(prompts)).float().cpu()
        tol = 1e-4 * torch.clamp(start.abs(), min=1.0)
        out[rule] = {"seconds": seconds, "refined_mean": float(refined.mean()),
                     "mean_gain": float((refined - start).mean()),
                     "worse": int((refined < start - tol).sum()), "better": int((refined > start + tol).sum()),
                     "kept_start": sum(r.best_step == 0 for r in res),
                     "start": [round(float(x), 4) for x in start], "refined": [round(float(x), 4) for x in refined],
                     "best_step": [int(r.best_step) for r in res]}
    return out


def report(results: dict) -> str:
    r = results
    mem_key = "peak_memory_gib" if "peak_memory_gib" in r["generation"] else "peak_rss_gib"
    mem_name = "peak GPU memory" if mem_key == "peak_memory_gib" else "peak RSS (process, cumulative)"
    lines = [
        f"device: {r['device']}  model: {r['model']}  reward: {r['reward']}  {r['resolution']}px  "
        f"{r['ddim_steps']} DDIM steps  dtype {r['dtype']}  threads {r['threads']}"
        f"{'  grad-ckpt' if r['gradient_checkpointing'] else ''}",
        f"  generation (unit, B=1, CFG, decode): {r['generation']['seconds']:.3f} s   "
        f"{mem_name} {r['generation'][mem_key]:.2f} GiB",
        f"  training step (micro-batch {r['micro_batch']}): {r['train_step']['seconds_per_step']:.3f} s/step = "
        f"{r['train_step']['samples_per_s']:.3f} samples/s   {mem_name} {r['train_step'][mem_key]:.2f} GiB",
        f"  refinement (10 steps + final image), proxy rule: {r['refine_proxy']['seconds']:.3f} s   "
        f"{mem_name} {r['refine_proxy'][mem_key]:.2f} GiB",
        f"  refinement, final-image rule (11 scored finished images, 10 steps): {r['refine_final']['seconds']:.3f} s"
        f"   {mem_name} {r['refine_final'][mem_key]:.2f} GiB",
        f"  batched refinement: {r['refine_batching']['prompts']} prompts x {r['refine_batching']['max_steps']} steps "
        f"({r['refine_batching']['selection']} rule): batched {r['refine_batching']['batched_seconds']:.3f} s, one by "
        f"one {r['refine_batching']['one_by_one_seconds']:.3f} s",
        "ratios (same run, same device):",
        f"  one training sample = {r['ratios']['train_sample_over_generation']:.2f} x one generation",
        f"  refinement, proxy rule = {r['ratios']['refine_proxy_over_generation']:.2f} x one generation",
        f"  refinement, final-image rule = {r['ratios']['refine_final_over_generation']:.2f} x one generation",
        f"  batching {r['refine_batching']['prompts']} prompts: {r['refine_batching']['speedup']:.2f} x faster than one "
        "by one",
        f"  paper-scale training (4000 x 64 samples) on this device = "
        f"{r['ratios']['paper_run_hours_estimate']:.2f} h",
    ]
    c = r.get("rule_comparison")
    if c:
        lines.append(f"final-image reward on {len(c['prompts'])} held-out prompts, start ({c['start_negative']}) mean "
                     f"{c['start_mean']:.3f}:")
        for rule in ("final", "proxy"):
            x = c[rule]
            lines.append(f"  {rule} rule: refined mean {x['refined_mean']:.3f} (gain {x['mean_gain']:+.3f}), refined < "
                         f"start {x['worse']}/{len(c['prompts'])}, better {x['better']}, kept the start "
                         f"{x['kept_start']}  ({x['seconds']:.1f} s batched)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="full-size random SD1.5 + ViT-H-14 reward on CUDA (fp16)")
    p.add_argument("--full-size", action="store_true",
                   help="the --gpu models on --device (e.g. a slow CPU check of the full-size path)")
    p.add_argument("--device", default=None, help="device for --full-size (default cuda)")
    p.add_argument("--model", default="tiny", choices=("tiny", "tiny-v", "toy", "toy-2"),
                   help="CPU model: tiny random test models, or the trained toy world")
    p.add_argument("--reward", default=None, help="CPU reward (default: toy for the toy world, else tiny)")
    p.add_argument("--refine-lr", type=float, default=5e-3, help="refinement learning rate (paper: 5e-3)")
    p.add_argument("--compare-rules", type=int, default=0,
                   help="also compare the selection rules' final images on this many held-out prompts")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--ddim-steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--resolution", type=int, default=None, help="default: 512 (--gpu) / 64 (CPU tiny)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--refine-batch", type=int, default=4, help="prompts of the batched-refinement case (default 4)")
    p.add_argument("--batch-refine-steps", type=int, default=3,
                   help="refinement steps in the batching case (default 3)")
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
               "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results = run(args)
    machine["load_average_at_end"] = list(os.getloadavg())
    results["machine"] = machine
    print(report(results))
    print(f"machine: {machine['cpus']} CPUs, load average {machine['load_average_at_start'][0]:.1f} at start, "
          f"{machine['load_average_at_end'][0]:.1f} at end")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
