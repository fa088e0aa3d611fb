"""``reneg train`` — learn a global negative embedding (paper defaults). Multi-GPU:
``accelerate launch --multi_gpu --num_processes N -m reneg train ...`` (``--batch-size`` is the global batch; the
result does not depend on N or ``--micro-batch``). Several CPU processes (gloo): the same command plus
``--device cpu`` (``accelerate launch --cpu`` alone starts a single process unless MPI is set up)."""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .common import (add_model_args, ddim_steps_arg, float_in, guidance_arg, int_in, lr_arg, seed_arg,
                     side_arg)
from .reward_args import add_reward_weights_arg


#: Signals that stop training after the current step with everything saved (Ctrl-C, `kill`, docker stop,
#: cluster pre-emption, a closed terminal).
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def register(sub) -> None:
    p = sub.add_parser("train", help="learn a global negative embedding by reward guidance (paper Sec. 3)",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--reward", required=True, help="reward name or mix, e.g. hpsv2.1 or 'hpsv2.1:1,aesthetic:0.5'")
    add_reward_weights_arg(p)
    p.add_argument("--prompts", required=True, help="training prompts: .txt (one per line), .jsonl, .json, .csv, "
                                                    ".tsv or a folder of those")
    p.add_argument("--out", required=True, help="output embedding (.safetensors); checkpoint: <out>.state")
    p.add_argument("--init", default=None, help="initial negative embedding file (default: the null-text embedding)")
    p.add_argument("--steps", type=int_in(1, 10_000_000), default=4000, help="optimizer steps (default 4000)")
    p.add_argument("--batch-size", type=int_in(1, 65536), default=64, help="global batch per step (default 64)")
    p.add_argument("--micro-batch", type=int_in(1, 4096), default=8,
                   help="samples per forward/backward per process (default 8; lower it if memory runs out)")
    p.add_argument("--lr", type=lr_arg, default=5e-3, help="AdamW learning rate (default 5e-3)")
    p.add_argument("--weight-decay", type=float_in(0.0, 10.0), default=1e-2, help="AdamW weight decay (default 0.01)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine", help="(default cosine)")
    p.add_argument("--warmup-steps", type=int_in(0), default=0, help="linear LR warm-up steps (default 0)")
    p.add_argument("--ddim-steps", type=ddim_steps_arg, default=30,
                   help="DDIM steps of the sampler inside training (default 30; --steps is the optimizer steps)")
    p.add_argument("--guidance", "--guidance-scale", dest="guidance", type=guidance_arg, default=7.5,
                   help="CFG scale in training (default 7.5)")
    p.add_argument("--last-k", type=int_in(1, 1000), default=10, help="t is drawn from the last K DDIM steps (default 10)")
    p.add_argument("--t-sampling", choices=("sample", "step"), default="sample",
                   help="one DDIM step index t per sample (default, as ReFL) or one per optimizer step (earlier rule)")
    p.add_argument("--weight-decay-target", choices=("zero", "init"), default="zero",
                   help="AdamW's decay pulls toward 0 (default, the paper's AdamW) or toward the initial embedding")
    p.add_argument("--height", type=side_arg, default=None, help="image height (default: the model's native size)")
    p.add_argument("--width", type=side_arg, default=None, help="image width (default: the model's native size)")
    p.add_argument("--seed", type=seed_arg, default=0, help="default 0")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast dtype (the embedding stays fp32)")
    p.add_argument("--max-grad-norm", type=float_in(0.0, 1e6), default=0.0, help="clip the embedding gradient (0: off)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet/VAE activations")
    p.add_argument("--freeze-pooled", action="store_true",
                   help="SDXL: learn the cross-attention context only; the pooled embedding stays the start's")
    p.add_argument("--save-every", type=int_in(0), default=250,
                   help="checkpoint every N steps (default 250; 0: only at the end)")
    p.add_argument("--preview-every", type=int_in(0), default=0,
                   help="write a preview PNG every N steps into <out stem>.previews/ (0: off)")
    p.add_argument("--preview-prompt", default=None, help="prompt of the previews (default: the first training prompt)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.state")
    p.add_argument("--overwrite", action="store_true",
                   help="start over, replacing <out>, <out>.state, the log/curve and the previews of an earlier run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..diffusers_backend import load_backend
    from ..distributed import init_distributed
    from ..embedding_io import load_embedding
    from ..errors import NonFiniteError, RenegError
    from ..prompts import load_prompts
    from ..train import TrainCallbacks, TrainConfig, check_output, default_resolution, train_global
    from ..training_log import preview_path
    from .common import resolve_device, resolve_dtype, save_images
    from .reward_args import build_reward_from_args

    if args.resume and args.overwrite:
        raise RenegError("Pass either --resume (continue the saved run) or --overwrite (start over), not both.")
    prompts = load_prompts(args.prompts)  # fail fast, before loading models
    check_output(args.out, args.resume, args.overwrite,
                 inputs=[args.prompts, args.init, args.model, *args.reward_weights])
    init = load_embedding(args.init).tensor if args.init else None
    dist = init_distributed(args.device)
    device = dist.device if dist.world_size > 1 else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    backend = load_backend(args.model, device=device, dtype=dtype)
    reward = build_reward_from_args(args.reward, args.reward_weights, device, dtype)
    size = default_resolution(backend)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule,
        num_inference_steps=args.ddim_steps, guidance_scale=args.guidance, last_k=args.last_k,
        t_sampling=args.t_sampling, weight_decay_target=args.weight_decay_target,
        height=args.height or size, width=args.width or size, seed=args.seed,
        mixed_precision=args.mixed_precision, max_grad_norm=args.max_grad_norm,
        gradient_checkpointing=args.gradient_checkpointing, freeze_pooled=args.freeze_pooled,
        save_every=args.save_every,
        preview_every=args.preview_every, preview_prompt=args.preview_prompt)
    out = Path(args.out)
    bar = tqdm(total=config.steps, desc="reneg train", disable=not dist.is_main, dynamic_ncols=True)

    def progress(step, total, reward_mean, preview):
        bar.n = step
        bar.set_postfix(reward=f"{reward_mean:.4f}")
        bar.refresh()
        if preview is not None:
            try:
                # this run's own file: an earlier run's previews were refused or removed before step 1
                save_images(preview, preview_path(out, step))
            except NonFiniteError:  # a diverged preview must not end the run; the steps say if it learns
                tqdm.write(f"step {step}: the preview image is NaN/Inf; not saved")

    interrupted: list[int] = []
    previous: dict = {}

    def on_stop_signal(signum, frame):  # first Ctrl-C/SIGTERM/SIGHUP: save a partial embedding + state and stop
        interrupted.append(signum)
        for sig, handler in previous.items():  # a second signal aborts
            signal.signal(sig, handler)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, on_stop_signal)
    try:
        result = train_global(backend, reward, prompts, config,
                              TrainCallbacks(progress=progress, should_stop=lambda: bool(interrupted)),
                              init_negative=init, out=out, resume=args.resume, overwrite=args.overwrite, dist=dist,
                              metadata={"init": args.init or "null-text", "prompts": Path(args.prompts).name})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.close()
    if result.stopped:
        if dist.is_main:
            print(f"interrupted at step {result.step}: partial embedding {result.out}; continue with --resume")
        return 128 + (interrupted[0] if interrupted else int(signal.SIGINT))
    if dist.is_main:
        print(f"{result.out}: {result.step}/{result.total_steps} steps, {result.skipped_steps} skipped, "
              f"last reward {result.log[-1]['reward_mean']:.4f}" if result.log else f"{result.out}: no steps run")
    return 0
