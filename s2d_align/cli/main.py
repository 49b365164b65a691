"""``s2d-align`` console script. ``main(argv)`` is what tests call.

Each command group lives in its own module exposing ``register(subparsers)``; a handler takes the
parsed ``argparse.Namespace`` and returns an exit code. Handlers stay thin: they parse, call the
library and print.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from s2d_align import __version__
from s2d_align.errors import S2DError

#: Modules under ``s2d_align.cli`` that register commands, in help order.
COMMAND_MODULES = ("data", "evaluate", "train", "harness", "config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2d-align",
        description="S2D-Align suite: data, training, generation, scoring and ablations for RRG.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"s2d_align.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"s2d_align.cli.{name}":
                raise
            continue  # group not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed check, 2 user error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except S2DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def entrypoint() -> None:
    sys.exit(main())
