"""Reference rows: predictions made without training, scored and recorded beside the variants.

Every ablation table carries three rows that tell whether the benchmark can see an effect:

- ``all-normal`` (floor): every study gets one report, the most frequent train report among
  the train studies that the configured labeler calls No Finding (ties: the smallest text);
- ``nn-retrieval``: each study gets the report of its nearest train image under the shared
  pre-trained vision encoder (``s2d_align.training.retrieval.nearest_train_reports``);
- ``oracle-paraphrase`` (ceiling of n-gram metrics): SynthCXR writes each study's report again
  from its ground-truth findings in another style (SynthCXR data only; skipped otherwise);
- ``tower-probe``: no predictions, only finding AUROCs of a linear probe on the shared frozen
  tower's pooled features (``s2d_align.inference.tower_probe``), shown in the diagnostics table.

A row is scored by the grid's scorer with exactly the variants' protocol and recorded in the
store as a run of purpose ``reference`` (variant ``ref:NAME``, seed 0), once per preset and
everything it depends on (data, eval protocol, and the encoder for retrieval): a second
``ablate`` finds it recorded and skips it. Reports show these rows in their own block below the
variants, never as the best cell and never in a significance test; the regression check never
sees them (only ``ablate`` grids make them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from s2d_align.config import Config, to_dict
from s2d_align.errors import ConfigError, DataError, S2DError
from s2d_align.harness.ownership import RunClaimedError
from s2d_align.harness.provenance import environment, git_sha
from s2d_align.harness.records import now
from s2d_align.harness.spec import RunSpec
from s2d_align.harness.store import Store
from s2d_align.utils.io import write_jsonl

if TYPE_CHECKING:
    from s2d_align.harness.runner import Runner

log = logging.getLogger(__name__)

REFERENCE_NAMES = ("all-normal", "nn-retrieval", "oracle-paraphrase", "tower-probe")
#: Rows that make no predictions, only diagnostics (never in the ablation table or figures).
PROBE_NAMES = ("tower-probe",)
#: ``Run.purpose`` of reference rows (variants are ``ablate``; reports and regress filter on it).
REFERENCE_PURPOSE = "reference"
#: ``Run.variant`` of a reference row is this prefix + its name.
REFERENCE_PREFIX = "ref:"
#: Bump when a row's definition changes: it becomes a new run, computed again.
REFERENCES_VERSION = 1
#: Paraphrase stream of ``oracle-paraphrase`` (any value but the dataset's own stream).
PARAPHRASE_STYLE_SEED = 1
#: What each row is, for table footnotes.
DESCRIPTIONS = {
    "all-normal": "the most frequent train report among train studies labelled No Finding, "
    "for every study (floor)",
    "nn-retrieval": "the train report of the nearest train image under the shared pre-trained "
    "vision encoder (cosine of pooled embeddings)",
    "oracle-paraphrase": "SynthCXR's report rewritten from the study's ground-truth findings in "
    "another style, with identical positive/uncertain labels (the ceiling paraphrase leaves to "
    "n-gram metrics)",
    "tower-probe": "linear probe (logistic regression on the frozen tower's pooled features, "
    "fitted on train) — what the tower carries, a reference for finding AUROC, not a bound: "
    "the LM reads all tokens, not a pooled vector",
}


class ReferenceUnavailable(S2DError):
    """A reference row that cannot exist for this data (e.g. a paraphrase of real reports)."""


def reference_variant(name: str) -> str:
    return REFERENCE_PREFIX + name


def is_reference(variant: str) -> bool:
    return str(variant).startswith(REFERENCE_PREFIX)


def display_name(variant: str) -> str:
    """How tables name a reference row: ``ref: all-normal``."""
    return f"ref: {variant[len(REFERENCE_PREFIX) :]}" if is_reference(variant) else variant


def order_references(variants: Iterable[str]) -> list[str]:
    """Reference variants in the documented order, then any others sorted."""
    names = set(variants)
    known = [reference_variant(n) for n in REFERENCE_NAMES if reference_variant(n) in names]
    return known + sorted(names - set(known))


# -- the rows themselves -----------------------------------------------------------------------
def most_frequent_normal_report(
    reports: Mapping[str, str], labels: Mapping[str, Mapping[str, Any]]
) -> str:
    """The most frequent text among studies whose No Finding label is 1 (ties: smallest text)."""
    counts = Counter(
        text for sid, text in reports.items() if labels.get(sid, {}).get("No Finding") == 1
    )
    if not counts:
        raise DataError(
            f"all-normal: none of the {len(reports)} train reports is labelled No Finding by "
            "the configured labeler, so there is no normal report to predict"
        )
    return min(counts, key=lambda text: (-counts[text], text))


class ReferenceSource(Protocol):
    """Makes a reference row's predictions: ``{id: text}`` for exactly ``ids`` of ``split``;
    raises :class:`ReferenceUnavailable` when the row cannot exist for ``cfg``'s data."""

    def predictions(
        self, name: str, cfg: Config, split: str, ids: Sequence[str]
    ) -> dict[str, str]: ...


