"""The real ``run_fn`` and ``Scorer``: the training pipeline, generation and ``score_corpus``.

Imported only when a runner is built without injected fakes (it pulls in torch).

Pruning during sweeps: with ``train.eval_every = N`` (a sweep space's ``eval_every``) the
training loop generates val predictions every N steps; they reach the runner through
``hooks.intermediate_predictions``, are scored like the final val split, and the val metrics are
``PruningHooks``' intermediate values. Without it, the hooks get each stage's mean training loss
(``train_loss``) instead. The trial's final value is always the val metric of the finished run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2d_align.config import Config
from s2d_align.config.schema import DataConfig, EvalConfig
from s2d_align.harness.spec import RunArtifacts, RunSpec, Scored, SplitReferences, TrainSummary
from s2d_align.utils.io import read_jsonl

if TYPE_CHECKING:
    from s2d_align.inference.diagnostics import RunDiagnostics


class _IntermediateReporter:
    """Training callback: intermediate values for ``hooks`` (pruning).

    With ``train.eval_every`` the loop hands over val predictions every N steps, which go to
    ``hooks.intermediate_predictions`` (the runner scores them on val). Without it, the mean
    training loss of each finished stage goes to ``hooks.intermediate`` as ``train_loss``.
    A run reports one kind only, so a pruner compares like with like.
    """

    def __init__(self, cfg: Config, hooks: Any):
        from s2d_align.training.loop import plan_stages

        self.steps = {p.index: p.steps for p in plan_stages(cfg)}
        self.hooks = hooks
        self.val_scoring = cfg.train.eval_every > 0
        self.losses: list[float] = []

    def __call__(self, info: Any) -> None:
        if self.val_scoring:
            report = getattr(self.hooks, "intermediate_predictions", None)
            if info.val_predictions is not None and report is not None:
                report(info.global_step, info.val_predictions)
            return
        self.losses.append(float(info.loss))
        if info.stage_step == self.steps.get(info.stage_index):
            mean = sum(self.losses) / len(self.losses)
            self.losses = []
            self.hooks.intermediate(info.global_step, {"train_loss": mean})


def train_and_generate(
    spec: RunSpec,
    run_dir: Path,
    *,
    splits: Sequence[str],
    hooks: Any,
    progress: bool,
    cache_root: Path | None = None,
) -> RunArtifacts:
    """Train (or resume, or reuse a finished) run in ``run_dir``; generate ``splits``."""
    from s2d_align.inference.generate import generate_split
    from s2d_align.training.pipeline import run_training

    result = run_training(
        spec.config,
        run_dir,
        progress=progress,
        cache_root=cache_root,
        callbacks=[_IntermediateReporter(spec.config, hooks)],
    )
    log_path = Path(run_dir) / "train_log.jsonl"
    log_rows = read_jsonl(log_path) if log_path.is_file() else []
    start = time.perf_counter()
    predictions = {
        split: generate_split(run_dir, split, progress=progress, cache_root=cache_root)
        for split in splits
    }
    diagnostics = {
        split: run_split_diagnostics(spec, run_dir, split, progress=progress, cache_root=cache_root)
        for split in splits
        if split in DIAGNOSTIC_SPLITS
    }
    return RunArtifacts(
        train=TrainSummary(
            steps=result.total_steps,
            tokens_seen=result.tokens_seen,
            wall_s=result.wall_time_s,
            log_rows=log_rows,
        ),
        predictions=predictions,
        generate_wall_s=time.perf_counter() - start,
        diagnostics={split: d.values for split, d in diagnostics.items()},
        permuted_predictions={split: d.permuted_rows for split, d in diagnostics.items()},
    )


#: Splits whose per-run diagnostics are measured: the reported one only (a second generation
#: per run; sweeps, which generate val only, pay nothing).
DIAGNOSTIC_SPLITS = ("test",)


def run_split_diagnostics(
    spec: RunSpec, run_dir: Path, split: str, *, progress: bool, cache_root: Path | None
) -> RunDiagnostics:
    """``s2d_align.inference.diagnostics.run_diagnostics`` with the run's own labeler."""
    from s2d_align.evaluation.labelers import get_labeler
    from s2d_align.inference.diagnostics import run_diagnostics

    return run_diagnostics(
        run_dir,
        split,
        labeler=get_labeler(spec.config.eval),
        progress=progress,
        cache_root=cache_root,
    )


