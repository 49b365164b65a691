"""ORM records of the results store (SQLAlchemy 2, typed). ``store.Store`` is the API over them.

Table names carry an ``s2d_`` prefix so they never collide with Optuna's tables, which live in
the same database. JSON columns keep variable-shaped data (config, environment, per-sample
scores, CE labels) without a schema migration for every new metric.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "s2d_runs"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    variant: Mapped[str] = mapped_column(String(100), index=True)
    variant_version: Mapped[int] = mapped_column(Integer)
    preset: Mapped[str] = mapped_column(String(200), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(String(20), default="ablate")  # ablate|sweep|regress
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    git_sha: Mapped[str] = mapped_column(String(80), default="unknown")
    environment: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_dir: Mapped[str] = mapped_column(Text, default="")
    splits: Mapped[list[Any]] = mapped_column(JSON, default=list)  # splits this run evaluates
    status: Mapped[str] = mapped_column(String(20), default="created")
    steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_seen: Mapped[int | None] = mapped_column(Integer, nullable=True)
    train_wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    generate_wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class MetricRow(Base):
    """One corpus metric of one (run, split), with its confidence interval.

    ``evaluation.records.Metric`` is the in-memory value a scoring returns; this is its row.
    """

    __tablename__ = "s2d_metrics"
    __table_args__ = (UniqueConstraint("run_id", "split", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("s2d_runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(120))
    value: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    higher_is_better: Mapped[bool] = mapped_column(default=True)


class SampleScore(Base):
    """Per-sample scores for one (run, split, metric): a JSON mapping id -> value.

    One row per metric rather than per sample keeps a 30-run grid at a few thousand rows.
    """

    __tablename__ = "s2d_sample_scores"
    __table_args__ = (UniqueConstraint("run_id", "split", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("s2d_runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(20))
    metric: Mapped[str] = mapped_column(String(120))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)


class Evaluation(Base):
    """One scoring of one split of one run: its protocol signature and headline metric."""

    __tablename__ = "s2d_evaluations"
    __table_args__ = (UniqueConstraint("run_id", "split"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("s2d_runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(20))
    signature: Mapped[str] = mapped_column(Text)
    headline: Mapped[str] = mapped_column(String(120), default="")
    manifest_hash: Mapped[str] = mapped_column(String(80), default="")
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class TestEvaluation(Base):
    """Append-only log of every test-split scoring (the test-set lock's audit trail)."""

    __tablename__ = "s2d_test_evaluations"
    __test__ = False  # not a pytest class

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(200), index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    manifest_hash: Mapped[str] = mapped_column(String(80), default="")
    signature: Mapped[str] = mapped_column(Text, default="")
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Prediction(Base):
    __tablename__ = "s2d_predictions"
    __table_args__ = (UniqueConstraint("run_id", "split", "sample_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("s2d_runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(20))
    sample_id: Mapped[str] = mapped_column(String(200))
    prediction: Mapped[str] = mapped_column(Text)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # reference_ids, keyphrases
    labels: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )  # CE labels


class Reference(Base):
    """Reference report and image paths of one evaluated sample, keyed by the split's manifest."""

    __tablename__ = "s2d_references"
    __table_args__ = (UniqueConstraint("manifest_hash", "split", "sample_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    manifest_hash: Mapped[str] = mapped_column(String(80), index=True)
    split: Mapped[str] = mapped_column(String(20))
    sample_id: Mapped[str] = mapped_column(String(200))
    report: Mapped[str] = mapped_column(Text)
    image_paths: Mapped[list[Any]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )  # CE labels


class TrainLog(Base):
    """The run's ``train_log.jsonl`` rows (stage, step, losses, lr, tokens) as one JSON list."""

    __tablename__ = "s2d_train_logs"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("s2d_runs.id", ondelete="CASCADE"), primary_key=True
    )
    rows: Mapped[list[Any]] = mapped_column(JSON)


class ValScore(Base):
    """One val metric scored during training (``train.eval_every``): (run, step, metric).

    A table of its own keeps older stores readable: ``create_all`` adds it to a store opened for
    writing, and a store opened read-only without it simply has no validation curves.
    """

    __tablename__ = "s2d_val_scores"
    __table_args__ = (UniqueConstraint("run_id", "step", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("s2d_runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(120))
    value: Mapped[float] = mapped_column(Float)


class RunClaim(Base):
    """Who is working on a run right now: at most one owner per run id (the primary key).

    A table of its own (no foreign key: a claim is taken before the run row exists) keeps stores
    written before claims existed readable: ``create_all`` adds it, nothing else changes.
    """

    __tablename__ = "s2d_claims"

    run_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(300))  # "host:pid:token@machine"
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(default=now)
    heartbeat_at: Mapped[datetime] = mapped_column(default=now)
