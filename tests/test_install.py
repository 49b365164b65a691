"""Presets, variants and sweep spaces are package data: a regular (non-editable) install finds
them as a checkout does, and ``$S2D_ABLATIONS`` replaces them with a folder of one's own."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import s2d_align
from s2d_align.config import (
    ABLATIONS_ENV,
    ConfigError,
    find_ablations_dir,
    load_config,
    shipped_ablations_dir,
)
from s2d_align.harness.space import load_space
from s2d_align.harness.variants import available_variants

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 240


def _package_data_globs() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return data["tool"]["setuptools"]["package-data"]["s2d_align"]


def test_every_shipped_preset_variant_and_space_is_declared_package_data(monkeypatch):
    monkeypatch.delenv(ABLATIONS_ENV, raising=False)
    folder = find_ablations_dir()
    assert folder == shipped_ablations_dir()
    assert folder.parent == Path(s2d_align.__file__).resolve().parent  # inside the package
    globs = _package_data_globs()
    files = [p.relative_to(folder.parent).as_posix() for p in folder.rglob("*") if p.is_file()]
    files = [f for f in files if "__pycache__" not in f]
    assert {"presets", "variants", "sweeps"} <= {Path(f).parts[1] for f in files}
    undeclared = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert undeclared == [], f"not shipped by pyproject's package-data: {undeclared}"


def test_an_ablations_folder_of_ones_own_replaces_the_shipped_one(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    for sub in ("presets", "variants", "sweeps"):
        (mine / sub).mkdir(parents=True)
    (mine / "presets" / "lab.yaml").write_text("name: lab\ntrain: {total_steps: 7}\n")
    (mine / "variants" / "plain.yaml").write_text(
        "name: plain\nversion: 1\ndescription: the preset as is\noverrides: {}\n"
    )
    monkeypatch.setenv(ABLATIONS_ENV, str(mine))
    assert find_ablations_dir() == mine
    assert load_config("lab").train.total_steps == 7
    assert available_variants() == ["plain"]
    with pytest.raises(ConfigError, match=r"unknown preset 'smoke'; available: lab"):
        load_config("smoke")
    with pytest.raises(ConfigError, match=r"unknown sweep space 'memory'; available: none"):
        load_space("memory")


def test_an_ablations_variable_that_names_no_folder_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ABLATIONS_ENV, str(tmp_path / "typo"))
    with pytest.raises(ConfigError, match=rf"{ABLATIONS_ENV}=.*typo: not a folder"):
        load_config("smoke")


# -- a real non-editable install --------------------------------------------------------------
def _source_copy(dest: Path) -> Path:
    """What ``pip install .`` needs from a clone: pyproject, README and the package."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "s2d_align", dest / "s2d_align", ignore=ignore)
    return dest


def _venv_over_this_one(venv: Path) -> Path:
    """A new venv that also sees this interpreter's packages (torch etc.; no download) through a
    plain path entry: a path in a ``.pth`` file is not a site folder, so this environment's
    editable install of s2d_align (its own ``.pth`` hook) stays out, and the copy installed
    into the new venv is the one imported."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=INSTALL_TIMEOUT_S)  # fmt: skip
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_s2d_test_parent_env.pth").write_text("\n".join(ours) + "\n")
    return python


def _clean_env() -> dict[str, str]:
    """No folder override, no path to this checkout; wide tables (no cut variant names)."""
    drop = {ABLATIONS_ENV, "PYTHONPATH", "S2D_VARIANTS", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=INSTALL_TIMEOUT_S)  # fmt: skip


@pytest.mark.slow
def test_a_non_editable_install_finds_presets_variants_and_spaces_from_anywhere(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.skip("needs setuptools>=70.1 (the dev extra) to build without build isolation")
    source = _source_copy(tmp_path / "src")
    python = _venv_over_this_one(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"  # no ablations/ folder here or above
    elsewhere.mkdir()
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-build-isolation", "--ignore-installed", "--no-cache-dir", "--quiet",
                    source], elsewhere)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    where = _run([python, "-c", "import json, s2d_align.config as c; "
                  "print(json.dumps([c.__file__, str(c.find_ablations_dir())]))"], elsewhere)  # fmt: skip
    assert where.returncode == 0, where.stderr
    module, ablations = (Path(p).resolve() for p in json.loads(where.stdout))
    site = (tmp_path / "venv" / "lib").resolve()
    assert site in module.parents and site in ablations.parents  # the installed copy, not ours

    cli = tmp_path / "venv" / "bin" / "s2d-align"
    shown = _run([cli, "config", "show", "--preset", "smoke", "--variant", "sft"], elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert "name: smoke" in shown.stdout and "variant:sft" in shown.stdout
    plan = _run([cli, "ablate", "--preset", "smoke", "--seeds", "0", "--dry-run",
                 "--results", tmp_path / "results", "--no-progress"], elsewhere)  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    shipped = [p.stem for p in (shipped_ablations_dir() / "variants").glob("*.yaml")]
    assert f"{len(shipped)} run(s)" in plan.stdout  # the whole shipped grid, one seed
    assert all(name in plan.stdout for name in shipped)

    # the first steps of the smoke preset, trained from the installed package
    run = tmp_path / "run"
    trained = _run([cli, "train", "--preset", "smoke", "--variant", "sft", "--run", run,
                    "--cache", tmp_path / "cache", "--no-progress", "train.total_steps=2",
                    "model.vision.pretrain_steps=2", "model.llm.pretrain_steps=2"], elsewhere)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
