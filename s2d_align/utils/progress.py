"""Progress bars: one rule for when one is drawn.

A bar is drawn only when the caller wants one, in the main process (not in every rank of a
distributed run), and when stderr is a terminal: in logs, CI and pipes it would only add noise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_enabled(wanted: bool, *, main_process: bool = True) -> bool:
    """Whether to draw progress: wanted, in the main process, and stderr is a terminal."""
    return bool(wanted) and main_process and sys.stderr.isatty()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    wanted: bool,
    main_process: bool = True,
    **tqdm_kwargs: Any,
):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``), disabled unless
    :func:`progress_enabled`; a disabled bar iterates, updates and closes silently."""
    from tqdm import tqdm  # imported here: the CLI starts without it

    enabled = progress_enabled(wanted, main_process=main_process)
    return tqdm(iterable, disable=not enabled, **tqdm_kwargs)
