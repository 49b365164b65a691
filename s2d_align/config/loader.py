"""Typed config loading: YAML -> frozen dataclasses, with dotted ``key=value`` overrides.

Dicts become dataclasses at this boundary only; everything below works with typed objects.
Unknown keys and wrong types are errors that name the key path, the value and what was
expected, so a typo in a preset can never silently fall back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from s2d_align.config.schema import StageConfig
from s2d_align.errors import ConfigError

T = TypeVar("T")

#: Top-level key of a YAML file that names another file (same folder, without ``.yaml``)
#: whose values this one starts from.
EXTENDS_KEY = "extends"
#: Top-level key whose list items a variant layer matches by ``name`` (see :func:`merge_stages`).
STAGES_KEY = "stages"

#: A number in scientific notation that YAML 1.1 leaves as a string (``1e-3``, ``5E+2``).
_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list[{', '.join(_type_name(a) for a in args)}]"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert containers; raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: value {value!r} is not of type {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"{where}: value {value!r} is not one of {', '.join(repr(a) for a in get_args(tp))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}"
            )
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{where}: value {value!r} is not of type {_type_name(tp)} (expected a list)"
            )
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items)  # tuples keep frozen configs hashable
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: value {value!r} is not a mapping")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {
            _convert(k, k_tp, f"{where}.<key>"): _convert(v, v_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # YAML 1.1 reads "1e-3" (no dot) as a string; every user writes lr that way
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: value {value!r} is not of type float")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: value {value!r} is not of type int")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: value {value!r} is not of type bool (use true/false)")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: value {value!r} is not of type str")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: value {value!r} is not of type {_type_name(tp)}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys at this level: {', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:  # a missing required field
        raise ConfigError(f"{where}: {exc}") from None


def check_partial(cls: type, data: Any, where: str) -> None:
    """Check a partial mapping for dataclass ``cls``: unknown keys and wrong types only. The
    invariants that need every field (``__post_init__``) are checked once the layers are merged."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys at this level: {', '.join(sorted(fields))}"
        )
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            check_partial(hints[name], value, f"{where}.{name}")
        else:
            _convert(value, hints[name], f"{where}.{name}")


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (tuples become lists) suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; malformed YAML or a non-mapping is an error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:  # PyYAML recurses once per nesting level
        raise ConfigError(f"{path}: YAML nested too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``: mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _stage_name(stage: Any, where: str) -> str:
    if not isinstance(stage, dict):
        raise ConfigError(f"{where}: every stage must be a mapping, got {stage!r}")
    name = stage.get("name", StageConfig.name)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: a stage name must be a non-empty string, got {name!r}")
    return name


def stage_names(stages: Any, where: str) -> list[str]:
    """Names of a plain stage list (a stage without ``name`` is the schema's default stage)."""
    if not isinstance(stages, list):
        raise ConfigError(f"{where}: 'stages' must be a list, got {type(stages).__name__}")
    return [_stage_name(s, f"{where}: stages[{i}]") for i, s in enumerate(stages)]


def merge_stages(base: list[Any], update: Any, where: str) -> list[Any]:
    """The stage list after a variant layer's ``stages`` is merged onto ``base``.

    A mapping ``{NAME: {field: value}}`` patches the named stages of ``base`` field by field; a
    name ``base`` lacks is an error listing the valid names. A list replaces ``base``, and each
    listed stage named like a stage of ``base`` starts from that stage's fields, so a list says
    only the order (or subset) and what it changes.
    """
    names = stage_names(base, where)
    if isinstance(update, dict):
        out = list(base)
        for name, patch in update.items():
            if name not in names:
                raise ConfigError(
                    f"{where}: stages.{name}: no stage named {name!r} to patch; "
                    f"valid stage names: {', '.join(names)}"
                )
            if not isinstance(patch, dict):
                raise ConfigError(f"{where}: stages.{name} must be a mapping of stage fields")
            if patch.get("name", name) != name:
                raise ConfigError(f"{where}: stages.{name}: a patch cannot rename the stage")
            out[names.index(name)] = deep_merge(base[names.index(name)], patch)
        return out
    listed = stage_names(update, where)
    by_name = dict(zip(names, base, strict=True))
    return [
        deep_merge(by_name.get(name, {}), {**stage, "name": name})
        for name, stage in zip(listed, update, strict=True)
    ]


def merge_layer(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    """:func:`deep_merge`, except that a top-level ``stages`` merges by stage name
    (:func:`merge_stages`): how variant overrides go onto a preset."""
    rest = {k: v for k, v in update.items() if k != STAGES_KEY}
    out = deep_merge(base, rest)
    if STAGES_KEY in update:
        out[STAGES_KEY] = merge_stages(out.get(STAGES_KEY, []), update[STAGES_KEY], where)
    return out


def read_yaml_with_extends(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file, resolving a top-level ``extends: NAME`` against its own folder."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"{path}: circular '{EXTENDS_KEY}': {chain}")
    data = read_yaml(path)
    parent = data.pop(EXTENDS_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' must be a preset name, got {parent!r}")
    parent_path = path.parent / f"{parent}.yaml"
    if not parent_path.is_file():
        raise ConfigError(f"{path}: '{EXTENDS_KEY}: {parent}' but {parent_path} does not exist")
    return deep_merge(read_yaml_with_extends(parent_path, (*_seen, path)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML recurses once per nesting level
        raise ConfigError(f"override {key!r}: value is nested too deeply") from None
    return key.split("."), value


def set_path(data: dict[str, Any], keys: list[str], value: Any, origin: str) -> dict[str, Any]:
    """Return a copy of ``data`` with ``value`` at ``keys``; list items are addressed by index."""
    out = copy.deepcopy(data)
    node: Any = out
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"override {origin!r}: {'.'.join(keys[: i + 1])} is not an index of a "
                    f"list of length {len(node)}"
                )
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {origin!r}: {'.'.join(keys[:i])} is not a mapping")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})
    return out


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        data = set_path(data, keys, value, text)
    return data


def save_yaml(data: Any, path: str | Path) -> Path:
    """Write a config (dataclass or mapping) as YAML with keys in declaration order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = to_dict(data)
    path.write_text(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
