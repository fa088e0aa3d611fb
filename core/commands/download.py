"""``reneg download [NAME|--all] [--dir DIR]`` — fetch released embeddings, sha256-verified."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("download", help="download the authors' released embeddings (sha256-verified)",
                       description="Download the authors' released ReNeg embeddings from their GitHub repository; "
                                   "the sha256 is checked before the file appears.")
    p.add_argument("name", nargs="?", help="sd1.4, sd1.5, sd2.1 or pixart-alpha (omit with --list/--all)")
    p.add_argument("--all", action="store_true", help="download every released embedding")
    p.add_argument("--list", action="store_true", help="list the registry and exit")
    p.add_argument("--dir", default=None, help="target folder (default: the pack's embeddings/ folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different file of the same name (default: refuse; a verified copy is kept)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import RenegError
    from ..released import PACK_EMBEDDINGS_DIR, download_released, released_embeddings

    registry = released_embeddings()
    if args.list:
        for e in registry.values():
            print(f"{e.name:14s} {e.family:13s} {str(list(e.shape)):16s} {e.url}")
        return 0
    if args.all == bool(args.name):
        raise RenegError("Name one embedding (e.g. `reneg download sd1.5`) or pass --all; --list shows the names.")
    names = list(registry) if args.all else [args.name]
    for name in names:
        with tqdm(desc=name, unit="B", unit_scale=True, leave=False) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total or None
                bar.update(done - bar.n)

            path = download_released(name, args.dir or PACK_EMBEDDINGS_DIR, progress=progress,
                                     overwrite=args.overwrite)
        print(f"{name}: {path} (sha256 verified)")
    return 0
