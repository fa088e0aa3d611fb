"""``reneg convert SRC DST.safetensors`` — any supported embedding file to our safetensors format."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a released .bin / plain .safetensors to ReNeg .safetensors",
                       description="Convert a released .bin/.pt or a single-tensor .safetensors file to the "
                                   "ReNeg .safetensors format (tensor + metadata).")
    p.add_argument("src", help="source embedding (.bin/.pt/.pth/.safetensors); pickles that run code are refused")
    p.add_argument("dst", help="destination .safetensors")
    p.add_argument("--base-model", default="", help="base model recorded in the metadata (e.g. sd1.5)")
    p.add_argument("--reward", default="", help="reward recorded in the metadata (e.g. hpsv2.1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing destination")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..embedding_io import load_embedding, save_embedding, sha256_file
    from ..errors import RenegError

    if Path(args.dst).exists() and not args.force:
        raise RenegError(f"{args.dst} exists; pass --force to overwrite it.")
    emb = load_embedding(args.src)
    meta = {"source_file": Path(args.src).name, "source_sha256": sha256_file(args.src)}
    if args.base_model:
        meta["base_model"] = args.base_model
    if args.reward:
        meta["reward"] = args.reward
    out = save_embedding(args.dst, emb, **{"created_by": emb.metadata.get("created_by", "reneg convert"), **meta})
    print(f"wrote {out} {list(emb.tensor.shape)} ({emb.family})")
    return 0
