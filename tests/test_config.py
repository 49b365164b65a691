"""The config tree: YAML loading, overrides and the errors a user sees for a typo."""

from __future__ import annotations

import pytest

from s2d_align.config import Config, ConfigError, config_hash, load_config, save_yaml, to_dict
from s2d_align.config.loader import from_dict, read_yaml_with_extends


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    path = save_yaml(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_dotted_overrides_reach_nested_fields_and_list_items():
    cfg = load_config(
        None,
        [
            "train.lr=0.0005",
            "model.memory.slots=16",
            "stages=[{name: a, step_fraction: 0.5}, {name: b, step_fraction: 0.5}]",
            "stages.1.lambda_align=0.3",
            "stages.1.align_with=reference",
        ],
    )
    assert cfg.train.lr == 0.0005
    assert cfg.model.memory.slots == 16
    assert [s.name for s in cfg.stages] == ["a", "b"]
    assert cfg.stages[1].lambda_align == 0.3
    assert config_hash(cfg) != config_hash(load_config(None))


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.learning_rate=1e-3"])
    msg = str(err.value)
    assert "'learning_rate'" in msg
    assert "config.train" in msg
    assert "lr" in msg and "total_steps" in msg


def test_wrong_type_names_field_value_and_expected_type():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.total_steps=many"])
    msg = str(err.value)
    assert "config.train.total_steps" in msg and "'many'" in msg and "int" in msg


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.memory.enabled=1", "bool"),
        ("train.batch_size=2.5", "int"),
        ("eval.profile=r2gen", "'raw-v1'"),
        ("stages.0.trainable.llm=partial", "'lora'"),
        ("model.memory.topk=1000", "topk"),
        ("data.synth.n_val=0", r"data\.synth\.n_val must be >= 1 for a training run"),
        ("data.synth.views=3", r"data\.synth\.views must be 1 or 2"),
    ],
)
def test_invalid_values_are_rejected(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_stage_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1"):
        from_dict(Config, {"stages": [{"name": "a", "step_fraction": 0.4}]})


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: malformed YAML"):
        load_config(bad)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(None, ["stages.5.name=x"])


def test_extends_merges_parent_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.1, total_steps: 10}\nseed: 3\n")
    (tmp_path / "child.yaml").write_text("extends: base\ntrain: {lr: 0.2}\n")
    merged = read_yaml_with_extends(tmp_path / "child.yaml")
    assert merged == {"train": {"lr": 0.2, "total_steps": 10}, "seed": 3}
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match="circular"):
        read_yaml_with_extends(tmp_path / "a.yaml")


def test_to_dict_is_plain_data():
    data = to_dict(load_config(None))
    assert isinstance(data["stages"], list)
    assert isinstance(data["model"]["lora"]["target_modules"], list)


def test_scientific_notation_overrides_are_numbers():
    """YAML 1.1 reads ``1e-3`` (no dot) as text; a float field takes it as the number."""
    from s2d_align.config import load_config

    assert load_config("smoke", overrides=["train.lr=1e-3"]).train.lr == 1e-3
    assert load_config("smoke", overrides=["train.lr=5E-4"]).train.lr == 5e-4
    with pytest.raises(ConfigError, match=r"train\.lr.*not of type float"):
        load_config("smoke", overrides=["train.lr=fast"])
