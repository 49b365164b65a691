"""Protocol signatures: one string that says how a number was computed (like sacreBLEU's).

Example::

    profile:raw-v1|nlg:pycocoevalcap-1.2|tok:ptb|meteor:1.5|cider:idf=refs|ce:rules-1|ckpt:-|
    umap:u0|labels:14|avg:micro|grounded:grounded-v1+rules-1.0|ci:boot1000-s0|
    manifest:3f2a9c1b7d4e|s2d:0.1.0

(one line in practice). Two numbers are comparable only when their signatures agree on every
field but ``s2d`` (and, for the CE fields, only the CE numbers depend on them). Fields:

- ``profile``: evaluation profile and version (:mod:`.profiles`), with its dataset rules,
  reference truncation and ``<unk>`` mapping for ``r2gen-legacy``;
- ``nlg`` / ``tok`` / ``meteor`` / ``cider``: metric implementation, tokenizer, METEOR version,
  CIDEr's IDF source (the evaluated references);
- ``ce`` / ``ckpt``: labeler signature and the first 12 hex digits of its checkpoint's SHA-256;
- ``umap`` / ``labels`` / ``avg``: the headline CE cell (uncertain mapping, label set, average);
- ``grounded``: grounded finding F1 version and the analyser version it reads (it always uses
  the rules analyser, whatever the CE labeler);
- ``ci``: bootstrap resamples and seed of the intervals;
- ``manifest``: first 12 hex digits of the test-set content hash (ids + report texts);
- ``s2d``: the suite version.
"""

from __future__ import annotations

from collections.abc import Mapping

from s2d_align import __version__
from s2d_align.errors import DataError

__all__ = ["SIGNATURE_FIELDS", "format_signature", "parse_signature"]

SIGNATURE_FIELDS = (
    "profile", "nlg", "tok", "meteor", "cider", "ce", "ckpt",
    "umap", "labels", "avg", "grounded", "ci", "manifest", "s2d",
)  # fmt: skip


def _clean(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "/").replace("\n", " ")


def format_signature(fields: Mapping[str, object]) -> str:
    """``key:value`` pairs joined by ``|`` in :data:`SIGNATURE_FIELDS` order (``s2d`` filled in)."""
    values = {"s2d": __version__, **fields}
    unknown = sorted(set(values) - set(SIGNATURE_FIELDS))
    if unknown:
        raise ValueError(f"unknown signature fields {unknown}; known: {SIGNATURE_FIELDS}")
    return "|".join(f"{key}:{_clean(values.get(key))}" for key in SIGNATURE_FIELDS)


def parse_signature(signature: str) -> dict[str, str]:
    """The inverse of :func:`format_signature`: ``{field: value}`` in the string's order."""
    out: dict[str, str] = {}
    for part in signature.strip().split("|"):
        key, sep, value = part.partition(":")
        if not sep or not key:
            raise DataError(f"malformed signature part {part!r} in {signature!r}")
        if key in out:
            raise DataError(f"signature field {key!r} repeated in {signature!r}")
        out[key] = value
    return out


def short_hash(value: str | None, length: int = 12) -> str:
    return "-" if not value else value[:length]
