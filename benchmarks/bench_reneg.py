"""ReNeg cost benchmark: training step, per-prompt refinement and, as the unit, one plain CFG generation --
measured side by side in one run on one device, with peak memory and ratios; refinement under both selection
rules (proxy / final image) and B prompts refined in one batch vs one by one.

    python benchmarks/bench_reneg.py                 # CPU, tiny random test models (seconds)
    python benchmarks/bench_reneg.py --gpu           # CUDA, full-size random-weight SD1.5 + ViT-H-14 reward, 512px
    python benchmarks/bench_reneg.py --gpu --micro-batch 8 --gradient-checkpointing --json out.json

Weights are random (nothing is downloaded): the cost of a forward/backward does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from contextlib import contextmanager
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
        backend = load_tiny_backend(args.model)
        reward = build_reward("tiny")
        size = args.resolution or 64
    if args.gradient_checkpointing:
        backend.enable_gradient_checkpointing()
    meter = Meter(device)
    n, g = args.ddim_steps, args.guidance
    prompt = "a photograph of an astronaut riding a horse"
    cond = backend.encode_prompts([prompt])
    null = backend.encode_prompts([""]).float()
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "model": backend.name, "reward": reward.name, "resolution": size, "ddim_steps": n,
                     "micro_batch": args.micro_batch, "dtype": str(dtype).replace("torch.", ""),
                     "gradient_checkpointing": args.gradient_checkpointing, "threads": torch.get_num_threads()}

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
        result = train_global(backend, reward, [prompt, "a bowl of fruit", "a city at night"], config)
    step_times = [row["seconds"] for row in result.log[1:]]  # the first step is warm-up
    train["seconds_per_step"] = statistics.median(step_times)
    train["samples_per_s"] = m / train["seconds_per_step"]
    train["phase_seconds"] = train.pop("seconds")  # whole phase incl. the warm-up step
    results["train_step"] = train

    # 3. refinement: 10 steps (patience off) + the final image, under both selection rules
    for rule in ("proxy", "final"):
        refine: dict = {}
        with meter.phase(refine):
            res = refine_negative(backend, reward, prompt, null, seed=0, max_steps=10, patience=11, lr=5e-3,
                                  num_inference_steps=n, guidance_scale=g, height=size, width=size,
                                  final_image=True, selection=rule)
        refine["iterates"] = len(res.trace)
        refine["step_index"] = res.step_index
        results[f"refine_{rule}"] = refine
    results["refine_10_steps_plus_image"] = results["refine_proxy"]  # the earlier key (proxy rule + final render)

    # 4. batching: B prompts refined in one batch vs one by one (same settings, patience off)
    from reneg.core.refine import RefineConfig, refine_batch

    b = args.refine_batch
    prompts = [f"{p} {k}" for k, p in zip(range(b), ["a photograph of an astronaut riding a horse",
                                                       "a bowl of fruit", "a city at night", "a red fox in snow"] * b)]
    rcfg = RefineConfig(max_steps=args.batch_refine_steps, patience=99, num_inference_steps=n, guidance_scale=g,
                        height=size, width=size)
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

    per_sample = train["seconds_per_step"] / m
    results["ratios"] = {
        "train_sample_over_generation": per_sample / gen_s,
        "refine_over_generation": results["refine_proxy"]["seconds"] / gen_s,
        "refine_proxy_over_generation": results["refine_proxy"]["seconds"] / gen_s,
        "refine_final_over_generation": results["refine_final"]["seconds"] / gen_s,
        "paper_run_hours_estimate": 4000 * 64 * per_sample / 3600,  # 4000 steps x batch 64, one device
    }
    return results


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
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="full-size random SD1.5 + ViT-H-14 reward on CUDA (fp16)")
    p.add_argument("--full-size", action="store_true",
                   help="the --gpu models on --device (e.g. a slow CPU check of the full-size path)")
    p.add_argument("--device", default=None, help="device for --full-size (default cuda)")
    p.add_argument("--model", default="tiny", choices=("tiny", "tiny-v"), help="CPU test model")
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
    results = run(args)
    print(report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
