"""``reneg refine`` — per-prompt refinement of a (global) negative embedding (paper Algorithm 1)."""
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
    p.add_argument("--prompt", required=True, help="the positive prompt to refine the negative for")
    p.add_argument("--init", default=None, help="starting negative embedding (default: the null-text embedding)")
    p.add_argument("--out", required=True, help="refined embedding (.safetensors)")
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
                                 mixed_precision=args.mixed_precision, final_image=bool(args.image))
    recipe = {"max_steps": args.max_steps, "patience": args.patience, "lr": args.lr, "seed": args.seed,
              "num_inference_steps": args.ddim_steps, "guidance_scale": args.guidance,
              "step_index": result.step_index}
    save_embedding(args.out, result.best, overwrite=args.overwrite, base_model=backend.name, reward=reward.name,
                   recipe=recipe, steps=result.best_step, kind="per-prompt", prompt=args.prompt, init=args.init or "null-text",
                   start_reward=f"{result.start_reward:.6g}", best_reward=f"{result.best_reward:.6g}")
    print(f"{args.out}: reward {result.start_reward:.4f} -> {result.best_reward:.4f} "
          f"(best iterate {result.best_step} of {len(result.trace) - 1})")
    if args.image and result.image is not None:
        for path in save_images(result.image, args.image, overwrite=args.overwrite):
            print(path)
    return 0
