"""Which layer (schema default, preset, variant, override) set each value of a resolved config.

Each layer's leaves are wrapped in :class:`Sourced` before the layers are merged with the
ordinary merge functions, which move the wrappers like any other value; afterwards every leaf
names the last layer that wrote it. Stage names stay plain: the merge matches stages by them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from s2d_align.config.loader import STAGES_KEY, to_dict

#: Source of a value that no layer wrote.
DEFAULT = "default"


@dataclass(frozen=True)
class Sourced:
    """A leaf value with the layer that wrote it."""

    value: Any
    source: str


def tag_layer(data: Any, source: str, top: bool = True) -> Any:
    """``data`` (a layer mapping) with every leaf wrapped in :class:`Sourced`."""
    if not isinstance(data, Mapping):
        return Sourced(data, source)
    out = {}
    for key, value in data.items():
        if top and key == STAGES_KEY and isinstance(value, list):
            out[key] = [_tag_stage(s, source) for s in value]
        elif top and key == STAGES_KEY and isinstance(value, Mapping):
            out[key] = {n: _tag_stage(p, source) for n, p in value.items()}
        else:
            out[key] = tag_layer(value, source, top=False)
    return out


def _tag_stage(stage: Any, source: str) -> Any:
    if not isinstance(stage, Mapping):
        return stage  # not a stage: the merge reports it
    return {k: v if k == "name" else tag_layer(v, source, top=False) for k, v in stage.items()}


def untag(data: Any) -> Any:
    """Plain data: every :class:`Sourced` replaced by its value."""
    if isinstance(data, Sourced):
        return data.value
    if isinstance(data, dict):
        return {k: untag(v) for k, v in data.items()}
    if isinstance(data, list):
        return [untag(v) for v in data]
    return data


def written_sources(data: Any, names_from: str, prefix: str = "") -> dict[str, str]:
    """Dotted key -> source for every tagged leaf of merged ``data``; stage names are credited
    to ``names_from``, the layer that listed the stages."""
    out: dict[str, str] = {}
    if isinstance(data, Sourced):
        out[prefix] = data.source
    elif isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "name" and prefix.startswith(f"{STAGES_KEY}."):
                out[path] = names_from
            else:
                out.update(written_sources(value, names_from, path))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.update(written_sources(value, names_from, f"{prefix}.{i}"))
    return out


def leaf_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf of a plain config mapping (stages by index, other lists whole)."""
    if isinstance(data, dict):
        keys = []
        for key, value in data.items():
            keys += leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
        return keys
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return [k for i, v in enumerate(data) for k in leaf_keys(v, f"{prefix}.{i}")]
    return [prefix]


def _scalar(value: Any) -> str:
    """One YAML value on one line (flow style for lists)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10**6, allow_unicode=True)
    return text.strip()[1:-1]


def annotated_yaml(cfg: Any, sources: Mapping[str, str]) -> str:
    """The config as YAML with a trailing ``# SOURCE`` comment on every leaf."""
    lines: list[tuple[str, str | None]] = []

    def emit(data: dict[str, Any], indent: str, prefix: str, first: str = "") -> None:
        for i, (key, value) in enumerate(data.items()):
            lead = first if i == 0 and first else indent
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                lines.append((f"{lead}{key}:", None))
                emit(value, indent + "  ", path)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                lines.append((f"{lead}{key}:", None))
                for j, item in enumerate(value):
                    emit(item, indent + "    ", f"{path}.{j}", first=indent + "  - ")
            else:
                lines.append((f"{lead}{key}: {_scalar(value)}", sources.get(path, DEFAULT)))

    emit(to_dict(cfg), "", "")
    width = min(max(len(text) for text, _ in lines), 56) + 2  # comments in one column
    return "\n".join(
        text if source is None else f"{text}{' ' * max(2, width - len(text))}# {source}"
        for text, source in lines
    )
