"""Typed configuration: schema (dataclasses) and loading (YAML + dotted overrides)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from s2d_align.config.loader import (
    apply_overrides,
    deep_merge,
    from_dict,
    merge_layer,
    read_yaml_with_extends,
    save_yaml,
    to_dict,
)
from s2d_align.config.schema import Config
from s2d_align.errors import ConfigError

__all__ = [
    "ABLATIONS_ENV",
    "Config",
    "ConfigError",
    "config_hash",
    "find_ablations_dir",
    "identity_fields",
    "load_config",
    "preset_path",
    "save_yaml",
    "shipped_ablations_dir",
    "to_dict",
]


#: Environment variable naming a folder that replaces the shipped presets, variants and spaces.
ABLATIONS_ENV = "S2D_ABLATIONS"


def shipped_ablations_dir() -> Path:
    """The presets, variants and sweep spaces shipped inside the package (package data)."""
    return Path(__file__).resolve().parents[1] / "ablations"


def find_ablations_dir() -> Path:
    """The folder with ``presets/``, ``variants/`` and ``sweeps/``: ``$S2D_ABLATIONS`` when set,
    else the package's own (the same in an editable and a regular install)."""
    import os

    env = os.environ.get(ABLATIONS_ENV)
    if not env:
        return shipped_ablations_dir()
    folder = Path(env).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{ABLATIONS_ENV}={env}: not a folder (it should hold presets/, variants/, sweeps/; "
            f"unset it to use the shipped ones in {shipped_ablations_dir()})"
        )
    return folder


def preset_path(preset: str | Path) -> Path:
    """A preset name (``smoke``) or a path to a YAML file."""
    candidate = Path(preset)
    if candidate.is_dir() and (candidate.suffix or len(candidate.parts) > 1):
        raise ConfigError(f"preset {candidate} is a directory, not a YAML file")
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"preset file not found: {candidate}")
        return candidate
    path = find_ablations_dir() / "presets" / f"{preset}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available) or 'none'}")
    return path


def load_config(
    preset: str | Path | None = None,
    overrides: Iterable[str] = (),
    extra: Iterable[dict[str, Any]] = (),
) -> Config:
    """Resolve a config: defaults <- preset YAML <- ``extra`` mappings (variants) <- overrides.

    An ``extra`` mapping's ``stages`` merges by stage name (``loader.merge_stages``)."""
    # Start from the defaults as plain data so that overrides can address list items
    # (``stages.1.lambda_align=0.5``) even when the preset does not restate them.
    data: dict[str, Any] = to_dict(Config())
    if preset is not None:
        data = deep_merge(data, read_yaml_with_extends(preset_path(preset)))
    for mapping in extra:
        data = merge_layer(data, mapping, "variant overrides")
    data = apply_overrides(data, overrides)
    return from_dict(Config, data, "config")


#: Config fields that only watch a run (its training numbers are the same whatever they say):
#: turning a tracker on must neither make a new run id, nor refuse to resume a run folder, nor
#: split a table row.
NON_IDENTITY_FIELDS = (("train", "report_to"),)


def identity_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config mapping (``to_dict`` form, or a stored one) without
    :data:`NON_IDENTITY_FIELDS`; absent fields are fine (configs stored by older versions)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section, name in NON_IDENTITY_FIELDS:
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def config_hash(cfg: Config) -> str:
    """Stable short hash of the resolved config (what makes two runs the same run)."""
    import hashlib
    import json

    blob = json.dumps(identity_fields(to_dict(cfg)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
