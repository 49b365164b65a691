"""Cheap stand-ins for training and scoring, injected into the harness in its unit tests.

They follow the same contracts as the real pipeline (``s2d_align.harness.real_run``) so the
runner, store, sweeps, regression check and reports run unchanged; no model is trained. A fake
"model" copies each reference report, dropping a share of its sentences that depends on the
variant and the seed, so variants differ reproducibly and seeds add noise.

Module-level functions (not closures) so that sweep worker processes can unpickle them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from s2d_align.errors import DataError
from s2d_align.harness.spec import RunArtifacts, Scored, SplitReferences, TrainSummary

SENTENCES = [
    "the heart size is normal.",
    "no pleural effusion.",
    "no pneumothorax.",
    "small left pleural effusion.",
    "mild cardiomegaly.",
    "right lower lobe consolidation.",
    "the lungs are clear.",
    "there is a support device.",
]
#: Share of sentences the fake model drops, per variant (lower is better).
DROP = {"sft": 0.45, "sft+mem": 0.4, "s2d": 0.2, "s2d-no-mem": 0.35}
#: Set to a run-id substring to make the fake raise KeyboardInterrupt on that run (once).
INTERRUPT_ENV = "S2D_FAKE_INTERRUPT"
#: Added to every drop share (to inject a regression).
WORSEN_ENV = "S2D_FAKE_WORSEN"
#: Set to a run-id substring to make the fake fail on that run with a DataError (every time).
FAIL_ENV = "S2D_FAKE_FAIL"


def _rand(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def references(split: str, n: int = 24) -> SplitReferences:
    reports, images = {}, {}
    for i in range(n):
        sid = f"{split}{i:03d}"
        picks = [SENTENCES[(i * 3 + k) % len(SENTENCES)] for k in range(3)]
        reports[sid] = " ".join(picks)
        images[sid] = [f"/nonexistent/{sid}.png"]
    digest = hashlib.sha256(json.dumps(reports, sort_keys=True).encode()).hexdigest()
    return SplitReferences(reports=reports, images=images, manifest_hash=digest[:16])


def fake_run_fn(spec, run_dir: Path, *, splits, hooks, progress, cache_root=None) -> RunArtifacts:
    """Pretend to train (writes train_log.jsonl) and generate; logs each call for counting."""
    run_dir = Path(run_dir)
    calls = run_dir.parents[3] / "fake_calls.jsonl"  # RESULTS/runs/PRESET/VARIANT/SEED
    with calls.open("a", encoding="utf-8") as fh:
        fh.write(
            json.dumps(
                {
                    "run_id": spec.run_id,
                    "splits": list(splits),
                    "pid": os.getpid(),
                    "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                }
            )
            + "\n"
        )
    target = os.environ.get(INTERRUPT_ENV)
    marker = run_dir / "interrupted_once"
    if target and target in spec.run_id and not marker.exists():
        marker.write_text("x")
        raise KeyboardInterrupt
    failing = os.environ.get(FAIL_ENV)
    if failing and failing in spec.run_id:
        raise DataError(f"fake training failed on {spec.run_id}")
    drop = DROP.get(spec.variant.name, 0.3) + float(os.environ.get(WORSEN_ENV, "0"))
    steps = spec.config.train.total_steps
    rows = []
    for s_i, stage in enumerate(spec.config.stages):
        n = max(1, round(stage.step_fraction * steps))
        for k in range(n):
            rows.append(
                {
                    "stage": stage.name,
                    "step": len(rows) + 1,
                    "loss": 3.0 / (1 + len(rows) + k * 0 + s_i),
                    "lr": 1e-3,
                    "tokens": 100 * (len(rows) + 1),
                }
            )
        if spec.config.train.eval_every > 0:  # like the pipeline: val predictions to be scored
            hooks.intermediate_predictions(len(rows), _predict(spec, "val", drop))
        else:
            hooks.intermediate(
                len(rows),
                {"ce/u0/14/micro/f1": 1.0 - drop - 0.01 * (len(spec.config.stages) - s_i)},
            )
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = {split: _predict(spec, split, drop) for split in splits}
    return RunArtifacts(
        train=TrainSummary(
            steps=len(rows), tokens_seen=100 * len(rows), wall_s=0.01, log_rows=rows
        ),
        predictions=preds,
        generate_wall_s=0.01,
    )


def _predict(spec, split: str, drop: float) -> list[dict]:
    out = []
    for sid, text in references(split).reports.items():
        kept = [
            s
            for j, s in enumerate(text.split(". "))
            if _rand(spec.seed, spec.config_hash, sid, j) > drop
        ]
        out.append(
            {
                "id": sid,
                "prediction": ". ".join(kept) or "no finding.",
                "reference_ids": [],
                "keyphrases": [],
            }
        )
    return out


@dataclass
class FakeMetric:
    value: float
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool = True


@dataclass
class FakeReport:
    metrics: dict
    per_sample: dict = field(default_factory=dict)
    signature: str = "fake-protocol|v1"
    headline: str = "ce/u0/14/micro/f1"


OBS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation"]
KEYWORDS = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion",
            "pneumothorax": "Pneumothorax", "consolidation": "Consolidation",
            "support device": "Support Devices"}  # fmt: skip


def fake_labels(text: str) -> dict:
    """Toy CE labels: 1 for a mentioned finding, 0 when the sentence starts with 'no'."""
    labels: dict = {}
    for sentence in text.split("."):
        for word, obs in KEYWORDS.items():
            if word in sentence:
                labels[obs] = 0 if sentence.strip().startswith("no ") else 1
    return labels


class FakeScorer:
    """Word-overlap 'metrics' with per-sample values; counts calls per split in a file."""

    def __init__(self, log_path: str | Path | None = None):
        self.log_path = None if log_path is None else str(log_path)

    def references(self, cfg, split: str) -> SplitReferences:
        return references(split)

    def score(self, cfg, split, predictions, refs):
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"split": split}) + "\n")
        per = {}
        for sid, ref in refs.reports.items():
            r, p = set(ref.split()), set(predictions[sid].split())
            per[sid] = len(r & p) / max(1, len(r))
        mean = sum(per.values()) / len(per)
        exact = {sid: float(predictions[sid] == refs.reports[sid]) for sid in refs.reports}
        metrics = {
            "BLEU_4": FakeMetric(mean * 0.5, mean * 0.45, mean * 0.55),
            "ROUGE_L": FakeMetric(mean, mean - 0.05, mean + 0.05),
            "ce/u0/14/micro/f1": FakeMetric(mean * 0.9, mean * 0.85, mean * 0.95),
            "length_ratio": FakeMetric(1.0 / max(mean, 1e-6), None, None, higher_is_better=False),
        }
        for k, obs in enumerate(OBS):
            metrics[f"ce_f1/{obs}"] = FakeMetric(min(1.0, mean * (0.6 + 0.1 * k)), None, None)
        report = FakeReport(
            metrics=metrics,
            per_sample={
                "ROUGE_L": per,
                "BLEU_4": {k: v * 0.5 for k, v in per.items()},
                "ce/u0/14/example/f1": exact,
            },
        )
        return Scored(
            report,
            prediction_labels={i: fake_labels(t) for i, t in predictions.items()},
            reference_labels={i: fake_labels(t) for i, t in refs.reports.items()},
        )


def small_results_store(tmp_path: Path) -> tuple[Path, list[str]]:
    """A results folder holding a finished fake grid (sft and s2d, seed 0, 4 steps) and its
    run ids: what the CLI tests of stored results read."""
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    out = tmp_path / "results"
    store = Store.open(None, out)
    runner = Runner(store, out, run_fn=fake_run_fn, scorer=FakeScorer(), progress=False)
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0])
    assert runner.run_grid(specs).ok
    store.close()
    return out, [s.run_id for s in specs]
