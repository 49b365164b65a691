"""The results store: SQLAlchemy 2 ORM over any database URL (SQLite file by default).

Everything a report needs lives here, so tables and figures are pure functions of the store:
runs (config, commit, environment, timings, tokens seen), metrics with CIs, per-sample scores,
protocol signatures, predictions, references, per-step training logs, val metrics scored during
training, and the log of every test evaluation (the test-set lock). Optuna studies share the
same URL (their own tables).

Table names carry an ``s2d_`` prefix so they never collide with Optuna's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from s2d_align.errors import ConfigError
from s2d_align.harness.ownership import Owner, is_stale
from s2d_align.harness.records import (
    Base,
    Evaluation,
    MetricRow,
    Prediction,
    Reference,
    Run,
    RunClaim,
    SampleScore,
    TestEvaluation,
    TrainLog,
    ValScore,
    now,
)

log = logging.getLogger(__name__)

DB_FILENAME = "s2d.db"

#: Run life cycle. ``complete`` means every requested split is generated, scored and recorded.
STATUSES = ("created", "trained", "complete", "failed", "pruned")


def storage_url(storage: str | None, results_dir: str | Path) -> str:
    """``--storage`` as given, else a SQLite file ``results_dir/s2d.db``."""
    if storage:
        if "://" not in storage:
            raise ConfigError(
                f"--storage {storage!r} is not a database URL (e.g. sqlite:///results/s2d.db, "
                "postgresql://user@host/db)"
            )
        return storage
    return f"sqlite:///{Path(results_dir) / DB_FILENAME}"


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLite waits for a lock instead of failing at once when several workers share the file."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120}}
    return {"pool_pre_ping": True}


class Store:
    """Typed access to the results database. Every method opens and commits its own session."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, **engine_kwargs(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_tables(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, storage: str | None, results_dir: str | Path) -> Store:
        url = storage_url(storage, results_dir)
        try:
            return cls(url)
        except Exception as exc:
            error = store_error(url, exc)
            if error is None:
                raise
            raise error from exc

    @classmethod
    def open_readonly(cls, storage: str | None, results_dir: str | Path) -> Store:
        """Open an existing store for reading: nothing is created, migrated or written.

        A missing file, a folder, a file that is not a database and a database without the
        suite's tables are :class:`ConfigError`s naming the path."""
        from sqlalchemy import inspect

        url = storage_url(storage, results_dir)
        engine_url = url
        path = sqlite_path(url)
        if path is not None:
            if not path.exists():
                blocker = file_in_the_way(path)
                if blocker is not None:
                    raise ConfigError(f"{blocker} is a file, not a results folder")
                raise ConfigError(
                    f"no results store at {path} (give --results or --storage of an existing store)"
                )
            if not path.is_file():
                raise ConfigError(f"{path} is a directory, not a results store (an SQLite file)")
            engine_url = f"sqlite:///file:{_uri_path(path)}?mode=ro&uri=true"
        store = cls.__new__(cls)
        store.url = url
        try:
            store.engine = create_engine(engine_url, **engine_kwargs(url))
            tables = set(inspect(store.engine).get_table_names())
        except Exception as exc:
            error = store_error(url, exc)
            if error is None:
                raise
            raise error from exc
        if Run.__tablename__ not in tables:
            store.engine.dispose()
            where = path if path is not None else redact(url)
            raise ConfigError(f"{where} is not an s2d-align results store (no s2d_runs table)")
        store._session = sessionmaker(store.engine, expire_on_commit=False)
        return store

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    # -- runs ----------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    def require_run(self, run_id: str) -> Run:
        run = self.get_run(run_id)
        if run is None:
            known = self.run_ids()
            hint = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
            raise ConfigError(f"no run {run_id!r} in {self.url}; known runs: {hint or 'none'}")
        return run

    def run_ids(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Run.id).order_by(Run.created_at)))

    def create_run(self, **fields: Any) -> Run:
        """Insert a run, or update the bookkeeping of an existing one (same id = same config).

        Two processes inserting the same new run at once: the loser's insert fails on the key
        and it updates the row the winner wrote instead."""
        try:
            return self._create_run(fields)
        except IntegrityError:
            return self._create_run(fields)

    def _create_run(self, fields: dict[str, Any]) -> Run:
        with self.session() as s, s.begin():
            run = s.get(Run, fields["id"])
            if run is None:
                run = Run(**fields)
                s.add(run)
            else:
                for key in ("run_dir", "splits", "git_sha", "environment", "purpose"):
                    if key in fields:
                        setattr(run, key, fields[key])
                if run.status == "failed":
                    run.status, run.error = "created", None
        return run

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(run_id)
            for key, value in fields.items():
                setattr(run, key, value)

    def runs(
        self,
        *,
        preset: str | None = None,
        variants: Iterable[str] | None = None,
        status: str | None = None,
        purpose: str | None = None,
    ) -> list[Run]:
        query = select(Run).order_by(Run.variant, Run.seed, Run.created_at)
        if preset is not None:
            query = query.where(Run.preset == preset)
        if variants is not None:
            query = query.where(Run.variant.in_(list(variants)))
        if status is not None:
            query = query.where(Run.status == status)
        if purpose is not None:
            query = query.where(Run.purpose == purpose)
        with self.session() as s:
            return list(s.scalars(query))

    def delete_run(self, run_id: str) -> None:
        with self.session() as s, s.begin():
            for table in (MetricRow, SampleScore, Evaluation, Prediction, ValScore):
                s.execute(delete(table).where(table.run_id == run_id))
            s.execute(delete(TrainLog).where(TrainLog.run_id == run_id))
            s.execute(delete(Run).where(Run.id == run_id))
            s.execute(delete(RunClaim).where(RunClaim.run_id == run_id))

    # -- claims (who is working on a run; see harness.ownership) --------------------------------
    def claim_run(self, run_id: str, owner: Owner, *, timeout_s: float) -> RunClaim | None:
        """Claim ``run_id`` for ``owner`` atomically; None when this owner holds it now, else
        the live holder's claim. A stale claim (``ownership.is_stale``) is taken over."""
        held = None
        for _ in range(5):
            try:
                with self.session() as s, s.begin():
                    s.add(RunClaim(run_id=run_id, owner=owner.id, host=owner.host, pid=owner.pid))
                return None
            except IntegrityError:
                pass  # claimed already: look at whom by
            with self.session() as s:
                held = s.get(RunClaim, run_id)
            if held is None:
                continue  # released in between: insert again
            if held.owner == owner.id:
                return None
            if not is_stale(held.host, held.pid, held.heartbeat_at, timeout_s, now(), held.owner):
                return held
            with self.session() as s, s.begin():  # only if nobody took it over meanwhile
                taken = s.execute(
                    update(RunClaim)
                    .where(
                        RunClaim.run_id == run_id,
                        RunClaim.owner == held.owner,
                        RunClaim.heartbeat_at == held.heartbeat_at,
                    )
                    .values(
                        owner=owner.id,
                        host=owner.host,
                        pid=owner.pid,
                        claimed_at=now(),
                        heartbeat_at=now(),
                    )
                )
            if taken.rowcount == 1:
                log.warning("run %s: took over the stale claim of %s:%s", run_id, held.host,
                            held.pid)  # fmt: skip
                return None
        return held

    def claim(self, run_id: str) -> RunClaim | None:
        with self.session() as s:
            return s.get(RunClaim, run_id)

    def heartbeat_claim(self, run_id: str, owner: Owner) -> bool:
        """Refresh ``owner``'s claim; False when it no longer holds it."""
        with self.session() as s, s.begin():
            result = s.execute(
                update(RunClaim)
                .where(RunClaim.run_id == run_id, RunClaim.owner == owner.id)
                .values(heartbeat_at=now())
            )
        return result.rowcount == 1

    def release_claim(self, run_id: str, owner: Owner) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(RunClaim).where(RunClaim.run_id == run_id, RunClaim.owner == owner.id))

    def update_owned_run(self, run_id: str, owner: Owner, **fields: Any) -> bool:
        """``update_run`` only while ``owner`` holds the run's claim (False, nothing written,
        otherwise): a process that lost its claim never rewrites another one's status."""
        with self.session() as s, s.begin():
            held = s.get(RunClaim, run_id)
            run = s.get(Run, run_id)
            if held is None or held.owner != owner.id or run is None:
                return False
            for key, value in fields.items():
                setattr(run, key, value)
        return True

    # -- training ------------------------------------------------------------------------------
    def record_training(
        self, run_id: str, *, steps: int, tokens_seen: int, wall_s: float, log_rows: list[dict]
    ) -> None:
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            run.steps, run.tokens_seen, run.train_wall_s = int(steps), int(tokens_seen), wall_s
            run.status = "trained"
            log = s.get(TrainLog, run_id)
            if log is None:
                s.add(TrainLog(run_id=run_id, rows=log_rows))
            else:
                log.rows = log_rows

    def train_log(self, run_id: str) -> list[dict]:
        with self.session() as s:
            log = s.get(TrainLog, run_id)
            return list(log.rows) if log is not None else []

    def record_val_scores(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        """Store the val metrics scored at ``step`` during training (``train.eval_every``),
        replacing any recorded for that step before (a resumed run scores it again)."""
        with self.session() as s, s.begin():
            s.execute(delete(ValScore).where(ValScore.run_id == run_id, ValScore.step == step))
            s.add_all(
                ValScore(run_id=run_id, step=int(step), name=name, value=float(value))
                for name, value in values.items()
            )

    def val_curve(self, run_id: str) -> list[dict]:
        """``{"step", "metric", "value"}`` rows of the val metrics scored during training, by
        step then metric; [] when none were (and for stores from before they were kept)."""
        from sqlalchemy import inspect

        if not inspect(self.engine).has_table(ValScore.__tablename__):
            return []  # an older store opened read-only: nothing to create, nothing to show
        query = (
            select(ValScore.step, ValScore.name, ValScore.value)
            .where(ValScore.run_id == run_id)
            .order_by(ValScore.step, ValScore.name)
        )
        with self.session() as s:
            return [{"step": st, "metric": n, "value": v} for st, n, v in s.execute(query)]

    # -- predictions and references ------------------------------------------------------------
    def record_predictions(
        self,
        run_id: str,
        split: str,
        rows: Iterable[Mapping],
        labels: Mapping[str, Mapping] | None = None,
    ) -> None:
        labels = labels or {}
        with self.session() as s, s.begin():
            s.execute(
                delete(Prediction).where(Prediction.run_id == run_id, Prediction.split == split)
            )
            s.add_all(
                Prediction(
                    run_id=run_id,
                    split=split,
                    sample_id=str(r["id"]),
                    prediction=str(r["prediction"]),
                    extra={k: v for k, v in r.items() if k not in ("id", "prediction")},
                    labels=dict(labels[str(r["id"])]) if str(r["id"]) in labels else None,
                )
                for r in rows
            )

    def predictions(self, run_id: str, split: str) -> dict[str, str]:
        with self.session() as s:
            rows = s.execute(
                select(Prediction.sample_id, Prediction.prediction).where(
                    Prediction.run_id == run_id, Prediction.split == split
                )
            )
            return {sid: text for sid, text in rows}

    def record_references(
        self,
        manifest_hash: str,
        split: str,
        reports: Mapping[str, str],
        images: Mapping[str, list],
        labels: Mapping[str, Mapping] | None = None,
    ) -> None:
        """Store a split's references once per manifest (reports rebuild without the data dir).

        Parallel runs of a grid record the same references at about the same time: a writer
        that loses the race (unique-key conflict) re-reads what the other wrote and fills in
        only what is still missing.
        """
        for attempt in range(3):
            try:
                self._record_references(manifest_hash, split, reports, images, labels or {})
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    def _record_references(self, manifest_hash, split, reports, images, labels) -> None:
        with self.session() as s, s.begin():
            have = {
                r.sample_id: r
                for r in s.scalars(
                    select(Reference).where(
                        Reference.manifest_hash == manifest_hash, Reference.split == split
                    )
                )
            }
            for sid, row in have.items():
                if row.labels is None and sid in labels:
                    row.labels = dict(labels[sid])
            s.add_all(
                Reference(
                    manifest_hash=manifest_hash,
                    split=split,
                    sample_id=sid,
                    report=text,
                    image_paths=list(images.get(sid, [])),
                    labels=dict(labels[sid]) if sid in labels else None,
                )
                for sid, text in reports.items()
                if sid not in have
            )

    def prediction_labels(self, run_id: str, split: str) -> dict[str, dict]:
        with self.session() as s:
            rows = s.execute(
                select(Prediction.sample_id, Prediction.labels).where(
                    Prediction.run_id == run_id,
                    Prediction.split == split,
                    Prediction.labels.is_not(None),
                )
            )
            return {sid: dict(labels) for sid, labels in rows}

    def reference_labels(self, manifest_hash: str, split: str) -> dict[str, dict]:
        with self.session() as s:
            rows = s.execute(
                select(Reference.sample_id, Reference.labels).where(
                    Reference.manifest_hash == manifest_hash,
                    Reference.split == split,
                    Reference.labels.is_not(None),
                )
            )
            return {sid: dict(labels) for sid, labels in rows}

    def references(self, manifest_hash: str, split: str) -> dict[str, tuple[str, list[str]]]:
        with self.session() as s:
            rows = s.execute(
                select(Reference.sample_id, Reference.report, Reference.image_paths).where(
                    Reference.manifest_hash == manifest_hash, Reference.split == split
                )
            )
            return {sid: (text, list(paths)) for sid, text, paths in rows}

    # -- scores --------------------------------------------------------------------------------
    def record_scores(
        self,
        run_id: str,
        split: str,
        report: Any,
        *,
        manifest_hash: str,
        n_samples: int,
        wall_s: float | None = None,
        purpose: str = "ablate",
    ) -> None:
        """Store a ScoreReport: metrics, per-sample scores, signature; log a test evaluation."""
        with self.session() as s, s.begin():
            for table in (MetricRow, SampleScore, Evaluation):
                s.execute(delete(table).where(table.run_id == run_id, table.split == split))
            s.add_all(
                MetricRow(
                    run_id=run_id,
                    split=split,
                    name=name,
                    value=float(m.value),
                    ci_low=None if m.ci_low is None else float(m.ci_low),
                    ci_high=None if m.ci_high is None else float(m.ci_high),
                    higher_is_better=bool(m.higher_is_better),
                )
                for name, m in report.metrics.items()
            )
            s.add_all(
                SampleScore(
                    run_id=run_id,
                    split=split,
                    metric=metric,
                    scores={str(k): float(v) for k, v in values.items()},
                )
                for metric, values in (report.per_sample or {}).items()
            )
            s.add(
                Evaluation(
                    run_id=run_id,
                    split=split,
                    signature=str(report.signature),
                    headline=str(getattr(report, "headline", "") or ""),
                    manifest_hash=manifest_hash,
                    n_samples=n_samples,
                    wall_s=wall_s,
                )
            )
            if split == "test":
                s.add(
                    TestEvaluation(
                        run_id=run_id,
                        purpose=purpose,
                        manifest_hash=manifest_hash,
                        signature=str(report.signature),
                        n_samples=n_samples,
                    )
                )

    def record_metrics(
        self,
        run_id: str,
        split: str,
        values: Mapping[str, float],
        *,
        higher_is_better: Mapping[str, bool],
    ) -> None:
        """Add (or replace, by name) metrics of a split that was already scored, e.g. per-run
        diagnostics; the split's other metrics and its evaluation log stay as they are."""
        missing = sorted(set(values) - set(higher_is_better))
        if missing:
            raise ValueError(f"record_metrics: no direction for {missing}")
        with self.session() as s, s.begin():
            s.execute(
                delete(MetricRow).where(
                    MetricRow.run_id == run_id,
                    MetricRow.split == split,
                    MetricRow.name.in_(list(values)),
                )
            )
            s.add_all(
                MetricRow(
                    run_id=run_id,
                    split=split,
                    name=name,
                    value=float(value),
                    higher_is_better=bool(higher_is_better[name]),
                )
                for name, value in values.items()
            )

    def metrics(self, run_id: str, split: str) -> dict[str, MetricRow]:
        with self.session() as s:
            rows = s.scalars(
                select(MetricRow).where(MetricRow.run_id == run_id, MetricRow.split == split)
            )
            return {m.name: m for m in rows}

    def metric_rows(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Flat rows joining runs and metrics (what the table builders turn into frames)."""
        query = select(Run.id, Run.variant, Run.preset, Run.seed, Run.purpose, MetricRow).join(
            MetricRow, MetricRow.run_id == Run.id
        )
        if run_ids is not None:
            query = query.where(Run.id.in_(list(run_ids)))
        out = []
        with self.session() as s:
            for rid, variant, preset, seed, purpose, m in s.execute(query):
                out.append(
                    {
                        "run_id": rid,
                        "variant": variant,
                        "preset": preset,
                        "seed": seed,
                        "purpose": purpose,
                        "split": m.split,
                        "metric": m.name,
                        "value": m.value,
                        "ci_low": m.ci_low,
                        "ci_high": m.ci_high,
                        "higher_is_better": m.higher_is_better,
                    }
                )
        return out

    def sample_scores(self, run_id: str, split: str, metric: str) -> dict[str, float]:
        with self.session() as s:
            row = s.scalar(
                select(SampleScore).where(
                    SampleScore.run_id == run_id,
                    SampleScore.split == split,
                    SampleScore.metric == metric,
                )
            )
            return dict(row.scores) if row is not None else {}

    def evaluations(self, run_ids: Iterable[str] | None = None) -> list[Evaluation]:
        query = select(Evaluation).order_by(Evaluation.run_id, Evaluation.split)
        if run_ids is not None:
            query = query.where(Evaluation.run_id.in_(list(run_ids)))
        with self.session() as s:
            return list(s.scalars(query))

    def test_evaluations(self, run_id: str | None = None) -> list[TestEvaluation]:
        query = select(TestEvaluation).order_by(TestEvaluation.id)
        if run_id is not None:
            query = query.where(TestEvaluation.run_id == run_id)
        with self.session() as s:
            return list(s.scalars(query))

    def timing_per_step(self, preset: str) -> tuple[float, float] | None:
        """Mean (train seconds per step, evaluation seconds per run) of finished runs of a preset."""
        with self.session() as s:
            runs = list(
                s.scalars(
                    select(Run).where(
                        Run.preset == preset, Run.status == "complete", Run.steps.is_not(None)
                    )
                )
            )
        runs = [r for r in runs if r.steps and r.train_wall_s]
        if not runs:
            return None
        per_step = sum(r.train_wall_s / r.steps for r in runs) / len(runs)
        evals = [(r.generate_wall_s or 0.0) + (r.score_wall_s or 0.0) for r in runs]
        return per_step, sum(evals) / len(evals)


def _create_tables(engine: Engine) -> None:
    """``create_all``, tolerating another process that creates the same tables at the moment.

    SQLite reports the race as an OperationalError; PostgreSQL as a DuplicateTable or, while the
    other transaction commits, a unique violation on its catalog (``pg_type``): both say
    "already exists", and the next attempt finds the tables and creates nothing."""
    for attempt in range(5):
        try:
            Base.metadata.create_all(engine)
            return
        except DBAPIError as exc:
            if "already exists" not in str(exc) or attempt == 4:
                raise


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL; None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url.startswith("sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///") :].split("?", 1)[0])


def file_in_the_way(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists, when it is not a folder."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.resolve()))


def redact(url: str) -> str:
    """A URL fit for a message: the password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as given
        return url


def store_error(url: str, exc: BaseException) -> ConfigError | None:
    """A one-line :class:`ConfigError` for a store that cannot be opened, or None when ``exc``
    is not about the store (a bug, re-raised as is)."""
    from sqlalchemy.exc import ArgumentError, DatabaseError

    path = sqlite_path(url)
    where = str(path) if path is not None else redact(url)
    if isinstance(exc, ImportError):
        return ConfigError(f"results store {where}: its database driver is not installed ({exc})")
    if isinstance(exc, ArgumentError):
        return ConfigError(f"results store {where}: not a usable database URL ({exc})")
    if isinstance(exc, OSError):
        blocker = file_in_the_way(path) if path is not None else None
        if blocker is not None:
            return ConfigError(f"results store {where}: {blocker} is a file, not a folder")
        return ConfigError(
            f"results store {where}: cannot create its folder: {exc.strerror}: {exc.filename}"
        )
    if isinstance(exc, DatabaseError):
        reason = " ".join(str(exc.orig if exc.orig is not None else exc).split())
        if path is not None and "not a database" in reason:
            return ConfigError(f"{path} is not an SQLite database ({reason})")
        if path is not None and "unable to open" in reason:
            reason += f" (is {path.parent} a writable folder?)"
        return ConfigError(f"results store {where}: {reason}")
    return None
