"""``reneg`` command line: one small module per subcommand in :mod:`.commands`.

Also runnable as ``python -m reneg`` and ``accelerate launch -m reneg train ...``.

Every user error ends as one line ``reneg COMMAND: error: ...`` on stderr and a non-zero exit code, never a
traceback: :class:`~.errors.RenegError` (exit 2), file-system errors (exit 2), Ctrl-C / SIGTERM / SIGHUP at any
moment, including start-up (exit 128 + signal number; partial writes are removed, ``train`` saves first).
Set ``RENEG_DEBUG=1`` to see tracebacks of unexpected errors.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Sequence

from .errors import RenegError

#: Subcommand modules under ``core/commands``, in help order.
COMMANDS = ("demo", "info", "convert", "generate", "download", "train", "refine", "evaluate", "reproduce")


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP raised in the main thread like Ctrl-C, so every ``finally`` (temp-file cleanup) runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


TERMINATION_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def install_termination_handlers() -> dict:
    """SIGTERM and SIGHUP behave like Ctrl-C (commands that save on interrupt, save); returns the old handlers."""
    previous = {}
    for sig in TERMINATION_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, _raise_terminated)
        except (ValueError, OSError):  # not the main thread / not allowed here
            pass
    return previous


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reneg", description="ReNeg: learned negative embeddings with reward guidance (arXiv 2412.19637).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def _os_error_message(exc: OSError) -> str:
    import errno

    where = exc.filename or ""
    fixes = {errno.ENOSPC: "the disk is full; free some space or write elsewhere",
             errno.EACCES: "permission denied; use a path you may read/write",
             errno.EPERM: "operation not permitted; use a path you may read/write",
             errno.EROFS: "read-only file system; write elsewhere",
             errno.ENOENT: "no such file or folder; check the path",
             errno.EISDIR: "is a folder; give a file path",
             errno.ENOTDIR: "a part of the path is a file, not a folder"}
    reason = fixes.get(exc.errno, exc.strerror or str(exc))
    return f"{where}: {reason}." if where else f"{reason}."


def _printable(text: str) -> str:
    """One line without terminal escapes or control characters (file names and causes can hold them)."""
    from .embedding_io import _ANSI

    return " ".join(_ANSI.sub("", text).split("\n"))


def _interrupted(name: str, signum: int) -> int:
    label = {int(signal.SIGINT): "interrupted (Ctrl-C)"}.get(signum, f"stopped by signal {signum}")
    print(f"reneg {name}: {label}", file=sys.stderr)
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``reneg ARGV``; returns the exit code (see the module docstring)."""
    previous = install_termination_handlers()
    try:
        return _run(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(argv: Sequence[str] | None) -> int:
    name = "?"
    try:
        args = build_parser().parse_args(argv)
        name = args.command
        return int(args.func(args) or 0)
    except Terminated as exc:
        return _interrupted(name, exc.signum)
    except KeyboardInterrupt:
        return _interrupted(name, int(signal.SIGINT))
    except RenegError as exc:
        print(f"reneg {name}: error: {_printable(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"reneg {name}: error: {_printable(_os_error_message(exc))}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"reneg {name}: error: out of memory; use smaller batches (--micro-batch / --batch-size) or a "
              "smaller image size.", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"reneg {name}: error: an input is nested too deeply to read.", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line (RENEG_DEBUG=1 shows the traceback)
        if os.environ.get("RENEG_DEBUG"):
            raise
        from .embedding_io import clean_cause

        print(f"reneg {name}: internal error: {type(exc).__name__}: {clean_cause(exc, 300)}. "
              "Please report it (run with RENEG_DEBUG=1 for the traceback).", file=sys.stderr)
        return 3


def entry_point() -> None:
    """``python -m reneg``: Ctrl-C even while the heavy imports load gives one line, not a traceback."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("reneg: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    entry_point()
