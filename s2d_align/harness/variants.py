"""Ablation variants as data: ``s2d_align/ablations/variants/NAME.yaml``.

A variant is a named, versioned partial mapping over the config tree (``overrides``) applied on
top of a preset, and it says only what it changes:

- ``extends: OTHER`` starts from another variant (a file beside this one, else in the variants
  folder); this file's ``overrides`` merge onto OTHER's.
- ``stages`` as a **mapping** patches stages by name, field by field
  (``stages: {reference: {lambda_align: 0}}``). It patches the inherited stage list: the parent
  variant's when that one lists stages, else the preset's. A name that list lacks is an error
  naming the variant file and the valid stage names.
- ``stages`` as a **list** replaces the inherited list, for a variant that reorders, drops or
  replaces stages. Each listed stage named like an inherited stage starts from that stage's
  fields (the parent's, else the preset's): ``- name: keyphrases`` alone keeps lambda_align,
  lambda_kp, ...; only the fields it writes change.
- What trains is ``model.trainable`` of the preset; a stage's ``trainable`` holds only the parts
  a variant names, so a variant never changes what the preset freezes unless it says so.

The preset owns the budget (``train.total_steps``), so every variant of a grid trains for the same
number of optimizer steps (compute matching); a variant that tries to change it is rejected.

The grid is the folder: :func:`grid_variants` lists every file, in the order of its ``order:``
key, and ``s2d-align ablate`` runs them all unless ``--variants`` selects some.
:func:`resolve_with_provenance` says which layer (default, preset, variant, override) set each
value of a resolved config (``s2d-align config show``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_align.config import Config, find_ablations_dir, preset_path, to_dict
from s2d_align.config.loader import (
    STAGES_KEY,
    apply_overrides,
    check_partial,
    deep_merge,
    from_dict,
    merge_layer,
    merge_stages,
    parse_override,
    read_yaml,
    read_yaml_with_extends,
    stage_names,
)
from s2d_align.config.provenance import (
    DEFAULT,
    leaf_keys,
    tag_layer,
    untag,
    written_sources,
)
from s2d_align.config.schema import StageConfig
from s2d_align.errors import ConfigError

#: Keys a variant file may hold, and what each means.
VARIANT_KEYS = {
    "name": "identifier used in the store and in tables (must match the file name)",
    "version": "integer, bumped whenever the resolved configs change meaning",
    "order": "integer: place in the grid and in tables (ties by name; files without one last)",
    "extends": "another variant whose overrides this one starts from",
    "description": "one paragraph: what the variant changes and what it tests",
    "overrides": "partial mapping over the config tree (s2d_align/config/schema.py)",
}
#: Config keys that set the compute budget; presets own them, variants may not touch them.
BUDGET_KEYS = (("train", "total_steps"), ("train", "batch_size"), ("train", "grad_accum"))
#: The variant every table compares against.
REFERENCE_VARIANT = "s2d"
#: Environment variable naming another variants folder (a private grid; tests).
VARIANTS_ENV = "S2D_VARIANTS"
#: Provenance labels of the preset's values and of ``key=value`` overrides.
PRESET, OVERRIDE = "preset", "override"


@dataclass(frozen=True)
class Variant:
    """One ablation variant, as read (and validated) from its YAML file."""

    name: str
    version: int
    description: str
    #: What the variant applies to a preset: its parent's overrides with this file's merged on.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    order: int | None = None
    parent: Variant | None = None  # the variant it ``extends``
    own: Mapping[str, Any] | None = None  # what this file writes (None: all of ``overrides``)

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else f"variant {self.name!r}"

    def lineage(self) -> list[Variant]:
        """The ``extends`` chain, root first, ending with this variant."""
        return [*(self.parent.lineage() if self.parent else []), self]

    def resolve(self, preset: str | Path | None, overrides: Iterable[str] = ()) -> Config:
        """preset <- this variant <- dotted ``key=value`` overrides."""
        return resolve_with_provenance(preset, self, overrides)[0]

    def config(self, preset: str | Path | None, seed: int, extra: Iterable[str] = ()) -> Config:
        """The resolved run config: preset <- these overrides <- ``seed`` <- ``extra`` overrides."""
        return self.resolve(preset, [*extra, f"seed={int(seed)}"])


# ------------------------------------------------------------------------------- the folder
def variants_dir() -> Path:
    """``$S2D_VARIANTS``, else ``variants/`` of ``find_ablations_dir()``."""
    env = os.environ.get(VARIANTS_ENV)
    return Path(env) if env else find_ablations_dir() / "variants"


def available_variants(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or variants_dir()).glob("*.yaml"))


def _order(data: Mapping[str, Any], where: str) -> int | None:
    order = data.get("order")
    if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
        raise ConfigError(f"{where}: 'order' must be an integer, got {order!r}")
    return order


def variant_orders(directory: Path | None = None) -> dict[str, int | None]:
    """Each variant file's ``order:`` (None where it has none), read without resolving it."""
    folder = directory or variants_dir()
    paths = [folder / f"{n}.yaml" for n in available_variants(folder)]
    return {p.stem: _order(read_yaml(p), str(p)) for p in paths}


