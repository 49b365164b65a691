"""Shared set-up of the bench suite and the dashboard printed at its end.

The shared caches (SynthCXR, tokenizer, the tiny towers' pre-training, SmolLM2's de-quantised
copy) live where every other command keeps them (``$S2D_CACHE`` or ``~/.cache/s2d-align``), so
``nox -s bench`` after ``nox -s ablate`` builds nothing twice; building them is timed apart and
never inside a measured ratio. At the end of the session every recorded target is printed, one
line each, beside the ratio of the run saved before this one (``--benchmark-storage``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import common  # after the environment: it imports the package
import targets

_PREVIOUS: dict = {}


def _storage(config: pytest.Config) -> Path | None:
    raw = config.getoption("benchmark_storage", None)
    if not raw or not str(raw).startswith("file://"):
        return None
    return Path(str(raw)[len("file://") :])


def pytest_sessionstart(session: pytest.Session) -> None:
    storage = _storage(session.config)
    runs = targets.saved_runs(storage) if storage is not None and storage.is_dir() else []
    if runs:  # the run saved before this session: what this one is compared with
        _PREVIOUS["path"] = runs[-1]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter) -> None:
    if not targets.RECORDED:
        return
    previous: dict[str, targets.Target] = {}
    if "path" in _PREVIOUS:
        try:
            previous = targets.targets_of(targets.load_report(_PREVIOUS["path"]))
        except ValueError as exc:
            terminalreporter.write_line(f"(previous run not read: {exc})")
    tr = terminalreporter
    tr.section("performance targets (issue 15)")
    tr.write_line(f"compared with: {_PREVIOUS.get('path', 'no previous saved run')}")
    for name in targets.TARGETS:
        found = [t for t in targets.RECORDED if t.name == name]
        if found:
            tr.write_line(found[-1].line(previous.get(name)))
        else:
            tr.write_line(f"{name:<22} {'-':>8}  {targets.NOT_MEASURED.get(name, 'not measured')}")
    for name, seconds in common.ONE_TIME.items():
        tr.write_line(f"one-time cache build (not in any ratio): {name} {seconds:.0f} s")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """A shortened default run (train + generate the test split) in a subprocess, with its
    peak RSS: shared by the memory, generation and padding benches."""
    common.prepare("default")
    return common.measured_run(
        "default", tmp_path_factory.mktemp("default-run"), common.DEFAULT_RUN_OVERRIDES
    )
