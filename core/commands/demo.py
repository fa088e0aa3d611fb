"""``reneg demo`` — the main job end to end (offline on the trained toy world, real with SD weights)."""
from __future__ import annotations

import argparse
import os

from .common import DTYPES, add_overwrite_arg, device_arg, int_in, seed_arg
from .reward_args import add_reward_weights_arg


#: Files ``demo`` writes into ``--out`` (an earlier demo's are only replaced with ``--overwrite``).
DEMO_OUTPUTS = ("global.safetensors", "global.safetensors.state", "global.log.csv", "global.rewards.png",
                "results.json", "scores.csv", "summary.csv", "grid.png", "bars.png")


def register(sub) -> None:
    p = sub.add_parser("demo", help="learn a negative, refine it per prompt, compare images (main job)",
                       description="Train a global negative, refine it for each held-out prompt and compare null / "
                                   "global / refined: grid.png, bars.png, results.json in --out.")
    p.add_argument("--model", default=os.environ.get("RENEG_MODEL", "toy"),
                   help="'toy' (trained toy world of coloured shapes, default), 'tiny' (random test model), an "
                        "SD1.x/SD2.x folder, checkpoint or hub id (default from $RENEG_MODEL)")
    p.add_argument("--reward", default=None,
                   help="default: toy on the toy world, synthetic on tiny models, hpsv2.1 otherwise")
    add_reward_weights_arg(p)
    p.add_argument("--train-steps", type=int_in(0, 100000), default=None,
                   help="global training steps (default: 60 on toy, 25 on tiny; 0 on real models = use the "
                        "released embedding)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every step (default 0)")
    p.add_argument("--device", type=device_arg, default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="network dtype (default: fp16 on cuda, fp32 on cpu)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    add_overwrite_arg(p, "the results of an earlier demo in --out")
    p.set_defaults(func=run)


def demo_world(model: str) -> str:
    """``toy`` / ``tiny`` / ``real`` for a ``--model`` value."""
    from ..tiny_models import TINY_MODELS
    from ..toy_world import TOY_MODELS

    return "toy" if model in TOY_MODELS else "tiny" if model in TINY_MODELS else "real"


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo
    from ..outputs import check_output_folder
    from .common import load_backend_from_args
    from .reward_args import build_reward_from_args

    world = demo_world(args.model)
    settings = DemoSettings.for_world(world)
    if args.train_steps is not None:
        settings.train_steps = args.train_steps
    produces = [*DEMO_OUTPUTS, *(f"refined/{i:02d}.safetensors" for i in range(settings.eval_prompts))]
    check_output_folder(args.out, produces, overwrite=args.overwrite, inputs=[args.model, *args.reward_weights])
    backend = load_backend_from_args(args)
    if world == "toy":
        print(f"Using the built-in TOY WORLD '{args.model}': a small trained model of 32x32 coloured shapes with a "
              "toy preference reward, for demos and tests, not for art. Pass --model <SD1.5 folder|checkpoint|hub "
              "id> for real images.")
    elif world == "tiny":
        print(f"Using the built-in RANDOM TEST MODEL '{args.model}' (no weights needed; images are noise-like). "
              "Pass --model toy for the trained toy world, or a real SD model.")
    default_reward = {"toy": "toy", "tiny": "synthetic", "real": "hpsv2.1"}[world]
    reward = build_reward_from_args(args.reward or default_reward, args.reward_weights, backend.device,
                                    backend.dtype)
    run_demo(backend, reward, args.out, world=world, settings=settings, seed=args.seed)
    return 0
