"""``reneg generate`` — CFG-DDIM text-to-image with a negative embedding (equals StableDiffusionPipeline+DDIM)."""
from __future__ import annotations

import argparse

from .common import (add_model_args, add_overwrite_arg, ddim_steps_arg, guidance_arg, int_in, seed_arg,
                     side_arg)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate image(s) with a negative embedding (or negative prompt)",
                       description="CFG-DDIM text-to-image with a negative embedding or negative prompt "
                                   "(equals diffusers' StableDiffusionPipeline + DDIMScheduler).")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="positive prompt")
    neg = p.add_mutually_exclusive_group()
    neg.add_argument("--negative", default=None, help="negative embedding file (default: the null text)")
    neg.add_argument("--negative-prompt", default=None, help="plain negative prompt text instead of an embedding")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed; x_T drawn like diffusers (CPU generator)")
    p.add_argument("--steps", type=ddim_steps_arg, default=30, help="DDIM steps, 1..1000 (default 30)")
    p.add_argument("--guidance", type=guidance_arg, default=7.5, help="CFG scale, 0..100 (default 7.5)")
    p.add_argument("--width", type=side_arg, default=512, help="a multiple of 8 (default 512)")
    p.add_argument("--height", type=side_arg, default=512, help="a multiple of 8 (default 512)")
    p.add_argument("--batch-size", type=int_in(1, 256), default=1, help="images to generate, 1..256 (default 1)")
    p.add_argument("--out", default="reneg.png", help="PNG path (-i suffix per image when batch > 1)")
    add_overwrite_arg(p, "existing PNG files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..ddim import initial_latents, sample
    from ..errors import NonFiniteError
    from .common import check_image_outputs, load_backend_from_args, resolve_negative, save_images

    check_image_outputs(args.out, args.batch_size, overwrite=args.overwrite, inputs=[args.negative, args.model])
    backend = load_backend_from_args(args)
    negative = resolve_negative(backend, args.negative, args.negative_prompt)
    cond = backend.encode_prompts([args.prompt] * args.batch_size)
    latents = initial_latents(backend, args.batch_size, args.height, args.width, args.seed, dtype=backend.dtype)
    with tqdm(total=args.steps, desc="sampling") as bar:
        latents = sample(backend, cond, negative.to(backend.device), latents, args.steps, args.guidance,
                         callback=lambda *_: bar.update(1))
    if not bool(torch.isfinite(latents).all()):
        raise NonFiniteError(f"Sampling diverged to NaN/Inf (guidance {args.guidance:g}, dtype {backend.dtype}); "
                             "nothing was saved. Lower --guidance, check the negative embedding, or use --dtype fp32.")
    with torch.no_grad():
        images = backend.decode(latents)
    for path in save_images(images, args.out, overwrite=args.overwrite):
        print(path)
    return 0
