"""``reneg reproduce`` — the paper's Table 2 (and Table 3) in one resumable command.

Null text, a handcrafted negative prompt, the global ReNeg embedding and per-sample refinement from it, on the
HPSv2 benchmark (4 styles x 800) and Parti-Prompts (1,632), scored with HPSv2.1, PickScore and the aesthetic
predictor. Writes table2.md/csv, table3.md, per-benchmark scores/summary/grids under --out. Stop it any time
(Ctrl-C) and run the same command again to continue. Offline: ``--prompts builtin:mini`` or a local file."""
from __future__ import annotations

import argparse

from .common import add_model_args
from .reward_args import add_reward_weights_arg


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="Table 2/3 of the paper: 4 negatives x HPSv2 benchmark + Parti-Prompts",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--reward", default="hpsv2.1", help="refinement reward (default hpsv2.1, the paper's)")
    p.add_argument("--metrics", default="hpsv2.1,pickscore,aesthetic",
                   help="comma-separated metrics (default hpsv2.1,pickscore,aesthetic)")
    add_reward_weights_arg(p)
    p.add_argument("--protocol", choices=("differentiable", "benchmark", "both"), default="both",
                   help="score HPS-style metrics with the training preprocessing, as the official HPSv2 benchmark "
                        "reads images (NAME@benchmark: 8-bit JPEG, PIL resize), or both (default)")
    p.add_argument("--benchmarks", default="hpsv2,parti",
                   help="comma-separated hub prompt sets: hpsv2, parti (default both; needs the hub or its cache)")
    p.add_argument("--prompts", default=None,
                   help="instead of --benchmarks: a local prompt file/folder or 'builtin:mini' (offline, 4 styles)")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts of each group (style/category)")
    p.add_argument("--global", dest="global_negative", default=None,
                   help="global ReNeg embedding file (default: the released one of the model's family, downloaded)")
    p.add_argument("--handcrafted", default="preset:reneg-readme",
                   help="handcrafted negative: 'preset:NAME' or a prompt text (default: the authors' README example)")
    p.add_argument("--no-per-sample", action="store_true", help="skip the per-sample refinement row")
    p.add_argument("--refine-steps", type=int, default=10, help="per-sample refinement steps (default 10)")
    p.add_argument("--patience", type=int, default=3, help="refinement patience (default 3)")
    p.add_argument("--refine-lr", type=float, default=5e-3, help="refinement Adam lr (default 5e-3)")
    p.add_argument("--batch-size", type=int, default=8, help="images rendered / prompts refined together (default 8)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED+i for every negative (default 0)")
    p.add_argument("--ddim-steps", dest="ddim_steps", type=int, default=30, help="DDIM steps (default 30)")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale (default 7.5)")
    p.add_argument("--height", type=int, default=None, help="default: the model's native size")
    p.add_argument("--width", type=int, default=None, help="default: the model's native size")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="autocast (default no)")
    p.add_argument("--out", required=True, help="output folder (run it again with the same settings to resume)")
    p.add_argument("--overwrite", action="store_true", help="start the scores over if --out holds other settings")
    p.set_defaults(func=run)


def _benchmarks(args) -> dict:
    from pathlib import Path

    from ..errors import RenegError
    from ..prompts import hpsv2_benchmark, limit_per_group, load_prompt_set, parti_prompts
    from ..reproduce import builtin_prompt_set

    if args.prompts:
        items = builtin_prompt_set(args.prompts)
        name = args.prompts.split(":", 1)[1] if items is not None else Path(args.prompts).stem
        items = items if items is not None else load_prompt_set(args.prompts)
        return {name: limit_per_group(items, args.limit)}
    out = {}
    for name in [n.strip().lower() for n in args.benchmarks.split(",") if n.strip()]:
        if name in ("hpsv2", "hpdv2"):
            out["hpsv2"] = limit_per_group(hpsv2_benchmark(), args.limit)
        elif name in ("parti", "parti-prompts"):
            out["parti"] = limit_per_group(parti_prompts(), args.limit)
        else:
            raise RenegError(f"Unknown benchmark {name!r}; use hpsv2, parti, or --prompts FILE|builtin:mini.")
    if not out:
        raise RenegError("No benchmarks given; e.g. --benchmarks hpsv2,parti")
    return out


def _global_negative(args, backend):
    from ..demo import released_start
    from ..embedding_io import load_embedding
    from ..errors import RenegError

    if args.global_negative:
        return load_embedding(args.global_negative).tensor, args.global_negative
    notes = []
    tensor = released_start(backend, notes.append)
    if tensor is None:
        raise RenegError(f"No global ReNeg embedding: {' '.join(notes) or 'no released one for this model family'} "
                         "Pass --global FILE (a released .bin or one trained with `reneg train`).")
    return tensor, "released"


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tqdm import tqdm

    from ..errors import RenegError
    from ..evaluate import handcrafted_preset
    from ..refine import RefineConfig
    from ..reproduce import ReproduceConfig, reproduce
    from ..rewards.benchmark_protocol import with_protocol
    from ..train import default_resolution
    from .common import load_backend_from_args
    from .reward_args import build_metrics, build_reward_from_args

    if args.limit is not None and args.limit < 1:
        raise RenegError(f"--limit must be >= 1 (got {args.limit}).")
    handcrafted = handcrafted_preset(args.handcrafted.split(":", 1)[1]) \
        if args.handcrafted.lower().startswith("preset:") else args.handcrafted
    benchmarks = _benchmarks(args)  # fail fast (offline hub) before loading models
    backend = load_backend_from_args(args)
    global_neg, global_src = _global_negative(args, backend)
    reward = build_reward_from_args(args.reward, args.reward_weights, backend.device)
    metrics = with_protocol(build_metrics(args.metrics, args.reward_weights, backend.device), args.protocol)
    size = default_resolution(backend)
    config = ReproduceConfig(num_inference_steps=args.ddim_steps, guidance_scale=args.guidance,
                             height=args.height or size, width=args.width or size, seed=args.seed,
                             batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                             refine=RefineConfig(max_steps=args.refine_steps, patience=args.patience,
                                                 lr=args.refine_lr))
    bar = tqdm(total=1, desc="reneg reproduce", unit="img", dynamic_ncols=True)

    def progress(done, total, what):
        bar.total = total
        bar.n = done
        if what in ("start", "resumed"):
            bar.reset(total)
            bar.update(done)
            bar.set_description(f"reneg reproduce ({what}: {done}/{total} done)")
        else:
            bar.set_postfix_str(what)
            bar.refresh()

    interrupted = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1)) if in_main else None
    try:
        summary = reproduce(backend, reward, metrics, benchmarks, global_neg, handcrafted, args.out, config,
                            info={"model": backend.name, "global_source": global_src}, overwrite=args.overwrite,
                            progress=progress, should_stop=lambda: bool(interrupted),
                            per_sample=not args.no_per_sample)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        bar.close()
    print(open(summary["tables"]["table2"], encoding="utf-8").read())
    if summary["stopped"]:
        print(f"interrupted: {summary['done']}/{summary['total']} images done; run the same command to continue")
        return 130
    print(f"wrote {args.out}/table2.md, table2.csv, table3.md and one folder per benchmark")
    return 0