def grid_variants(directory: Path | None = None) -> list[str]:
    """The default grid: every variant file in the folder, by ``order:`` (ties by name; files
    without one after every ordered file). A new file joins with no code change."""
    orders = variant_orders(directory)
    return sorted(orders, key=lambda n: (orders[n] is None, orders[n] or 0, n))


def sort_by_order(names: Sequence[str], directory: Path | None = None) -> list[str]:
    """``names`` that are variant files in the grid's order; the others are left out."""
    wanted = set(names)
    return [n for n in grid_variants(directory) if n in wanted]


def _resolve_path(name_or_path: str | Path, beside: Path | None = None) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"variant file not found: {candidate}")
        return candidate
    if beside is not None and (beside / f"{name_or_path}.yaml").is_file():
        return beside / f"{name_or_path}.yaml"
    path = variants_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown variant {str(name_or_path)!r}; available: "
            f"{', '.join(available_variants()) or 'none'}"
        )
    return path


# ------------------------------------------------------------------------------- validation
def _touches_budget(overrides: Mapping[str, Any]) -> list[str]:
    found = []
    for section, key in BUDGET_KEYS:
        block = overrides.get(section)
        if isinstance(block, Mapping) and key in block:
            found.append(f"{section}.{key}")
    return found


def _check_stages(stages: Any, where: str) -> None:
    """A stage list or a by-name patch: known fields of the right types (a patch may be partial,
    so the cross-field checks wait until the stages are merged)."""
    if isinstance(stages, list):
        stage_names(stages, where)  # every item a mapping with a string name
        for i, stage in enumerate(stages):
            check_partial(StageConfig, stage, f"{where}: overrides.stages[{i}]")
    elif isinstance(stages, Mapping):
        for name, patch in stages.items():
            check_partial(StageConfig, patch, f"{where}: overrides.stages.{name}")
    else:
        raise ConfigError(
            f"{where}: overrides.stages must be a list (replace the stages) or a mapping "
            f"(patch stages by name), got {type(stages).__name__}"
        )


