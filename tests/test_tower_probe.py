"""The tower probe: finding AUROCs of a linear probe on the frozen initial vision tower."""

from __future__ import annotations

import numpy as np
import pytest
from training_fixtures import cache_root, tiny_config

from s2d_align.errors import DataError
from s2d_align.inference import tower_probe as tp

#: Enough studies that a probe's AUROC is not all noise; a short tower pre-training.
SIZE = ("data.synth.n_train=120", "data.synth.n_test=60", "model.vision.pretrain_steps=60")


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    cfg = tiny_config(*SIZE)
    cache = cache_root(tmp_path_factory)
    return cfg, cache, tp.tower_probe(cfg, cache)


@pytest.mark.slow
def test_probe_scores_present_observations_and_repeats_exactly(probed):
    cfg, cache, got = probed
    per_obs = {k: v for k, v in got.items() if k.startswith("diag/finding_auroc/")}
    assert per_obs and all(0.0 <= v <= 1.0 for v in per_obs.values())
    assert got["diag/finding_auroc"] == pytest.approx(np.mean(list(per_obs.values())))
    assert tp.tower_probe(cfg, cache) == got  # deterministic: same value twice


@pytest.mark.slow
def test_shuffled_train_labels_bring_the_probe_to_chance(probed, monkeypatch):
    cfg, cache, got = probed
    real = tp.split_labels
    calls = []

    def shuffled(cfg, studies):  # the first call labels train: break its image-label pairing
        y = real(cfg, studies)
        calls.append(len(studies))
        return np.random.default_rng(0).permutation(y) if len(calls) == 1 else y

    monkeypatch.setattr(tp, "split_labels", shuffled)
    control = tp.tower_probe(cfg, cache)
    print(got, control)
    assert abs(control["diag/finding_auroc"] - 0.5) < 0.15
    assert got["diag/finding_auroc"] > control["diag/finding_auroc"] + 0.1


def test_a_missing_split_is_named(tmp_path_factory):
    with pytest.raises(DataError, match="'nope'"):
        tp.tower_probe(tiny_config(), cache_root(tmp_path_factory), split="nope")


def test_a_grid_shows_the_probe_row_in_diagnostics_only(tmp_path):
    import harness_fakes as fakes
    from test_harness_references import FakeSource

    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.reports import diagnostics, tables
    from s2d_align.harness.reports.data import load_preset
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    class DiagScorer(fakes.FakeScorer):  # variants get a finding AUROC, as real runs do
        def score(self, cfg, split, predictions, refs):
            scored = super().score(cfg, split, predictions, refs)
            scored.report.metrics["diag/finding_auroc"] = fakes.FakeMetric(0.55, None, None)
            return scored

    class ProbeSource(FakeSource):
        def probe(self, name, cfg, split):
            self.calls.append((name, split))
            return {"diag/finding_auroc": 0.71, "diag/finding_auroc/Cardiomegaly": 0.8}

    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 6}\n")
    store = Store.open(None, tmp_path / "results")
    runner = Runner(store, tmp_path / "results", run_fn=fakes.fake_run_fn, scorer=DiagScorer(),
                    progress=False, reference_source=ProbeSource())  # fmt: skip
    assert runner.run_grid(plan_grid(preset, load_variants(["sft", "s2d"]), [0])).ok
    results = load_preset(store, "tiny")
    table = tables.ablation_table(store, results)
    assert "ref:tower-probe" not in table.references
    assert "tower-probe" not in tables.to_markdown(table)
    diag = diagnostics.diagnostics_table(store, results)
    md = diagnostics.to_markdown(diag)
    # a probe writes no reports: no distinct-reports cell before its finding AUROC
    assert "| `ref: tower-probe` | - | - | 0.710 |" in md
    assert "linear probe (logistic regression on the frozen tower's pooled features" in md
    assert "ref:tower-probe,diag/finding_auroc,0.710000" in diagnostics.to_csv(diag)
