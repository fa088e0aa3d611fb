"""``reneg demo`` — the main job end to end (offline on the random test model, real with SD weights)."""
from __future__ import annotations

import argparse
import os

from .common import DTYPES, add_overwrite_arg, device_arg, int_in, seed_arg
from .reward_args import add_reward_weights_arg


#: Files ``demo`` writes into ``--out`` (an earlier demo's are only replaced with ``--overwrite``).
DEMO_OUTPUTS = ("global.safetensors", "global.safetensors.state", "global.log.csv", "global.rewards.png",
                "refined.safetensors", "results.json", "scores.csv", "summary.csv", "grid.png", "bars.png")


def register(sub) -> None:
    p = sub.add_parser("demo", help="learn a negative, refine it for a prompt, compare images (main job)",
                       description="Train a global negative, refine it for one prompt and compare null / global / "
                                   "refined on held-out prompts: grid.png, bars.png, results.json in --out.")
    p.add_argument("--model", default=os.environ.get("RENEG_MODEL", "tiny"),
                   help="'tiny' (random test model, default), an SD1.x/SD2.x folder, checkpoint or hub id "
                        "(default from $RENEG_MODEL)")
    p.add_argument("--reward", default=None, help="default: synthetic on tiny models, hpsv2.1 otherwise")
    add_reward_weights_arg(p)
    p.add_argument("--train-steps", type=int_in(0, 100000), default=None,
                   help="global training steps (default: 25 on tiny; 0 on real models = use the released embedding)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every step (default 0)")
    p.add_argument("--device", type=device_arg, default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="network dtype (default: fp16 on cuda, fp32 on cpu)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    add_overwrite_arg(p, "the results of an earlier demo in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo
    from ..outputs import check_output_folder
    from ..tiny_models import TINY_MODELS
    from .common import load_backend_from_args
    from .reward_args import build_reward_from_args

    check_output_folder(args.out, DEMO_OUTPUTS, overwrite=args.overwrite, inputs=[args.model, *args.reward_weights])
    tiny = args.model in TINY_MODELS
    backend = load_backend_from_args(args)
    if tiny:
        print(f"Using the built-in RANDOM TEST MODEL '{args.model}' (no weights needed; images are noise-like). "
              "Pass --model <SD1.5 folder|checkpoint|hub id> for real images.")
    reward = build_reward_from_args(args.reward or ("synthetic" if tiny else "hpsv2.1"), args.reward_weights,
                                    backend.device, backend.dtype)
    settings = DemoSettings.for_backend(backend, tiny)
    if args.train_steps is not None:
        settings.train_steps = args.train_steps
    run_demo(backend, reward, args.out, tiny=tiny, settings=settings, seed=args.seed)
    return 0
