"""One rule for progress bars: drawn only when wanted, in the main process, on a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from s2d_align.utils.progress import progress_bar, progress_enabled


class _Terminal(io.StringIO):
    """A captured stderr that claims to be a terminal (or not)."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def stderr(monkeypatch):
    def use(tty: bool) -> _Terminal:
        stream = _Terminal(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return use


def test_enabled_only_when_wanted_in_the_main_process_on_a_terminal(stderr):
    stderr(tty=True)
    assert progress_enabled(True)
    assert not progress_enabled(False)
    assert not progress_enabled(True, main_process=False)
    stderr(tty=False)  # a log file, CI, a pipe
    assert not progress_enabled(True)


def test_a_bar_draws_on_a_terminal_and_stays_silent_elsewhere(stderr):
    for tty, wanted, main, drawn in [
        (True, True, True, True),
        (True, False, True, False),
        (True, True, False, False),
        (False, True, True, False),
    ]:
        stream = stderr(tty)
        items = list(
            progress_bar(range(3), wanted=wanted, main_process=main, desc="demo", file=stream)
        )
        assert items == [0, 1, 2]  # the bar never changes what is iterated
        assert ("demo" in stream.getvalue()) == drawn, (tty, wanted, main)


def test_a_disabled_manual_bar_accepts_the_calls_of_a_live_one(stderr):
    stream = stderr(tty=False)
    bar = progress_bar(total=2, wanted=True, desc="grid", file=stream)
    bar.update(1)
    bar.set_postfix_str("running: a")
    bar.close()
    assert bar.disable and stream.getvalue() == ""
