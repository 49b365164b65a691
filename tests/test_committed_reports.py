"""The committed results: ``reports/default``'s tables are what its committed bundle rebuilds to.

The README quotes those tables, so a change to how a table is computed or written must come with
the committed reports rebuilt (``s2d-align report --results reports/default/results.jsonl.gz
--reports DIR``, then copy the tables): this test fails until it does.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from s2d_align.harness.bundle import opened_results
from s2d_align.harness.reports import preset_tables

COMMITTED = Path(__file__).resolve().parents[1] / "reports" / "default"


_NUMBER = re.compile(r"[-+]?\d+\.\d+")


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_same_text(got: str, want: str, name: str) -> None:
    """Equal but for the last printed digit of a number (another CPU may round otherwise)."""
    assert _NUMBER.split(got) == _NUMBER.split(want), (
        f"reports/default/{name} is not what the bundle rebuilds to: rebuild the reports"
    )
    for g, w in zip(_NUMBER.findall(got), _NUMBER.findall(want), strict=True):
        ulp = 10.0 ** -len(w.split(".")[1])
        assert abs(float(g) - float(w)) <= ulp * 1.01, f"reports/default/{name}: {g} vs {w}"


@pytest.mark.slow
def test_committed_default_tables_are_what_the_committed_bundle_rebuilds():
    bundle = COMMITTED / "results.jsonl.gz"
    assert bundle.is_file(), f"{bundle} is missing: the committed results have no bundle"
    with opened_results(None, bundle) as store:
        made = preset_tables(store, "default")
    assert made is not None and made.diagnostics is not None
    files = made.files()
    tables = {p.name for p in COMMITTED.iterdir() if p.suffix in {".md", ".csv", ".tex"}}
    assert set(files) == tables
    for name in ("ablation.md", "ablation.tex", "diagnostics.md"):
        assert_same_text(files[name], (COMMITTED / name).read_text(encoding="utf-8"), name)
    for name in ("ablation.csv", "diagnostics.csv"):  # numbers to 1e-6: another CPU may round
        got, want = _rows(files[name]), _rows((COMMITTED / name).read_text(encoding="utf-8"))
        assert len(got) == len(want), name
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys(), name
            for key in g:
                if g[key] != w[key]:
                    assert float(g[key]) == pytest.approx(float(w[key]), abs=2e-6), (name, key, g)


def test_text_comparison_allows_the_last_digit_only():
    assert_same_text("a 0.123 | 1.5", "a 0.124 | 1.5", "x")
    with pytest.raises(AssertionError):
        assert_same_text("a 0.123", "a 0.125", "x")
    with pytest.raises(AssertionError, match="rebuild"):
        assert_same_text("a 0.123 b", "a 0.123 c", "x")
