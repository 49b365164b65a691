"""``s2d-align`` console script. ``main(argv)`` is what tests call.

Each command group lives in its own module exposing ``register(subparsers)``; a handler takes the
parsed ``argparse.Namespace`` and returns an exit code. Handlers stay thin: they parse, call the
library and print.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from s2d_align import __version__
from s2d_align.cli.vocab import HelpFormatter, Parser, fail
from s2d_align.errors import S2DError

#: Modules under ``s2d_align.cli`` that register commands, in help order.
COMMAND_MODULES = ("data", "eval_label", "eval_score", "train", "harness", "config")

EPILOG = """\
flags: --run a run folder, --results a results directory (its store), --reports a reports
directory, --data-dir a dataset folder, --out the file a command writes, --cache (or $S2D_CACHE)
the shared cache, --jobs processes at a time, --resamples randomisation trials.

examples:
  s2d-align data synth --data-dir data/synth
  s2d-align ablate --preset smoke --jobs 2
  s2d-align results list --status complete
  s2d-align config show --preset smoke --variant s2d train.lr=0.001"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="s2d-align",
        description="S2D-Align suite: data, training, generation, scoring and ablations for RRG.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        help="'s2d-align COMMAND --help' for its flags",
    )
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"s2d_align.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"s2d_align.cli.{name}":
                raise
            continue  # group not built yet
        module.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides sit on either side of options
    (``k=v --out X k2=v``): argparse alone stops the positional list at the first option."""
    args, extra = parser.parse_known_args(argv)
    if "--debug" in extra:  # also accepted after the command
        args.debug = True
        extra = [t for t in extra if t != "--debug"]
    if extra:
        stray = [t for t in extra if t.startswith("-") or "=" not in t]
        if stray or not isinstance(getattr(args, "overrides", None), list):
            # one line naming the innermost command (argparse: usage + error on two lines)
            fail(
                getattr(args, "_prog", parser.prog),
                f"unrecognized arguments: {' '.join(stray or extra)}",
            )
        args.overrides = [*args.overrides, *extra]
    return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed as ``main`` parses it (deprecated flags warn; usage errors exit 2)."""
    return _parse(build_parser(), list(argv))


def _one_line(exc: BaseException) -> str:
    """What failed and where, in one line (the traceback is for ``--debug``)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        return f"{exc.strerror}: {where}" if where else exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed check or unexpected error, 2 user
    error). Failures print one ``error:`` line; ``--debug`` adds the traceback."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    parser = build_parser()
    args = _parse(parser, list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `s2d-align ... | head`: the reader left, nothing went wrong here
        with contextlib.suppress(OSError, ValueError):  # no real stdout (captured): nothing to do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the CLI boundary: one line, never a traceback
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        if isinstance(exc, S2DError):
            print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
            return 2
        hint = "" if args.debug else " (rerun with --debug for the traceback)"
        print(f"error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 2 if isinstance(exc, OSError) else 1


def entrypoint() -> None:
    code = main()
    if code == 130:  # interrupted and stopped cleanly: another Ctrl-C while the interpreter
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # winds down would kill it mid-exit
    sys.exit(code)
