"""``reneg info FILE`` — JSON facts about a negative-embedding file."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("info", help="print shape, dtype, family, sha256 and metadata of an embedding as JSON",
                       description="Print shape, dtype, family, sha256 and metadata of an embedding file as JSON.")
    p.add_argument("file", help="negative embedding (.bin/.pt/.safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..embedding_io import describe

    print(json.dumps(describe(args.file), indent=2, sort_keys=True))
    return 0
