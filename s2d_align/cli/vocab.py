"""One flag vocabulary for every command, and the help and errors that go with it.

``--run`` is a run folder, ``--results`` a results directory (its store), ``--reports`` a reports
directory, ``--data-dir`` a dataset folder, ``--out`` the one file a command writes, ``--cache``
(env ``S2D_CACHE``) the shared cache, ``--jobs`` the processes at a time and ``--resamples`` the
randomisation trials of a paired test (``--trials`` is left to Optuna). Old names are accepted for
one release: they still work and print one ``DeprecationWarning:`` line on stderr.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

CACHE_ENV = "S2D_CACHE"
#: Deprecated spellings of ``S2D_CACHE`` (read only when it is unset).
OLD_CACHE_ENVS = ("S2D_CACHE_DIR",)


def deprecated(old: str, new: str, where: str) -> None:
    """One line on stderr (not ``warnings``: a user must see it, whatever the filters)."""
    print(
        f"DeprecationWarning: {old} is deprecated in {where}; use {new} "
        "(the old name goes in the next release)",
        file=sys.stderr,
    )


def fail(prog: str, message: str) -> None:
    """A usage error as one line, exit code 2 (argparse prints usage + error on two)."""
    sys.stderr.write(f"error: {prog}: {message} (see '{prog} --help')\n")
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line; subcommand parsers inherit this class."""

    def error(self, message: str):  # type: ignore[override]
        fail(self.prog, message)


class HelpFormatter(argparse.HelpFormatter):
    """Keeps text with line breaks (the example epilogs) as written, wraps the rest; appends ``(default: X)`` to each argument's help (as
    ``ArgumentDefaultsHelpFormatter`` does, but not for unset or off values, and not when the
    help already says its default), and lists a deprecated name after the help instead of beside
    the flag."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # as RawDescriptionHelpFormatter
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = (
            "(default" not in text
            and not any(default is v for v in (None, False, argparse.SUPPRESS))  # 0 is shown
            and default != []
            and (action.option_strings or action.nargs in ("?", "*"))
        )
        if shown:
            text += " (default: %(default)s)"
        old = getattr(action, "deprecated", None)
        if old:
            text += f" [deprecated: {', '.join(old)}]"
        return text

    def _format_action_invocation(self, action: argparse.Action) -> str:
        old = getattr(action, "deprecated", None)
        if not old:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = [s for s in action.option_strings if s not in old]
        return super()._format_action_invocation(shown)


def command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    example: str | list[str],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A (sub)command parser with the shared formatter and an ``example:`` epilog."""
    lines = [example] if isinstance(example, str) else example
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog="example:\n" + "\n".join(f"  {line}" for line in lines),
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(_prog=parser.prog)  # the innermost command names itself in errors
    return parser


_WARNING_ACTIONS: dict[type, type] = {}


def _warning_action(base: type) -> type:
    """``base`` that prints the deprecation line when called under an old option string."""
    if base not in _WARNING_ACTIONS:

        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in self.deprecated:
                deprecated(option_string, self.option_strings[0], parser.prog)
            base.__call__(self, parser, namespace, values, option_string)

        _WARNING_ACTIONS[base] = type(f"Deprecated{base.__name__}", (base,), {"__call__": __call__})
    return _WARNING_ACTIONS[base]


def option(parser: argparse.ArgumentParser, name: str, *old: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(name, ...)`` that also accepts the deprecated names ``old``: same
    destination, hidden from the flag column of ``--help``, one warning line when used."""
    action = parser.add_argument(name, *old, **kwargs)
    if old:
        action.__class__ = _warning_action(type(action))
        action.deprecated = tuple(old)  # type: ignore[attr-defined]
    return action


def env_cache() -> Path | None:
    """``$S2D_CACHE``, else a deprecated spelling of it (with the warning line), else None."""
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value)
    for old in OLD_CACHE_ENVS:
        value = os.environ.get(old)
        if value:
            deprecated(old, CACHE_ENV, "the environment")
            return Path(value)
    return None


def add_cache(
    parser: argparse.ArgumentParser, what: str, default: str, *old: str
) -> argparse.Action:
    """``--cache DIR``: the one shared cache flag (``default`` says what happens without it)."""
    return option(
        parser,
        "--cache",
        *old,
        type=Path,
        metavar="DIR",
        help=f"shared cache folder for {what} (default: {default})",
    )


def add_jobs(parser: argparse.ArgumentParser, what: str, *old: str, **kwargs: Any) -> None:
    """``--jobs N``: how many processes at a time, whatever they are."""
    option(parser, "--jobs", *old, metavar="N", help=what, **kwargs)
