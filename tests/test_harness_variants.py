"""Every YAML under ablations/ loads and validates; variants encode the ablation they claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2d_align.config import find_ablations_dir, load_config
from s2d_align.errors import ConfigError
from s2d_align.harness.runner import plan_grid
from s2d_align.harness.space import available_spaces, load_space
from s2d_align.harness.variants import (
    DEFAULT_VARIANTS,
    available_variants,
    load_variant,
    load_variants,
)

ABLATIONS = find_ablations_dir()
PRESETS = sorted((ABLATIONS / "presets").glob("*.yaml"))


def test_every_variant_file_loads_and_resolves_to_a_valid_config():
    names = available_variants()
    assert set(DEFAULT_VARIANTS) <= set(names), "a documented variant is missing"
    for name in names:
        variant = load_variant(name)
        assert variant.name == name and variant.version >= 1 and variant.description
        cfg = variant.config(None, seed=3)
        assert cfg.seed == 3
        assert abs(sum(s.step_fraction for s in cfg.stages) - 1) < 1e-9


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_takes_every_variant(path: Path):
    cfg = load_config(path.stem)
    assert cfg.train.total_steps >= 1
    for name in DEFAULT_VARIANTS:
        merged = load_variant(name).config(path.stem, seed=0)
        # compute matching: the preset's budget survives every variant
        assert merged.train.total_steps == cfg.train.total_steps
        assert merged.train.batch_size == cfg.train.batch_size


def test_every_sweep_space_loads_against_the_config_tree():
    spaces = available_spaces()
    assert spaces, "no sweep space shipped"
    for name in spaces:
        space = load_space(name)
        assert space.params and space.direction in ("maximize", "minimize")
        assert space.metric


def test_the_grid_is_compute_matched_and_tokens_are_not_the_budget():
    specs = plan_grid(None, load_variants(DEFAULT_VARIANTS), [0, 1])
    assert len(specs) == 2 * len(DEFAULT_VARIANTS)
    assert len({s.total_steps for s in specs}) == 1
    assert len({s.run_id for s in specs}) == len(specs)


def test_variants_encode_their_ablation():
    cfg = {n: load_variant(n).config(None, 0) for n in DEFAULT_VARIANTS}
    s2d = cfg["s2d"]
    assert [s.name for s in s2d.stages] == ["pair", "reference", "keyphrases"]
    assert s2d.model.memory.enabled and s2d.train.mode == "curriculum"
    assert s2d.stages[1].context == ("reference",) and s2d.stages[1].align_with == "reference"
    assert s2d.stages[2].lambda_kp > 0 and s2d.stages[2].align_with == "keyphrases"
    assert len(cfg["sft"].stages) == 1 and not cfg["sft"].model.memory.enabled
    assert len(cfg["sft+mem"].stages) == 1 and cfg["sft+mem"].model.memory.enabled
    assert [s.name for s in cfg["d2s"].stages] == ["keyphrases", "reference", "pair"]
    assert cfg["multitask"].train.mode == "multitask"
    assert [s.reset_memory for s in cfg["s2d-mem-reset"].stages] == [False, True, True]
    assert all(s.lambda_align == 0 for s in cfg["s2d-no-align"].stages)
    assert cfg["s2d-no-align"].model.memory.enabled
    assert not cfg["s2d-no-mem"].model.memory.enabled
    assert [s.name for s in cfg["s1+s2"].stages] == ["pair", "reference"]
    assert [s.name for s in cfg["s1+s3"].stages] == ["pair", "keyphrases"]
    # the only difference between s2d and s2d-mem-reset is the reset flag
    stripped = [
        s.__class__(**{**s.__dict__, "reset_memory": False}) for s in cfg["s2d-mem-reset"].stages
    ]
    assert tuple(stripped) == s2d.stages


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_unknown_override_key_names_the_file_and_the_valid_keys(tmp_path):
    path = _write(
        tmp_path, "bad", "name: bad\nversion: 1\noverrides:\n  model:\n    memroy: {slots: 4}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_variant(path)
    msg = str(err.value)
    assert str(path) in msg and "'memroy'" in msg and "memory" in msg


def test_unknown_top_level_key_and_name_mismatch_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'overides'"):
        load_variant(_write(tmp_path, "a", "name: a\nversion: 1\noverides: {}\n"))
    with pytest.raises(ConfigError, match=r"file is b\.yaml"):
        load_variant(_write(tmp_path, "b", "name: other\nversion: 1\noverrides: {}\n"))
    with pytest.raises(ConfigError, match="version"):
        load_variant(_write(tmp_path, "c", "name: c\nversion: one\noverrides: {}\n"))


def test_a_variant_may_not_change_the_step_budget(tmp_path):
    path = _write(
        tmp_path, "longer", "name: longer\nversion: 1\noverrides:\n  train: {total_steps: 9999}\n"
    )
    with pytest.raises(ConfigError, match="same number of optimizer steps"):
        load_variant(path)


def test_unknown_variant_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"available: .*s2d"):
        load_variant("no-such-variant")


def test_a_sweep_space_with_a_bad_key_fails_at_load(tmp_path):
    path = _write(
        tmp_path,
        "typo",
        "name: typo\nbase_variant: s2d\nparams:\n  lr: {key: train.learnig_rate, type: float, low: 0.001, high: 0.01}\n",
    )
    with pytest.raises(ConfigError, match="learnig_rate"):
        load_space(path)
    budget = _write(
        tmp_path,
        "budget",
        "name: budget\nparams:\n  steps: {key: train.total_steps, type: int, low: 10, high: 20}\n",
    )
    with pytest.raises(ConfigError, match="budget"):
        load_space(budget)
