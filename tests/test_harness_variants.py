"""Every YAML under s2d_align/ablations/ loads and validates; variants encode the ablation they claim and
say only that (``extends``, stage patches by name); the grid is the variants folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from s2d_align.cli.main import main
from s2d_align.config import find_ablations_dir, load_config, to_dict
from s2d_align.config.loader import from_dict
from s2d_align.config.schema import StageConfig
from s2d_align.errors import ConfigError
from s2d_align.harness.plan import plan_grid
from s2d_align.harness.reports.data import order_variants
from s2d_align.harness.space import available_spaces, load_space
from s2d_align.harness.variants import (
    VARIANTS_ENV,
    available_variants,
    grid_variants,
    load_variant,
    load_variants,
)

ABLATIONS = find_ablations_dir()
PRESETS = sorted((ABLATIONS / "presets").glob("*.yaml"))
#: The documented variants (s2d_align/ablations/README.md), in their grid order.
SHIPPED = ("s2d", "sft", "sft+mem", "s1+s2", "s1+s3", "s2d-no-mem", "s2d-mem-reset",
           "s2d-no-align", "multitask", "d2s", "sft-blind")  # fmt: skip


def test_every_variant_file_loads_and_resolves_to_a_valid_config():
    names = available_variants()
    assert set(SHIPPED) <= set(names), "a documented variant is missing"
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
    for name in grid_variants():
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
    specs = plan_grid(None, load_variants(grid_variants()), [0, 1])
    assert len(specs) == 2 * len(SHIPPED)
    assert len({s.total_steps for s in specs}) == 1
    assert len({s.run_id for s in specs}) == len(specs)


def test_variants_encode_their_ablation():
    cfg = {n: load_variant(n).config(None, 0) for n in SHIPPED}
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


# ----------------------------------------------------------------------------- say only what they mean
# s2d's stages as the shipped presets and s2d.yaml write them.
S2D_STAGES = (
    {"name": "pair", "context": [], "step_fraction": 0.4},
    {"name": "reference", "context": ["reference"], "align_with": "reference",
     "lambda_align": 0.1, "step_fraction": 0.3},
    {"name": "keyphrases", "context": ["reference", "keyphrases"], "align_with": "keyphrases",
     "lambda_align": 0.1, "lambda_kp": 0.5, "keyphrase_dropout": 0.3, "step_fraction": 0.3},
)  # fmt: skip
NO_ALIGN = {"align_with": "none", "lambda_align": 0.0}
# What each rewritten variant must resolve to (the stage lists its old, fully written file held).
EXPECTED_STAGES = {
    "s2d": S2D_STAGES,
    "s2d-no-align": (S2D_STAGES[0], {**S2D_STAGES[1], **NO_ALIGN}, {**S2D_STAGES[2], **NO_ALIGN}),
    "s2d-no-mem": (S2D_STAGES[0], {**S2D_STAGES[1], **NO_ALIGN}, {**S2D_STAGES[2], **NO_ALIGN}),
    "s2d-mem-reset": (
        S2D_STAGES[0],
        {**S2D_STAGES[1], "reset_memory": True},
        {**S2D_STAGES[2], "reset_memory": True},
    ),
    "d2s": S2D_STAGES[::-1],
    "multitask": S2D_STAGES,
    "s1+s2": ({**S2D_STAGES[0], "step_fraction": 0.5}, {**S2D_STAGES[1], "step_fraction": 0.5}),
    "s1+s3": ({**S2D_STAGES[0], "step_fraction": 0.5}, {**S2D_STAGES[2], "step_fraction": 0.5}),
    "sft": ({"name": "pair", "step_fraction": 1.0},),
    "sft+mem": ({"name": "pair", "step_fraction": 1.0},),
    "sft-blind": ({"name": "pair", "step_fraction": 1.0},),
}
# Outside the stages, the only keys a shipped variant changes on a preset.
EXPECTED_CHANGES = {
    "sft": {"model.memory.enabled": False},
    "sft-blind": {"model.memory.enabled": False, "model.image_input": "constant"},
    "s2d-no-mem": {"model.memory.enabled": False},
    "multitask": {"train.mode": "multitask"},
}


def _flat(data, prefix=""):
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: data}


@pytest.mark.parametrize("preset", ["default", "smoke"])
@pytest.mark.parametrize("name", sorted(EXPECTED_STAGES))
def test_rewritten_variants_resolve_to_their_full_stage_lists(preset, name):
    cfg = load_variant(name).config(preset, 0)
    expected = tuple(from_dict(StageConfig, dict(s), "expected") for s in EXPECTED_STAGES[name])
    assert cfg.stages == expected
    base = _flat({k: v for k, v in to_dict(load_config(preset)).items() if k != "stages"})
    mine = _flat({k: v for k, v in to_dict(cfg).items() if k != "stages"})
    changed = {k: v for k, v in mine.items() if base[k] != v}
    memory_on = {} if base["model.memory.enabled"] else {"model.memory.enabled": True}
    assert changed == EXPECTED_CHANGES.get(name, memory_on)


def test_extends_and_a_stage_patch_by_name_change_only_what_they_name(tmp_path):
    path = _write(tmp_path, "s2d-strong-ref", (
        "name: s2d-strong-ref\nversion: 1\nextends: s2d\n"
        "overrides:\n  model: {memory: {slots: 8}}\n  stages:\n    reference: {lambda_align: 0.5}\n"
    ))  # fmt: skip
    cfg = load_variant(path).config("smoke", 0)
    s2d = load_variant("s2d").config("smoke", 0)
    assert cfg.stages[1].lambda_align == 0.5
    assert cfg.stages[1] == StageConfig(**{**s2d.stages[1].__dict__, "lambda_align": 0.5})
    assert (cfg.stages[0], cfg.stages[2]) == (s2d.stages[0], s2d.stages[2])
    assert cfg.model.memory.slots == 8 and cfg.model.memory.enabled  # the rest is s2d's
    assert cfg.model.trainable == s2d.model.trainable


def test_a_patch_naming_a_missing_stage_names_the_file_and_the_valid_stages(tmp_path):
    child = _write(tmp_path, "typo", (
        "name: typo\nversion: 1\nextends: s2d\noverrides:\n  stages:\n    refrence: {lambda_align: 0.5}\n"
    ))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_variant(child)
    msg = str(err.value)
    assert str(child) in msg and "'refrence'" in msg and "pair, reference, keyphrases" in msg
    # without a parent list the patch applies to the preset's stages: checked when resolved
    alone = _write(tmp_path, "alone", (
        "name: alone\nversion: 1\noverrides:\n  stages:\n    stage3: {lambda_kp: 1.0}\n"
    ))  # fmt: skip
    variant = load_variant(alone)
    with pytest.raises(ConfigError) as err:
        variant.config("smoke", 0)
    msg = str(err.value)
    assert str(alone) in msg and "'stage3'" in msg and "pair, reference, keyphrases" in msg


def test_a_stage_list_starts_each_stage_from_the_preset_stage_of_that_name(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "name: p\nmodel: {trainable: {vision: frozen}}\nstages:\n"
        "  - {name: pair, step_fraction: 0.5}\n"
        "  - {name: keyphrases, context: [keyphrases], lambda_kp: 0.7, keyphrase_dropout: 0.2,\n"
        "     step_fraction: 0.5, trainable: {vision: full}}\n"
    )
    variant = _write(tmp_path, "kp-first", (
        "name: kp-first\nversion: 1\noverrides:\n  stages:\n"
        "    - {name: keyphrases, step_fraction: 0.6}\n    - {name: extra, step_fraction: 0.4}\n"
    ))  # fmt: skip
    cfg = load_variant(variant).config(preset, 0)
    kp, extra = cfg.stages
    assert (kp.name, kp.step_fraction) == ("keyphrases", 0.6)
    assert (kp.context, kp.lambda_kp, kp.keyphrase_dropout) == (("keyphrases",), 0.7, 0.2)
    assert cfg.stage_trainable(kp).vision == "full"  # the preset's exception survives
    assert extra == StageConfig(name="extra", step_fraction=0.4)  # a new name: schema defaults
    assert cfg.stage_trainable(extra).vision == "frozen"


def _private_grid(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "variants"
    folder.mkdir()
    for name in ("s2d", "sft"):
        shutil.copy(ABLATIONS / "variants" / f"{name}.yaml", folder)
    monkeypatch.setenv(VARIANTS_ENV, str(folder))
    return folder


def test_a_new_variant_file_joins_the_grid_with_no_code_change(tmp_path, monkeypatch, capsys):
    folder = _private_grid(tmp_path, monkeypatch)
    _write(folder, "kp-heavy", (
        "name: kp-heavy\nversion: 1\norder: 5\nextends: s2d\n"
        "overrides:\n  stages:\n    keyphrases: {lambda_kp: 2.0}\n"
    ))  # fmt: skip
    assert grid_variants() == ["s2d", "kp-heavy", "sft"]
    code = main(["ablate", "--preset", "smoke", "--seeds", "0", "--out", str(tmp_path / "out"),
                 "--dry-run"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "3 run(s) to do" in text and "kp-heavy" in text
    assert text.index("s2d") < text.index("kp-heavy") < text.index("sft")


def test_the_grid_follows_the_order_key(tmp_path, monkeypatch):
    assert grid_variants(ABLATIONS / "variants") == list(SHIPPED)
    folder = _private_grid(tmp_path, monkeypatch)  # s2d: order 0, sft: order 10
    _write(folder, "b-tie", "name: b-tie\nversion: 1\norder: 10\noverrides: {}\n")
    _write(folder, "a-tie", "name: a-tie\nversion: 1\norder: 10\noverrides: {}\n")
    _write(folder, "unordered", "name: unordered\nversion: 1\noverrides: {}\n")
    _write(folder, "early", "name: early\nversion: 1\norder: -1\noverrides: {}\n")
    assert grid_variants() == ["early", "s2d", "a-tie", "b-tie", "sft", "unordered"]
    # the reports order their rows the same way; names without a file come after, sorted
    assert order_variants(["zz", "sft", "unordered", "b-tie", "s2d", "early"]) == [
        "early", "s2d", "b-tie", "sft", "unordered", "zz",
    ]  # fmt: skip
    _write(folder, "bad", "name: bad\nversion: 1\norder: first\noverrides: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'order' must be an integer"):
        grid_variants()


def test_shipped_reports_put_s2d_first_and_the_image_blind_control_last():
    assert order_variants(["sft-blind", "d2s", "sft", "s2d", "mystery"]) == [
        "s2d", "sft", "d2s", "sft-blind", "mystery",
    ]  # fmt: skip


def test_config_show_prints_each_value_with_its_source(capsys):
    argv = ["config", "show", "--preset", "smoke", "--variant", "s2d-no-mem", "train.lr=0.01"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    expected = load_variant("s2d-no-mem").resolve("smoke", ["train.lr=0.01"])
    assert yaml.safe_load(text) == to_dict(expected)  # the comments leave valid YAML
    lines = [line.split("#")[0].strip() + " #" + line.split("#")[-1] for line in text.splitlines()]
    assert "enabled: false # variant:s2d-no-mem" in lines  # memory off: the file itself
    assert "lambda_align: 0.0 # variant:s2d-no-align" in lines  # from the variant it extends
    assert "lambda_kp: 0.5 # variant:s2d" in lines  # from the root of the chain
    assert "lr: 0.01 # override" in lines
    assert "total_steps: 30 # preset" in lines
    assert "eval_every: 0 # default" in lines  # smoke does not set it
    assert text.startswith("# preset smoke, variant s2d-no-mem <- s2d-no-align <- s2d")
