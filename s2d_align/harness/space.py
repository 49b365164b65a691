"""Sweep search spaces as data: ``s2d_align/ablations/sweeps/NAME.yaml``.

A space names a base variant, the validation metric to optimise, pruning settings, and
parameters, each a dotted key into the config tree (list items by index, e.g.
``stages.1.lambda_align`` is the second stage of the base variant) with a type and a range.
Every parameter is checked against the config tree when the space is loaded, at both ends of its
range, so a typo fails before the first trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_align.config import find_ablations_dir, load_config
from s2d_align.config.loader import read_yaml
from s2d_align.errors import ConfigError
from s2d_align.harness.variants import BUDGET_KEYS, Variant, load_variant

SPACE_KEYS = (
    "name",
    "version",
    "description",
    "base_variant",
    "seed",
    "objective",
    "pruner",
    "eval_every",
    "params",
)
PARAM_TYPES = ("int", "float", "categorical")


@dataclass(frozen=True)
class Param:
    name: str
    key: str  # dotted config key
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        if self.type == "float":
            return trial.suggest_float(
                self.name, float(self.low), float(self.high), log=self.log, step=self.step
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def override(self, value: Any) -> str:
        return f"{self.key}={_yaml_scalar(value)}"

    def corners(self) -> list[Any]:
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class Space:
    name: str
    version: int
    description: str
    base_variant: Variant
    seed: int
    metric: str  # val metric name as ScoreReport names it; None -> the config's CE headline
    direction: str
    params: tuple[Param, ...]
    pruner: Mapping[str, int] = field(default_factory=dict)
    path: Path | None = None
    # Val scoring every N optimizer steps during a trial: the pruner's intermediate values.
    # 0: the stage-end mean training loss instead (cheaper, a weaker signal).
    eval_every: int = 0

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        extra = [f"train.eval_every={self.eval_every}"] if self.eval_every else []
        return [*extra, *(p.override(values[p.name]) for p in self.params)]


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)  # quoted so YAML keeps it a string
    return repr(value)


def sweeps_dir() -> Path:
    return find_ablations_dir() / "sweeps"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in sweeps_dir().glob("*.yaml"))


def _parse_param(name: str, spec: Any, where: str) -> Param:
    here = f"{where}: params.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{here}: expected a mapping with key/type/range, got {spec!r}")
    allowed = {"key", "type", "low", "high", "log", "step", "choices"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"{here}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
        )
    key, kind = spec.get("key"), spec.get("type")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{here}: 'key' (a dotted config key) is required")
    if tuple(key.split(".")[:2]) in BUDGET_KEYS:
        raise ConfigError(f"{here}: {key} sets the step budget, which sweeps may not change")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{here}: 'type' must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{here}: a categorical parameter needs a non-empty 'choices' list")
        return Param(name, key, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{here}: '{bound}' must be a number, got {value!r}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{here}: an int parameter needs integer low/high")
    if low >= high:
        raise ConfigError(f"{here}: low ({low}) must be below high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{here}: a log-scale range needs low > 0")
    return Param(name, key, kind, low=low, high=high, log=log, step=spec.get("step"))


def parse_space(data: Mapping[str, Any], where: str, expected_name: str | None = None) -> Space:
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(SPACE_KEYS)}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' is required")
    if expected_name is not None and name != expected_name:
        raise ConfigError(f"{where}: 'name' is {name!r} but the file is {expected_name}.yaml")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{where}: 'version' must be a positive integer")
    base = load_variant(data.get("base_variant", "s2d"))
    objective = data.get("objective") or {}
    if not isinstance(objective, Mapping) or set(objective) - {"metric", "direction"}:
        raise ConfigError(f"{where}: 'objective' takes 'metric' and 'direction' only")
    direction = objective.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{where}: objective.direction must be maximize or minimize")
    pruner = data.get("pruner") or {}
    allowed_pruner = {"n_startup_trials", "n_warmup_steps", "interval_steps"}
    if not isinstance(pruner, Mapping) or set(pruner) - allowed_pruner:
        raise ConfigError(f"{where}: 'pruner' takes {', '.join(sorted(allowed_pruner))}")
    eval_every = data.get("eval_every", 0)
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ConfigError(f"{where}: 'eval_every' must be a non-negative integer (steps)")
    params_data = data.get("params")
    if not isinstance(params_data, Mapping) or not params_data:
        raise ConfigError(f"{where}: 'params' must be a non-empty mapping")
    params = tuple(_parse_param(str(n), s, where) for n, s in params_data.items())
    for p in params:  # every corner of the space must give a valid config
        for value in p.corners():
            try:
                load_config(None, [p.override(value)], extra=[dict(base.overrides)])
            except ConfigError as exc:
                raise ConfigError(f"{where}: params.{p.name} = {value!r}: {exc}") from None
    metric = objective.get("metric")
    if metric is None:
        metric = f"ce/{load_config(None, extra=[dict(base.overrides)]).eval.headline}"
    return Space(
        name=name,
        version=version,
        description=str(data.get("description", "")).strip(),
        base_variant=base,
        seed=int(data.get("seed", 0)),
        metric=str(metric),
        direction=direction,
        params=params,
        pruner=dict(pruner),
        eval_every=eval_every,
    )


def load_space(name_or_path: str | Path) -> Space:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
        if not path.is_file():
            raise ConfigError(f"sweep space file not found: {path}")
    else:
        path = sweeps_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown sweep space {str(name_or_path)!r}; available: {', '.join(available_spaces()) or 'none'}"
            )
    space = parse_space(read_yaml(path), str(path), expected_name=path.stem)
    return Space(**{**space.__dict__, "path": path})
