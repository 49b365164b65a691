"""The CE heatmap says how many references are positive per observation, so an observation
absent from the test set never reads as one the model missed."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from s2d_align.harness.reports import figures


def _rows(variant: str, seed: int, f1: dict[str, float], support: dict[str, int]) -> list[dict]:
    rows = [{"variant": variant, "seed": seed, "split": "test", "metric": f"ce_f1/{o}",
             "value": v} for o, v in f1.items()]  # fmt: skip
    rows += [{"variant": variant, "seed": seed, "split": "test", "metric": f"ce_support/{o}",
              "value": float(n)} for o, n in support.items()]  # fmt: skip
    return rows


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch):
    """The figures ``ce_heatmap`` draws, kept open for inspection instead of saved."""
    figs = []

    def keep(fig, path: Path) -> Path:
        figs.append(fig)
        return path

    monkeypatch.setattr(figures, "_save", keep)
    yield figs
    for fig in figs:
        plt.close(fig)


def test_heatmap_shows_support_and_marks_absent_observations(tmp_path: Path, drawn) -> None:
    f1 = {"Edema": 0.5, "Fracture": 0.0, "No Finding": 0.8}
    support = {"Edema": 12, "Fracture": 0, "No Finding": 30}
    metrics = pd.DataFrame(_rows("sft", 0, f1, support) + _rows("s2d", 0, f1, support))
    figures.ce_heatmap(metrics, "test", tmp_path / "h.png")
    (fig,) = drawn
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["Edema (n=12)", "Fracture (n=0)", "No Finding (n=30)"]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("absent") == 2 and "0.00" not in texts  # Fracture: not a miss
    assert "0.50" in texts and "n = references positive" in ax.get_title()


def test_heatmap_without_support_rows_is_unchanged(tmp_path: Path, drawn) -> None:
    metrics = pd.DataFrame(_rows("sft", 0, {"Edema": 0.0}, {}))
    figures.ce_heatmap(metrics, "test", tmp_path / "h.png")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Edema"]
    assert [t.get_text() for t in ax.texts] == ["0.00"] and "n =" not in ax.get_title()
