"""Ablation variants as data: ``ablations/variants/NAME.yaml``.

A variant is a named, versioned partial mapping over the config tree (``overrides``). It is
applied on top of a preset; the preset owns the budget (``train.total_steps``), so every variant
of a grid trains for the same number of optimizer steps (compute matching). A variant that tries
to change the budget is rejected rather than silently winning by training longer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_align.config import Config, find_ablations_dir, load_config, to_dict
from s2d_align.config.loader import from_dict, read_yaml
from s2d_align.errors import ConfigError

#: Keys a variant file may hold, and what each means.
VARIANT_KEYS = {
    "name": "identifier used in the store and in tables (must match the file name)",
    "version": "integer, bumped whenever the overrides change meaning",
    "description": "one paragraph: what the variant changes and what it tests",
    "overrides": "partial mapping over the config tree (s2d_align/config/schema.py)",
}
#: Config keys that set the compute budget; presets own them, variants may not touch them.
BUDGET_KEYS = (("train", "total_steps"), ("train", "batch_size"), ("train", "grad_accum"))
#: The variant every table compares against.
REFERENCE_VARIANT = "s2d"
#: The grid ``ablate`` runs when no ``--variants`` are given (every shipped variant, in this order).
DEFAULT_VARIANTS = (
    "sft",
    "sft+mem",
    "s1+s2",
    "s1+s3",
    "s2d",
    "s2d-no-mem",
    "s2d-mem-reset",
    "s2d-no-align",
    "multitask",
    "d2s",
)


@dataclass(frozen=True)
class Variant:
    """One ablation variant, as read (and validated) from its YAML file."""

    name: str
    version: int
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def config(self, preset: str | Path | None, seed: int, extra: Iterable[str] = ()) -> Config:
        """The resolved run config: preset <- these overrides <- ``seed`` <- ``extra`` overrides."""
        return load_config(preset, [*extra, f"seed={int(seed)}"], extra=[dict(self.overrides)])


def variants_dir() -> Path:
    return find_ablations_dir() / "variants"


def available_variants() -> list[str]:
    return sorted(p.stem for p in variants_dir().glob("*.yaml"))


def _resolve_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"variant file not found: {candidate}")
        return candidate
    path = variants_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown variant {str(name_or_path)!r}; available: "
            f"{', '.join(available_variants()) or 'none'}"
        )
    return path


def _touches_budget(overrides: Mapping[str, Any]) -> list[str]:
    found = []
    for section, key in BUDGET_KEYS:
        block = overrides.get(section)
        if isinstance(block, Mapping) and key in block:
            found.append(f"{section}.{key}")
    return found


def validate_overrides(overrides: Mapping[str, Any], where: str) -> Config:
    """Check a partial mapping against the config tree (unknown keys, types, invariants)."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: 'overrides' must be a mapping, got {type(overrides).__name__}")
    budget = _touches_budget(overrides)
    if budget:
        raise ConfigError(
            f"{where}: variants may not set {', '.join(budget)}: the preset owns the step budget "
            "so that every variant trains for the same number of optimizer steps"
        )
    try:
        return from_dict(Config, dict(overrides), "overrides")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_variant(data: Mapping[str, Any], where: str, expected_name: str | None = None) -> Variant:
    """Build a :class:`Variant` from a mapping; every problem names ``where`` and the key."""
    unknown = sorted(set(data) - set(VARIANT_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(VARIANT_KEYS)}"
        )
    missing = [k for k in ("name", "version", "overrides") if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    name, version = data["name"], data["version"]
    if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string without '/', got {name!r}")
    if expected_name is not None and name != expected_name:
        raise ConfigError(f"{where}: 'name' is {name!r} but the file is {expected_name}.yaml")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{where}: 'version' must be a positive integer, got {version!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string")
    overrides = data["overrides"] or {}
    validate_overrides(overrides, where)
    return Variant(name=name, version=version, description=description.strip(), overrides=overrides)


def load_variant(name_or_path: str | Path) -> Variant:
    """Load ``ablations/variants/NAME.yaml`` (or a YAML path) and validate it against the tree."""
    path = _resolve_path(name_or_path)
    variant = parse_variant(read_yaml(path), str(path), expected_name=path.stem)
    return Variant(variant.name, variant.version, variant.description, variant.overrides, path)


def load_variants(names: Iterable[str]) -> list[Variant]:
    variants = [load_variant(n) for n in names]
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise ConfigError(f"variant {v.name!r} is listed twice")
        seen.add(v.name)
    return variants


def variant_to_yaml_dict(variant: Variant) -> dict[str, Any]:
    """Plain mapping in the file layout (used when a sweep exports its best parameters)."""
    return {
        "name": variant.name,
        "version": variant.version,
        "description": variant.description,
        "overrides": to_dict(dict(variant.overrides)),
    }
