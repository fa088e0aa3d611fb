"""``reneg refine`` — per-prompt refinement of a (global) negative embedding (paper Algorithm 1).

One prompt (``--prompt``, ``--out x.safetensors``) or many (``--prompts FILE``, ``--out FOLDER``: one embedding and
final image per prompt, refined ``--batch-size`` at a time, plus ``index.json``/``index.csv``). By default each
iterate is judged on its finished image (``--selection final``): the saved image is the engine's DDIM render of
the saved embedding with that seed, and it never scores below the start's image (see docs/refinement.md)."""
from __future__ import annotations

import argparse

from .common import (add_model_args, add_overwrite_arg, ddim_steps_arg, guidance_arg, int_in, lr_arg, seed_arg,
                     side_arg)
from .reward_args import add_reward_weights_arg


def register(sub) -> None:
    p = sub.add_parser("refine", help="refine a negative embedding for one prompt (<=10 reward steps, best kept)",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--reward", required=True, help="reward name or mix, e.g. hpsv2.1")
    add_reward_weights_arg(p)
    p.add_argument("--prompt", default=None, help="the positive prompt to refine the negative for")
    p.add_argument("--prompts", default=None,
                   help="instead of --prompt: a prompt file (.txt/.jsonl/.json/.csv/.tsv) or folder; --out is then "
                        "a folder (one .safetensors + .png per prompt, index.json, index.csv)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="with --prompts: prompts refined together in one batch (default 8)")
    p.add_argument("--selection", choices=("final", "proxy"), default="final",
                   help="judge iterates on the finished image (final, default) or on the one-step x0 (proxy)")
    p.add_argument("--init", default=None, help="starting negative embedding (default: the null-text embedding)")
    p.add_argument("--out", required=True, help="refined embedding (.safetensors); with --prompts a folder")
    p.add_argument("--image", default=None, help="also render the final image (best embedding, same seed) to PNG")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of x_T, as in `reneg generate --seed` (default 0)")
    p.add_argument("--max-steps", type=int_in(0, 1000), default=10, help="gradient steps at most (default 10)")
    p.add_argument("--patience", type=int_in(1), default=3,
                   help="stop after N iterates without improvement (default 3)")
    p.add_argument("--lr", type=lr_arg, default=5e-3, help="Adam learning rate (default 5e-3)")
    p.add_argument("--ddim-steps", "--steps", dest="ddim_steps", type=ddim_steps_arg, default=30,
                   help="DDIM steps (default 30)")
    p.add_argument("--guidance", "--guidance-scale", dest="guidance", type=guidance_arg, default=7.5,
                   help="CFG scale (default 7.5)")
    p.add_argument("--step-index", type=int_in(0, 999), default=None,
                   help="DDIM step the reward is taken at (default: drawn from the last 10 with the seed)")
    p.add_argument("--height", type=side_arg, default=None, help="default: the model's native size")
    p.add_argument("--width", type=side_arg, default=None, help="default: the model's native size")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast dtype (default no)")
    p.add_argument("--freeze-pooled", action="store_true",
                   help="SDXL: refine the cross-attention context only; the pooled embedding stays the start's")
    add_overwrite_arg(p, "an existing --out / --image file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..embedding_io import save_embedding
    from ..errors import RenegError
    from ..refine import refine_negative
    from ..train import default_resolution
    from ..outputs import check_output_file
    from .common import check_image_outputs, load_backend_from_args, resolve_negative, save_images
    from .reward_args import build_reward_from_args

    if (args.prompt is None) == (args.prompts is None):
        raise RenegError("Give either --prompt TEXT (one prompt) or --prompts FILE (many), not both/neither.")
    if args.prompts is not None:
        return _run_batch(args)
    inputs = [args.init, args.model, *args.reward_weights]
    check_output_file(args.out, overwrite=args.overwrite, inputs=inputs, what="refined embedding",
                      suffix=".safetensors")
    if args.image:
        if Path(args.image).expanduser().resolve() == Path(args.out).expanduser().resolve():
            raise RenegError(f"--image and --out are the same path ({args.out}); give the image its own .png path.")
        check_image_outputs(args.image, 1, overwrite=args.overwrite, inputs=[*inputs, args.out])
    backend = load_backend_from_args(args)
    reward = build_reward_from_args(args.reward, args.reward_weights, backend.device, backend.dtype)
    init = resolve_negative(backend, args.init, None)
    size = default_resolution(backend)
    with tqdm(total=args.max_steps + 1, desc="reneg refine", dynamic_ncols=True) as bar:
        def callback(step, total, score, _preview):
            bar.update(1)
            bar.set_postfix(reward=f"{score:.4f}")

        result = refine_negative(backend, reward, args.prompt, init, seed=args.seed, max_steps=args.max_steps,
                                 patience=args.patience, lr=args.lr, num_inference_steps=args.ddim_steps,
                                 guidance_scale=args.guidance, height=args.height or size,
                                 width=args.width or size, callback=callback, step_index=args.step_index,
                                 mixed_precision=args.mixed_precision, final_image=bool(args.image),
                                 selection=args.selection, freeze_pooled=args.freeze_pooled)
    recipe = {"max_steps": args.max_steps, "patience": args.patience, "lr": args.lr, "seed": args.seed,
              "num_inference_steps": args.ddim_steps, "guidance_scale": args.guidance,
              "step_index": result.step_index, "selection": args.selection,
              **({"freeze_pooled": True} if args.freeze_pooled else {})}
    save_embedding(args.out, result.best, overwrite=args.overwrite, base_model=backend.name, reward=reward.name, recipe=recipe,
                   steps=result.best_step, kind="per-prompt", prompt=args.prompt, init=args.init or "null-text",
                   start_reward=f"{result.start_reward:.6g}", best_reward=f"{result.best_reward:.6g}")
    print(f"{args.out}: reward {result.start_reward:.4f} -> {result.best_reward:.4f} "
          f"(best iterate {result.best_step} of {len(result.trace) - 1})")
    if args.image and result.image is not None:
        for path in save_images(result.image, args.image, overwrite=args.overwrite):
            print(path)
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    """``--prompts FILE``: batched refinement, one embedding + image per prompt, and an index."""
    import csv
    import io
    import json
    import re
    from pathlib import Path

    from tqdm import tqdm

    from ..embedding_io import atomic_write, save_embedding
    from ..errors import RenegError
    from ..images import save_png
    from ..outputs import check_output_folder
    from ..prompts import load_prompt_set
    from ..refine import RefineConfig, refine_batch
    from ..train import default_resolution
    from .common import load_backend_from_args, resolve_negative
    from .reward_args import build_reward_from_args

    items = load_prompt_set(args.prompts)
    out = Path(args.out)
    if out.suffix.lower() == ".safetensors" or out.is_file():
        raise RenegError(f"{out}: with --prompts, --out is a folder (one file per prompt goes there).")
    stems = [f"{i:05d}_{re.sub(r'[^A-Za-z0-9]+', '_', item.text).strip('_')[:40] or 'prompt'}"
             for i, item in enumerate(items)]
    produces = ["index.json", "index.csv", *(f"{s}{ext}" for s in stems for ext in (".safetensors", ".png"))]
    check_output_folder(out, produces, overwrite=args.overwrite, inputs=[args.init, args.model, args.prompts,
                                                                        *args.reward_weights],
                        what="refinement folder")
    if args.batch_size < 1:
        raise RenegError(f"--batch-size must be >= 1 (got {args.batch_size}).")
    backend = load_backend_from_args(args)
    reward = build_reward_from_args(args.reward, args.reward_weights, backend.device, backend.dtype)
    init = resolve_negative(backend, args.init, None)
    size = default_resolution(backend)
    config = RefineConfig(max_steps=args.max_steps, patience=args.patience, lr=args.lr,
                          num_inference_steps=args.ddim_steps, guidance_scale=args.guidance,
                          height=args.height or size, width=args.width or size,
                          mixed_precision=args.mixed_precision, selection=args.selection,
                          freeze_pooled=args.freeze_pooled)
    rows = []
    with tqdm(total=len(items), desc="reneg refine", unit="prompt", dynamic_ncols=True) as bar:
        for lo in range(0, len(items), args.batch_size):
            chunk = list(range(lo, min(lo + args.batch_size, len(items))))
            seeds = [args.seed + i for i in chunk]
            results = refine_batch(backend, reward, [items[i].text for i in chunk], init, seeds, config,
                                   step_indices=None if args.step_index is None else [args.step_index] * len(chunk),
                                   final_image=True)
            for i, res in zip(chunk, results):
                emb, img = out / f"{stems[i]}.safetensors", out / f"{stems[i]}.png"
                recipe = {**{k: getattr(config, k) for k in ("max_steps", "patience", "lr", "num_inference_steps",
                                                              "guidance_scale", "selection")},
                          "seed": res.seed, "step_index": res.step_index}
                save_embedding(emb, res.best, overwrite=args.overwrite, base_model=backend.name, reward=reward.name, recipe=recipe,
                               steps=res.best_step, kind="per-prompt", prompt=res.prompt,
                               init=args.init or "null-text", start_reward=f"{res.start_reward:.6g}",
                               best_reward=f"{res.best_reward:.6g}")
                if res.image is not None:
                    save_png(res.image[0], img, overwrite=args.overwrite)
                rows.append({"index": i, "prompt": res.prompt, "group": items[i].group, "seed": res.seed,
                             "step_index": res.step_index, "start_reward": res.start_reward,
                             "best_reward": res.best_reward, "best_step": res.best_step,
                             "iterates": len(res.trace), "embedding": emb.name,
                             "image": img.name if res.image is not None else ""})
            bar.update(len(chunk))
            bar.set_postfix(gain=f"{sum(r['best_reward'] - r['start_reward'] for r in rows) / len(rows):.4f}")
    meta = {"model": backend.name, "reward": reward.name, "init": args.init or "null-text",
            "prompts": args.prompts, "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
            "refinements": rows}
    atomic_write(out / "index.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2), "utf-8"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "index.csv", lambda tmp: Path(tmp).write_text(buf.getvalue(), "utf-8"))
    gain = sum(r["best_reward"] - r["start_reward"] for r in rows) / len(rows)
    print(f"{out}: {len(rows)} refined negatives, mean reward gain {gain:+.4f}; index.json, index.csv")
    return 0
