"""``reneg evaluate`` — compare negatives on a prompt set with reward metrics, Table-2 style (per-style means,
win-rates). The paper's full comparison (null, handcrafted, global, per-sample refinement; HPSv2 benchmark and
Parti-Prompts; three metrics) is ``reneg reproduce``. Writes results.json, scores.csv, summary.csv, grid.png,
bars.png."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_args, add_overwrite_arg, ddim_steps_arg, guidance_arg, int_in, seed_arg, side_arg
from .reward_args import add_reward_weights_arg


#: Files ``evaluate`` writes into ``--out`` (an earlier evaluation's are only replaced with ``--overwrite``).
EVAL_OUTPUTS = ("results.json", "scores.csv", "summary.csv", "grid.png", "bars.png")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score negatives (null, text:..., files) on a prompt set",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--negatives", required=True, action="append",
                   help="comma-separated: null, \"text:NEGATIVE PROMPT\", preset:reneg-readme, embedding files, "
                        "refine:FILE|refine:null (refined per prompt from it) (repeatable; the first is the "
                        "win-rate baseline)")
    p.add_argument("--refine-reward", default=None,
                   help="reward of refine: negatives (default: the first metric)")
    p.add_argument("--refine-steps", type=int, default=10, help="steps of refine: negatives (default 10)")
    p.add_argument("--prompts", required=True,
                   help="prompt file/folder, 'hpsv2' (HPSv2 benchmark, 4 styles), 'hpsv2:photo,anime' or 'parti'")
    p.add_argument("--limit", type=int_in(1), default=None, help="use the first N prompts of each group")
    p.add_argument("--metrics", default="hpsv2.1", help="comma-separated reward names (default hpsv2.1)")
    add_reward_weights_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="first seed; every negative gets the same seeds (default 0)")
    p.add_argument("--images-per-prompt", type=int_in(1, 1000), default=1, help="seeds per prompt (default 1)")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=4, help="images rendered together (default 4)")
    p.add_argument("--ddim-steps", "--steps", dest="ddim_steps", type=ddim_steps_arg, default=30,
                   help="DDIM steps (default 30)")
    p.add_argument("--guidance", "--guidance-scale", dest="guidance", type=guidance_arg, default=7.5,
                   help="CFG scale (default 7.5)")
    p.add_argument("--height", type=side_arg, default=None, help="default: the model's native size")
    p.add_argument("--width", type=side_arg, default=None, help="default: the model's native size")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast dtype (default no)")
    p.add_argument("--grid-prompts", type=int_in(1, 1000), default=8, help="prompt rows in grid.png")
    p.add_argument("--save-images", action="store_true", help="also save every image under OUT/images/")
    add_overwrite_arg(p, "the results of an earlier evaluation in --out")
    p.add_argument("--protocol", choices=("differentiable", "benchmark", "both"), default="differentiable",
                   help="score float images with the training preprocessing (default), as the official HPSv2 "
                        "benchmark reads them (8-bit JPEG, PIL resize: metric NAME@benchmark), or both + the gap")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluate import EvalConfig, evaluate_negatives, parse_negative_specs, resolve_negative
    from ..errors import OutputError
    from ..outputs import check_output_folder
    from ..prompts import load_prompt_set
    from ..train import default_resolution
    from .common import load_backend_from_args
    from .reward_args import build_metrics

    specs = parse_negative_specs(args.negatives)
    check_output_folder(args.out, EVAL_OUTPUTS, overwrite=args.overwrite,
                        inputs=[args.prompts, *(s.value for s in specs if s.kind == "file")])
    earlier = sorted((Path(args.out).expanduser() / "images").glob("*/*.png")) if args.save_images else []
    if earlier and not args.overwrite:
        raise OutputError(f"{earlier[0].parent.parent} already holds {len(earlier)} images of an earlier evaluation "
                          f"(e.g. {earlier[0].relative_to(earlier[0].parent.parent)}); pass --overwrite to "
                          "replace them, or choose another --out.")
    items = load_prompt_set(args.prompts, args.limit)
    backend = load_backend_from_args(args)
    negatives = {s.label: resolve_negative(backend, s) for s in specs}
    metrics = build_metrics(args.metrics, args.reward_weights, backend.device, backend.dtype)
    if any(s.kind == "refine" for s in specs):
        from ..evaluate import PerSampleNegative
        from .reward_args import build_reward_from_args

        name = args.refine_reward or next(iter(metrics))
        refine_reward = metrics[name] if name in metrics else build_reward_from_args(name, args.reward_weights,
                                                                                      backend.device)
        for s in specs:
            if s.kind == "refine":
                negatives[s.label] = PerSampleNegative(negatives[s.label], refine_reward, args.refine_steps)
    size = default_resolution(backend)
    config = EvalConfig(num_inference_steps=args.ddim_steps, guidance_scale=args.guidance,
                        height=args.height or size, width=args.width or size, seed=args.seed,
                        images_per_prompt=args.images_per_prompt, batch_size=args.batch_size,
                        mixed_precision=args.mixed_precision, grid_prompts=args.grid_prompts,
                        save_images=args.save_images, protocol=args.protocol)
    info = {"model": backend.name, "prompt_set": args.prompts,
            "negative_sources": {s.label: {"kind": s.kind, "value": s.value} for s in specs}}
    total = len(items) * max(1, args.images_per_prompt)
    with tqdm(total=total, desc="reneg evaluate", dynamic_ncols=True) as bar:
        result = evaluate_negatives(backend, negatives, items, metrics, config, out_dir=args.out,
                                    callback=lambda done, _total: bar.update(done - bar.n), info=info)
    base = result.negatives[0]
    for m in result.metrics:
        print(f"{m}:")
        for neg in result.negatives:
            groups = "  ".join(f"{g}={result.means[m][neg][g]:.4f}" for g in result.groups) \
                if len(result.groups) > 1 else ""
            print(f"  {neg:<28} mean={result.means[m][neg]['all']:.4f}  "
                  f"win-rate vs {base}={result.win_rates[m][neg][base]:.3f}  {groups}")
    for m, gap in result.protocol_gaps.items():
        print(f"  {m}: benchmark - differentiable = {gap['mean_gap']:+.4f} (mean |gap| {gap['mean_abs_gap']:.4f}, "
              f"pair order agreement {gap['pair_order_agreement']:.3f}, n={gap['n']})")
    print(f"wrote {args.out}/results.json, scores.csv, summary.csv, grid.png, bars.png")
    return 0
