"""``python -m reneg`` (and ``accelerate launch -m reneg``) runs the CLI."""
try:
    from .core.cli import entry_point
except KeyboardInterrupt:  # Ctrl-C while Python loads the package
    import sys

    print("reneg: interrupted", file=sys.stderr)
    sys.exit(130)

entry_point()