class RecordingLabeler:
    """Wraps a labeler and remembers the labels of every text it saw (for exact CE tests)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.signature = inner.signature
        self.checkpoint_sha256 = getattr(inner, "checkpoint_sha256", None)
        self.seen: dict[str, dict] = {}

    def label(self, reports: Sequence[str]) -> list[dict]:
        labels = self.inner.label(list(reports))
        for text, row in zip(reports, labels, strict=True):
            self.seen[text] = dict(row)
        return labels

    def labels_for(self, texts: dict[str, str]) -> dict[str, dict]:
        missing = sorted({t for t in texts.values() if t not in self.seen})
        if missing:
            self.label(missing)
        return {sid: self.seen[text] for sid, text in texts.items()}


class CorpusScorer:
    """References from the run's dataset; scores with ``score_corpus`` (the one protocol).

    One METEOR process serves every corpus this scorer scores (METEOR's start-up, ~7-10 s of
    CPU, used to dominate a small run's scoring); :meth:`close` stops it. A Java failure closes
    it too, so the next call starts a fresh one.
    """

    def __init__(self, cache_root: Path):
        self.cache_root = Path(cache_root)
        self._annotations: dict[DataConfig, Any] = {}  # frozen configs are the keys
        self._labelers: dict[EvalConfig, RecordingLabeler] = {}
        self._nlg: Any = None

    def _nlg_scorer(self):
        from s2d_align.evaluation.nlg import NLGScorer

        if self._nlg is None:
            self._nlg = NLGScorer().__enter__()
        return self._nlg

    def warm_up(self) -> None:
        """Start the METEOR process now: its JVM loads (~10 s of CPU) while a run trains."""
        self._nlg_scorer()

    def close(self) -> None:
        if self._nlg is not None:
            self._nlg.close()
            self._nlg = None

    def _annotation(self, cfg: Config):
        from s2d_align.training.data import load_run_annotation

        if cfg.data not in self._annotations:
            self._annotations[cfg.data] = load_run_annotation(cfg, self.cache_root)
        return self._annotations[cfg.data]

    def references(self, cfg: Config, split: str) -> SplitReferences:
        from s2d_align.data.audit import manifest_hash

        ann = self._annotation(cfg)
        studies = ann.split(split)
        return SplitReferences(
            reports={s.id: s.report for s in studies},
            images={s.id: [str(p) for p in s.image_paths] for s in studies},
            manifest_hash=manifest_hash(ann, split),
        )

    def _labeler(self, cfg: Config) -> RecordingLabeler:
        from s2d_align.evaluation.labelers import get_labeler

        if cfg.eval not in self._labelers:  # one labeler (and its label memory) per protocol
            self._labelers[cfg.eval] = RecordingLabeler(get_labeler(cfg.eval))
        return self._labelers[cfg.eval]

    def score(
        self, cfg: Config, split: str, predictions: dict[str, str], refs: SplitReferences
    ) -> Scored:
        from s2d_align.evaluation.nlg import JavaError
        from s2d_align.evaluation.score import ScoringContext, score_corpus

        labeler = self._labeler(cfg)
        train_reports = None
        if cfg.eval.profile == "r2gen-legacy":
            from s2d_align.training.data import train_reports as reports_of

            train_reports = reports_of(self._annotation(cfg))
        try:
            report = score_corpus(
                predictions,
                refs.reports,
                cfg.eval,
                ScoringContext(
                    manifest_hash=refs.manifest_hash,
                    cache_dir=self.cache_root / "eval",
                    dataset=cfg.data.dataset,
                    train_reports=train_reports,
                    labeler=labeler,
                    nlg_scorer=self._nlg_scorer(),
                ),
            )
        except JavaError:
            self.close()
            raise
        return Scored(
            report,
            prediction_labels=labeler.labels_for(predictions),
            reference_labels=labeler.labels_for(refs.reports),
        )