class PipelineReferences:
    """The real rows, from the run's dataset (read from the shared cache) and its labeler."""

    def __init__(self, cache_root: str | Path, *, progress: bool = False):
        self.cache_root = Path(cache_root)
        self.progress = progress
        self._normal: dict[tuple[Any, Any], str] = {}  # by (data, eval) config

    def probe(self, name: str, cfg: Config, split: str) -> dict[str, float]:
        """A probe row's diagnostics on ``split`` (``{metric: value}``)."""
        if name == "tower-probe":
            from s2d_align.inference.tower_probe import tower_probe

            return tower_probe(cfg, self.cache_root, split=split, progress=self.progress)
        raise ConfigError(f"unknown probe row {name!r}; known: {', '.join(PROBE_NAMES)}")

    def predictions(self, name: str, cfg: Config, split: str, ids: Sequence[str]) -> dict[str, str]:
        if name == "all-normal":
            text = self.normal_report(cfg)
            return {sid: text for sid in ids}
        if name == "nn-retrieval":
            from s2d_align.training.retrieval import nearest_train_reports

            return nearest_train_reports(cfg, self.cache_root, split, progress=self.progress)
        if name == "oracle-paraphrase":
            if cfg.data.source != "synth":
                raise ReferenceUnavailable(
                    "oracle-paraphrase needs SynthCXR ground truth; data.source is "
                    f"{cfg.data.source!r}"
                )
            from s2d_align.data.synth import paraphrase_reports

            return paraphrase_reports(cfg.data.synth, self.cache_root, split,
                                      PARAPHRASE_STYLE_SEED, progress=self.progress)  # fmt: skip
        raise ConfigError(f"unknown reference row {name!r}; known: {', '.join(REFERENCE_NAMES)}")

    def normal_report(self, cfg: Config) -> str:
        """all-normal's report, labelling the train reports as the scorer labels references."""
        key = (cfg.data, cfg.eval)
        if key in self._normal:
            return self._normal[key]
        from s2d_align.evaluation.labelers import get_labeler
        from s2d_align.evaluation.profiles import get_profile
        from s2d_align.training.data import load_run_annotation, train_reports

        ann = load_run_annotation(cfg, self.cache_root, progress=self.progress)
        reports: dict[str, str] = {}
        for study in ann.split("train"):  # one report per study (MIMIC rows repeat it per image)
            reports.setdefault(study.study_id or study.id, study.report)
        legacy = cfg.eval.profile == "r2gen-legacy"
        profile = get_profile(cfg.eval.profile, dataset=cfg.data.dataset,
                              train_reports=train_reports(ann) if legacy else None)  # fmt: skip
        seen = reports if profile.ce_on_raw else profile.references(reports)
        unique = sorted(set(seen.values()))
        by_text = dict(zip(unique, get_labeler(cfg.eval).label(unique), strict=True))
        labels = {sid: by_text[seen[sid]] for sid in reports}
        self._normal[key] = most_frequent_normal_report(reports, labels)
        return self._normal[key]


