"""``reneg convert SRC DST.safetensors`` — any supported embedding file to our safetensors format."""
from __future__ import annotations

import argparse

from .common import add_overwrite_arg


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a released .bin / plain .safetensors to ReNeg .safetensors",
                       description="Convert a released .bin/.pt or a single-tensor .safetensors file to the "
                                   "ReNeg .safetensors format (tensor + metadata).")
    p.add_argument("src", help="source embedding (.bin/.pt/.pth/.safetensors); pickles that run code are refused")
    p.add_argument("dst", help="destination .safetensors")
    p.add_argument("--base-model", default="", help="base model recorded in the metadata (e.g. sd1.5)")
    p.add_argument("--reward", default="", help="reward recorded in the metadata (e.g. hpsv2.1)")
    add_overwrite_arg(p, "an existing destination")
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)  # old name
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..embedding_io import load_embedding, save_embedding, sha256_file
    from ..outputs import check_output_file

    check_output_file(args.dst, overwrite=args.overwrite, inputs=[args.src], what="destination",
                      suffix=".safetensors")
    emb = load_embedding(args.src)
    meta = {"source_file": Path(args.src).name, "source_sha256": sha256_file(args.src)}
    if args.base_model:
        meta["base_model"] = args.base_model
    if args.reward:
        meta["reward"] = args.reward
    out = save_embedding(args.dst, emb, overwrite=args.overwrite,
                         **{"created_by": emb.metadata.get("created_by", "reneg convert"), **meta})
    pooled = f" + pooled {list(emb.pooled.shape)}" if emb.pooled is not None else ""
    print(f"wrote {out} {list(emb.context.shape)}{pooled} ({emb.family})")
    return 0