def validate_overrides(overrides: Mapping[str, Any], where: str) -> None:
    """Check a partial mapping against the config tree (unknown keys, types, invariants)."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: 'overrides' must be a mapping, got {type(overrides).__name__}")
    budget = _touches_budget(overrides)
    if budget:
        raise ConfigError(
            f"{where}: variants may not set {', '.join(budget)}: the preset owns the step budget "
            "so that every variant trains for the same number of optimizer steps"
        )
    if STAGES_KEY in overrides:
        _check_stages(overrides[STAGES_KEY], where)
    rest = {k: v for k, v in overrides.items() if k != STAGES_KEY}
    try:
        from_dict(Config, rest, "overrides")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def compose_overrides(
    base: Mapping[str, Any], update: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """``update`` (a child variant's overrides) merged onto ``base`` (its parent's), so that
    applying the result to a preset equals applying ``base`` and then ``update``."""
    out = deep_merge(
        {k: v for k, v in base.items() if k != STAGES_KEY},
        {k: v for k, v in update.items() if k != STAGES_KEY},
    )
    parent, child = base.get(STAGES_KEY), update.get(STAGES_KEY)
    if child is None:
        stages = parent
    elif parent is None:
        stages = child
    elif isinstance(child, list):  # a list: each stage starts from the parent's stage of its name
        inherited = (
            dict(zip(stage_names(parent, where), parent, strict=True))
            if isinstance(parent, list)
            else dict(parent)
        )
        stages = [
            deep_merge(inherited.get(name, {}), {**stage, "name": name})
            for name, stage in zip(stage_names(child, where), child, strict=True)
        ]
    elif isinstance(parent, list):  # a patch onto the parent's list: names checked here
        stages = merge_stages(list(parent), dict(child), where)
    else:  # two patches: the preset's names are checked when the variant is resolved
        stages = dict(parent)
        for name, patch in child.items():
            stages[name] = deep_merge(stages.get(name, {}), patch)
    if stages is not None:
        out[STAGES_KEY] = stages
    return out


def parse_variant(
    data: Mapping[str, Any],
    where: str,
    expected_name: str | None = None,
    parent: Variant | None = None,
) -> Variant:
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
    own = data["overrides"] or {}
    validate_overrides(own, where)
    overrides = compose_overrides(parent.overrides, own, where) if parent else own
    return Variant(
        name=name,
        version=version,
        description=description.strip(),
        overrides=overrides,
        order=_order(data, where),
        parent=parent,
        own=own,
    )


def _load(path: Path, seen: tuple[Path, ...]) -> Variant:
    if path.resolve() in seen:
        chain = " -> ".join(p.stem for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: circular 'extends': {chain}")
    data = read_yaml(path)
    parent = None
    if "extends" in data:
        other = data["extends"]
        if not isinstance(other, str) or not other or "/" in other or other.endswith(".yaml"):
            raise ConfigError(f"{path}: 'extends' must name another variant, got {other!r}")
        try:
            parent_path = _resolve_path(other, beside=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: extends: {exc}") from None
        parent = _load(parent_path, (*seen, path.resolve()))
    variant = parse_variant(data, str(path), expected_name=path.stem, parent=parent)
    return Variant(**{**variant.__dict__, "path": path})


def load_variant(name_or_path: str | Path) -> Variant:
    """Load ``variants/NAME.yaml`` (or a YAML path), following ``extends``, and
    validate it against the tree."""
    return _load(_resolve_path(name_or_path), ())


def load_variants(names: Iterable[str]) -> list[Variant]:
    variants = [load_variant(n) for n in names]
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise ConfigError(f"variant {v.name!r} is listed twice")
        seen.add(v.name)
    return variants


def variant_to_yaml_dict(variant: Variant) -> dict[str, Any]:
    """Plain mapping in the file layout, standalone (``extends`` already merged in); used when a
    sweep exports its best parameters."""
    out: dict[str, Any] = {"name": variant.name, "version": variant.version}
    if variant.order is not None:
        out["order"] = variant.order
    out["description"] = variant.description
    out["overrides"] = to_dict(dict(variant.overrides))
    return out


# ------------------------------------------------------------------------------- provenance
def resolve_with_provenance(
    preset: str | Path | None, variant: Variant | None, overrides: Iterable[str] = ()
) -> tuple[Config, dict[str, str]]:
    """The resolved config and, for every leaf (dotted key, stages by index), the layer that set
    it: ``default`` (schema), ``preset``, ``variant:NAME`` (a variant of the ``extends`` chain)
    or ``override`` (a ``key=value``). A value is credited to the last layer that wrote it."""
    overrides = list(overrides)
    data = tag_layer(to_dict(Config()), DEFAULT)
    names_from = DEFAULT
    if preset is not None:
        preset_layer = read_yaml_with_extends(preset_path(preset))
        data = deep_merge(data, tag_layer(preset_layer, PRESET))
        names_from = PRESET if STAGES_KEY in preset_layer else names_from
    if variant is not None:
        layer: dict[str, Any] = {}
        for v in variant.lineage():
            own = v.overrides if v.own is None else v.own
            layer = compose_overrides(layer, tag_layer(own, f"variant:{v.name}"), v.where)
            if isinstance(own.get(STAGES_KEY), list):
                names_from = f"variant:{v.name}"
        data = merge_layer(data, layer, variant.where)
    cfg = from_dict(Config, apply_overrides(untag(data), overrides), "config")
    written = written_sources(data, names_from)
    override_keys = [".".join(parse_override(text)[0]) for text in overrides]
    sources = {}
    for key in leaf_keys(to_dict(cfg)):
        hit = any(
            key == o or key.startswith(f"{o}.") or o.startswith(f"{key}.") for o in override_keys
        )
        sources[key] = OVERRIDE if hit else written.get(key, DEFAULT)
    return cfg, sources