# -- planning and recording --------------------------------------------------------------------
def reference_key(name: str, cfg: Config) -> dict[str, Any]:
    """Everything a row's predictions and scores depend on (its run id is a hash of it)."""
    if name not in REFERENCE_NAMES:
        raise ConfigError(f"unknown reference row {name!r}; known: {', '.join(REFERENCE_NAMES)}")
    key: dict[str, Any] = {
        "reference": name,
        "version": REFERENCES_VERSION,
        "data": to_dict(cfg.data),
        "eval": to_dict(cfg.eval),
    }
    if name in ("nn-retrieval", "tower-probe"):
        key["vision"] = to_dict(cfg.model.vision)
    if name == "oracle-paraphrase":
        key["style_seed"] = PARAPHRASE_STYLE_SEED
    return key


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+._-" else "_" for ch in text).strip("_") or "x"


@dataclass(frozen=True)
class ReferencePlan:
    """One reference row to record: its id, what it depends on and a spec to score it with."""

    name: str
    preset: str
    key: dict[str, Any] = field(hash=False, compare=False)
    spec: RunSpec = field(hash=False, compare=False)  # a grid run of the same data and protocol
    splits: tuple[str, ...] = ("val", "test")

    @property
    def key_hash(self) -> str:
        blob = json.dumps(self.key, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def run_id(self) -> str:
        return f"{_slug(self.preset)}.ref-{self.name}.{self.key_hash[:8]}"

    def run_dir(self, results_dir: Path) -> Path:
        return (
            Path(results_dir)
            / "references"
            / _slug(self.preset)
            / f"{self.name}-{self.key_hash[:8]}"
        )


def plan_references(
    specs: Iterable[RunSpec], names: Sequence[str] = REFERENCE_NAMES
) -> list[ReferencePlan]:
    """The rows an ``ablate`` grid needs: one per (name, preset, key); other purposes get none."""
    plans: dict[str, ReferencePlan] = {}
    splits: dict[str, set[str]] = {}
    for spec in sorted((s for s in specs if s.purpose == "ablate"), key=lambda s: s.seed):
        for name in names:
            plan = ReferencePlan(name, spec.preset, reference_key(name, spec.config), spec)
            plans.setdefault(plan.run_id, plan)
            splits.setdefault(plan.run_id, set()).update(spec.splits)
    order = {"val": 0, "test": 1}
    out = []
    for run_id, p in plans.items():
        ordered = tuple(sorted(splits[run_id], key=order.get))
        out.append(ReferencePlan(p.name, p.preset, p.key, p.spec, ordered))
    return out


def reference_state(store: Store, plan: ReferencePlan) -> str:
    """``complete``, ``skipped`` (unavailable for this data: never retried) or ``pending``."""
    run = store.get_run(plan.run_id)
    if run is None:
        return "pending"
    if run.status == "skipped":
        return "skipped"
    done = {e.split for e in store.evaluations([plan.run_id])}
    return "complete" if run.status == "complete" and set(plan.splits) <= done else "pending"


def record_reference_rows(
    runner: Runner, specs: Iterable[RunSpec], source: ReferenceSource,
    names: Sequence[str] = REFERENCE_NAMES,
) -> dict[str, str]:  # fmt: skip
    """Compute, score and record every row the grid still lacks; ``{run id: outcome}``.

    Outcomes: ``recorded``, ``already recorded``, ``skipped: REASON`` or ``failed: ERROR`` (the
    run is marked failed in the store and retried by the next ``ablate``).
    """
    outcomes: dict[str, str] = {}
    # a source without probes (e.g. a test fake) plans none
    names = [n for n in names if n not in PROBE_NAMES or hasattr(source, "probe")]
    for plan in plan_references(specs, names):
        state = reference_state(runner.store, plan)
        if state == "complete":
            outcomes[plan.run_id] = "already recorded"
            continue
        if state == "skipped":
            outcomes[plan.run_id] = f"skipped: {runner.store.get_run(plan.run_id).error}"
            continue
        try:
            runner.prepare_shared(plan.spec)
            run_dir = plan.run_dir(runner.results_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            with runner.claimed(plan.run_id, run_dir):  # one recorder per row, as for runs
                if reference_state(runner.store, plan) == "complete":
                    outcomes[plan.run_id] = "already recorded"
                else:
                    outcomes[plan.run_id] = _record(runner, source, plan)
        except RunClaimedError as exc:
            outcomes[plan.run_id] = f"skipped: being recorded by {exc.holder}"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one broken row must not cost the grid
            error = f"{type(exc).__name__}: {exc}"
            if runner.store.get_run(plan.run_id) is not None:
                runner.store.update_run(plan.run_id, status="failed", error=error,
                                        finished_at=now())  # fmt: skip
            log.error("reference row %s failed: %s", plan.run_id, error)
            outcomes[plan.run_id] = f"failed: {error}"
    return outcomes


def _record(runner: Runner, source: ReferenceSource, plan: ReferencePlan) -> str:
    store, cfg = runner.store, plan.spec.config
    run_dir = plan.run_dir(runner.results_dir)
    store.create_run(
        id=plan.run_id,
        variant=reference_variant(plan.name),
        variant_version=REFERENCES_VERSION,
        preset=plan.preset,
        seed=0,  # deterministic: no training seed
        purpose=REFERENCE_PURPOSE,
        config_hash=plan.key_hash,
        config=plan.key,
        git_sha=git_sha(),
        environment=environment(),
        run_dir=str(run_dir),
        splits=list(plan.splits),
    )
    done = {e.split for e in store.evaluations([plan.run_id])}
    generate_wall = score_wall = 0.0
    for split in [s for s in plan.splits if s not in done]:
        refs = runner.references(plan.spec, split)
        if plan.name in PROBE_NAMES:
            outcome = _record_probe(runner, source, plan, split, refs)
            if outcome != "recorded":
                return outcome
            continue
        start = time.perf_counter()
        try:
            texts = source.predictions(plan.name, cfg, split, list(refs.reports))
        except ReferenceUnavailable as exc:
            store.update_run(plan.run_id, status="skipped", error=str(exc), finished_at=now())
            log.info("reference row %s skipped: %s", plan.name, exc)
            return f"skipped: {exc}"
        generate_wall += time.perf_counter() - start
        missing = [sid for sid in refs.reports if sid not in texts]
        if missing:
            raise DataError(
                f"reference row {plan.name}: no {split} prediction for {len(missing)} of "
                f"{len(refs.reports)} studies (e.g. {', '.join(missing[:3])})"
            )
        predictions = {sid: str(texts[sid]) for sid in refs.reports}
        if split == "test" and store.test_evaluations(plan.run_id):
            from s2d_align.harness.runner import TestSetLockError

            raise TestSetLockError(f"{plan.run_id}: the test split was already scored once")
        rows = [{"id": sid, "prediction": text} for sid, text in predictions.items()]
        write_jsonl(run_dir / "predictions" / f"{split}.jsonl", rows)
        start = time.perf_counter()
        scored = runner.scorer.score(cfg, split, predictions, refs)
        wall = time.perf_counter() - start
        score_wall += wall
        store.record_predictions(plan.run_id, split, rows, scored.prediction_labels)
        store.record_references(
            refs.manifest_hash, split, refs.reports, refs.images, scored.reference_labels
        )
        store.record_scores(plan.run_id, split, scored.report, manifest_hash=refs.manifest_hash,
                            n_samples=len(predictions), wall_s=wall,
                            purpose=REFERENCE_PURPOSE)  # fmt: skip
    store.update_run(plan.run_id, status="complete", steps=0, tokens_seen=0, train_wall_s=0.0,
                     generate_wall_s=generate_wall, score_wall_s=score_wall,
                     finished_at=now())  # fmt: skip
    log.info("reference row %s recorded (%s)", plan.run_id, ", ".join(plan.splits))
    return "recorded"


def _record_probe(runner: Runner, source: ReferenceSource, plan: ReferencePlan, split: str,
                  refs: Any) -> str:  # fmt: skip
    """Compute and store a probe row's diagnostics on ``split`` (no predictions, no scorer)."""
    from s2d_align.evaluation.metrics import metric_spec
    from s2d_align.evaluation.records import Metric, ScoreReport

    store = runner.store
    probe = getattr(source, "probe", None)
    try:
        if probe is None:
            raise ReferenceUnavailable(f"the reference source makes no probe rows ({plan.name})")
        start = time.perf_counter()
        values = probe(plan.name, plan.spec.config, split)
    except ReferenceUnavailable as exc:
        store.update_run(plan.run_id, status="skipped", error=str(exc), finished_at=now())
        log.info("reference row %s skipped: %s", plan.name, exc)
        return f"skipped: {exc}"
    wall = time.perf_counter() - start
    if split == "test" and store.test_evaluations(plan.run_id):
        from s2d_align.harness.runner import TestSetLockError

        raise TestSetLockError(f"{plan.run_id}: the test split was already scored once")
    metrics = {
        name: Metric(float(v), higher_is_better=metric_spec(name).higher_is_better)
        for name, v in values.items()
    }
    signature = f"probe:{plan.name}|v{REFERENCES_VERSION}"
    report = ScoreReport(metrics, {}, signature, "", len(refs.reports))
    store.record_scores(plan.run_id, split, report, manifest_hash=refs.manifest_hash,
                        n_samples=len(refs.reports), wall_s=wall,
                        purpose=REFERENCE_PURPOSE)  # fmt: skip
    return "recorded"


# -- reading them back for reports -------------------------------------------------------------
@dataclass
class ReferenceRows:
    """The reference rows of one preset and split that match the variants' data."""

    metrics: pd.DataFrame  # columns of PresetResults.metrics; variant = ref:NAME
    run_ids: dict[str, str]  # variant (ref:NAME) -> run id, in table order
    skipped: dict[str, str]  # name -> why the row does not exist for this data
    signatures: list[str]  # protocol signatures of the rows on this split

    @property
    def variants(self) -> list[str]:
        return list(self.run_ids)


def load_reference_rows(
    store: Store, preset: str, split: str, manifests: Sequence[str] = (), *, probes: bool = False
) -> ReferenceRows:
    """Complete rows of ``preset`` scored on ``split``; with ``manifests`` (the variants'), only
    rows scored on the same studies, so a row never sits beside variants of other data.
    ``probes``: the probe rows (diagnostics only, :data:`PROBE_NAMES`) instead of the rows
    with predictions."""
    latest: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    runs = [
        r for r in store.runs(preset=preset, purpose=REFERENCE_PURPOSE)
        if (r.variant[len(REFERENCE_PREFIX) :] in PROBE_NAMES) == probes
    ]  # fmt: skip
    evals = {(e.run_id, e.split): e for e in store.evaluations([r.id for r in runs])}
    for run in sorted(runs, key=lambda r: r.finished_at or r.created_at):
        name = run.variant[len(REFERENCE_PREFIX) :]
        if run.status == "skipped":
            skipped[name] = run
            continue
        ev = evals.get((run.id, split))
        if run.status != "complete" or ev is None:
            continue
        if manifests and ev.manifest_hash not in manifests:
            continue
        latest[run.variant] = run
    order = order_references(latest)
    ids = [latest[v].id for v in order]
    rows = store.metric_rows(ids)
    metrics = pd.DataFrame(
        rows,
        columns=[
            "run_id", "variant", "preset", "seed", "purpose", "split", "metric", "value",
            "ci_low", "ci_high", "higher_is_better",
        ],
    )  # fmt: skip
    reasons = {n: r.error or "not available" for n, r in skipped.items()
               if reference_variant(n) not in latest}  # fmt: skip
    sigs = sorted({evals[(rid, split)].signature for rid in ids})
    return ReferenceRows(metrics, {v: latest[v].id for v in order}, reasons, sigs)
