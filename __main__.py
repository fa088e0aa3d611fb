"""``python -m reneg`` (and ``accelerate launch -m reneg``) runs the CLI."""
import sys

from .core.cli import main

sys.exit(main())
