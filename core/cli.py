"""``reneg`` command line: one small module per subcommand in :mod:`.commands`.

Also runnable as ``python -m reneg`` and ``accelerate launch -m reneg train ...``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import RenegError

#: Subcommand modules under ``core/commands``, in help order.
COMMANDS = ("demo", "info", "convert", "generate", "download", "train", "refine", "evaluate", "reproduce")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reneg", description="ReNeg: learned negative embeddings with reward guidance (arXiv 2412.19637).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RenegError as exc:
        print(f"reneg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reneg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
