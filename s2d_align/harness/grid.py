"""Running a grid: one run after another, or N at a time on a pool of GPU-pinned workers.

``run_grid(runner, specs, jobs=N)`` runs N grid cells at a time in spawned worker processes,
each with its own store connection and scorer (one METEOR process per worker for its whole
life) and, with CUDA, its own GPU (worker k sees only visible device k mod #GPUs). The one-time
caches (data, tokenizer, tiny-LM pre-training) are built once in this process first. A run's
result does not depend on ``jobs``: every run trains in one process from its own seed.

Ctrl-C stops the grid once: the first one interrupts the runs in progress (in this process or
in every worker, which then starts nothing more), and the claims are given back before
``KeyboardInterrupt`` leaves ``run_grid``; more Ctrl-C while that happens are ignored, so they
cannot cut it short. A worker that has not stopped within ``STOP_TIMEOUT_S`` is terminated and
leaves its claim to a dead process, taken over at once by the next grid on this machine.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from s2d_align.errors import ConfigError, S2DError
from s2d_align.harness.ownership import DEFAULT_CLAIM_TIMEOUT_S, RunClaimedError
from s2d_align.harness.plan import run_state
from s2d_align.harness.spec import RunFn, RunSpec, Scorer
from s2d_align.harness.store import Store
from s2d_align.utils.progress import progress_bar

if TYPE_CHECKING:
    from s2d_align.harness.runner import Runner

log = logging.getLogger(__name__)

#: After Ctrl-C, how long parallel workers get to stop their runs and give back their claims.
STOP_TIMEOUT_S = 60.0


@dataclass
class GridReport:
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    claimed: dict[str, str] = field(default_factory=dict)  # run id -> "host:pid" training it
    references: dict[str, str] = field(default_factory=dict)  # reference row id -> outcome

    @property
    def ok(self) -> bool:
        return not self.failed


def run_grid(
    runner: Runner, specs: Iterable[RunSpec], *, stop_on_error: bool = False, jobs: int = 1
) -> GridReport:
    """Run every spec that is not complete yet, ``jobs`` at a time; failures are recorded
    and the rest of the grid still runs (unless ``stop_on_error``)."""
    specs = list(specs)
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    report = GridReport()
    todo = []
    for spec in specs:
        if run_state(runner.store, spec) == "complete":
            report.skipped.append(spec.run_id)
        else:
            todo.append(spec)
    bar = progress_bar(total=len(specs), wanted=runner.progress, desc="grid", unit="run",
                       position=0, leave=True)  # fmt: skip
    bar.update(len(report.skipped))
    with _interrupt_once() as interrupt:
        try:
            _record_references(runner, specs, report, stop_on_error)  # before any training
            if jobs > 1 and len(todo) > 1:
                jobs = min(jobs, len(todo))
                _run_parallel(runner, todo, jobs, report, bar, stop_on_error, interrupt)
            else:
                _run_sequential(runner, todo, report, bar, stop_on_error)
        finally:
            bar.close()
            runner.close()
    return report


def _record_references(
    runner: Runner, specs: list[RunSpec], report: GridReport, stop_on_error: bool
) -> None:
    """The grid's reference rows, once per grid; a failed one counts as a failed run."""
    report.references = runner.reference_rows(specs)
    for run_id, outcome in report.references.items():
        if outcome.startswith("failed: "):
            report.failed[run_id] = outcome[len("failed: ") :]
            if stop_on_error:
                raise S2DError(f"reference row {run_id} {outcome}")


def _run_sequential(
    runner: Runner, todo: list[RunSpec], report: GridReport, bar, stop_on_error: bool
) -> None:
    if todo:
        runner.warm_up()
    for spec in todo:
        bar.set_postfix_str(spec.run_id)
        try:
            _note_outcome(report, spec.run_id, runner.attempt(spec))
        except RunClaimedError as exc:
            _note_outcome(report, spec.run_id, ("claimed", exc.holder))
        except Exception as exc:  # recorded as failed; the rest of the grid still runs
            _record_failure(report, spec.run_id, exc)
            if stop_on_error:
                raise
        bar.update(1)


def _run_parallel(
    runner: Runner,
    todo: list[RunSpec],
    jobs: int,
    report: GridReport,
    bar,
    stop_on_error: bool,
    interrupt: _InterruptOnce,
) -> None:
    for spec in todo:  # build shared caches once, before the workers race for them
        runner.prepare_shared(spec)
    pool = _worker_pool(runner, jobs, len(todo))
    futures: dict[Future, RunSpec] = {}
    try:
        futures.update((pool.submit(_run_in_worker, s), s) for s in todo)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            # the call queue is FIFO: the earliest started futures are the executing ones
            running = [spec.run_id for f, spec in futures.items() if f.running()][:jobs]
            bar.set_postfix_str("running: " + ", ".join(running) if running else "")
            for future in done:
                spec = futures[future]
                exc = future.exception()
                if isinstance(exc, KeyboardInterrupt):  # a worker was interrupted: stop all
                    raise KeyboardInterrupt
                if exc is None:
                    _note_outcome(report, spec.run_id, future.result())
                else:
                    _record_failure(report, spec.run_id, exc)
                    if stop_on_error:
                        raise exc
                bar.update(1)
    except KeyboardInterrupt:
        interrupt.stopping = True  # also when it came from a worker: ignore Ctrl-C from now
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_pool(runner: Runner, jobs: int, n_runs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned workers, each rebuilding ``runner`` from its injected parts and, with
    CUDA, pinned to one visible GPU."""
    ctx = mp.get_context("spawn")  # safe with torch and CUDA; fork is not
    gpus = visible_gpus()
    devices = None
    if gpus:  # pin worker k to GPU k (round robin when there are more workers than GPUs)
        devices = ctx.Queue()
        for k in range(jobs):
            devices.put(gpus[k % len(gpus)])
    run_fn, scorer = runner.injected
    init = (
        runner.store.url,
        str(runner.results_dir),
        str(runner.cache_root),
        run_fn,
        scorer,
        logging.getLogger().getEffectiveLevel(),
        devices,
        runner.claim_timeout_s,
    )
    log.info("grid: %d run(s) on %d parallel worker(s)%s", n_runs, jobs,
             f", GPUs {', '.join(gpus)}" if gpus else "")  # fmt: skip
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=init
    )


def _note_outcome(report: GridReport, run_id: str, outcome) -> None:
    if outcome == "executed":
        report.executed.append(run_id)
    elif outcome == "complete":  # finished by another process while this grid waited
        report.skipped.append(run_id)
    else:
        report.claimed[run_id] = outcome[1]
        log.warning("run %s is being trained by %s; skipped", run_id, outcome[1])


def _record_failure(report: GridReport, run_id: str, exc: BaseException) -> None:
    report.failed[run_id] = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, S2DError):
        log.error("run %s failed: %s", run_id, exc)
    else:
        log.error("run %s failed", run_id, exc_info=exc)


# -- how many workers, on which GPUs -----------------------------------------------------------
def auto_jobs(specs: Sequence[RunSpec], limit: int = 4) -> int:
    """Parallel runs that suit this machine: one per visible GPU (each worker is pinned to its
    own device), otherwise the usable cores divided by the runs' torch threads, at most
    ``limit`` (each worker also holds a METEOR JVM); never more than the number of runs."""
    if not specs:
        return 1
    gpus = visible_gpus()
    if gpus:
        return max(1, min(len(gpus), len(specs)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(max(1, s.config.train.num_threads) for s in specs)
    return max(1, min(limit, (cores or 1) // threads, len(specs)))


def visible_gpus() -> list[str]:
    """CUDA device names as ``CUDA_VISIBLE_DEVICES`` would list them ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


# -- Ctrl-C ------------------------------------------------------------------------------------
class _InterruptOnce:
    """A SIGINT handler: ``KeyboardInterrupt`` on the first Ctrl-C, then only a count, so that
    giving the runs back (claims, lock files, workers joined) cannot be cut short."""

    def __init__(self) -> None:
        self.stopping = False
        self.ignored = 0

    def __call__(self, _signum, _frame) -> None:
        if self.stopping:
            self.ignored += 1
            return
        self.stopping = True
        raise KeyboardInterrupt


@contextmanager
def _interrupt_once():
    """Install ``_InterruptOnce`` for the block, where Python's own Ctrl-C handler is in place
    (main thread, no handler of the caller's); the caller's handler is back afterwards."""
    interrupt = _InterruptOnce()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield interrupt
        return
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        if interrupt.ignored:
            log.info("Ctrl-C again while stopping (%d time(s)): ignored until the runs were given "
                     "back", interrupt.ignored)  # fmt: skip


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """After Ctrl-C: no new runs; every worker interrupts its run (the signal may have reached
    this process alone), gives its claim back and exits. Workers still there after
    ``STOP_TIMEOUT_S`` are terminated: their claims stay behind as a dead process's."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGINT)
    log.info("interrupted: stopping %d worker(s); each gives its run back (at most %g s)",
             len(processes), STOP_TIMEOUT_S)  # fmt: skip

    def terminate() -> None:
        log.warning("workers did not stop within %g s: terminated; the next grid on this "
                    "machine takes their runs over at once", STOP_TIMEOUT_S)  # fmt: skip
        for proc in processes:
            with contextlib.suppress(OSError, ValueError):
                proc.terminate()

    watchdog = threading.Timer(STOP_TIMEOUT_S, terminate)
    watchdog.daemon = True
    watchdog.start()
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        watchdog.cancel()


# -- parallel workers (spawned processes) ------------------------------------------------------
_WORKER: Runner | None = None
_BUSY = False
_STOPPING = False


def _init_worker(
    url: str,
    results_dir: str,
    cache_root: str,
    run_fn: RunFn | None,
    scorer: Scorer | None,
    log_level: int,
    devices: Any = None,
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
) -> None:
    from multiprocessing import util

    from s2d_align.harness.runner import Runner  # the runner imports this module

    global _WORKER
    # Ctrl-C reaches every process of the terminal's group: a worker stops the run it is
    # working on (the parent reports the interruption) but never dies with a traceback idle.
    signal.signal(signal.SIGINT, _worker_sigint)
    if devices is not None:  # before anything in this process initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get(timeout=60))
    logging.basicConfig(
        level=log_level, format=f"%(levelname)s [worker {os.getpid()}] %(name)s: %(message)s"
    )
    store = Store(url)
    _WORKER = Runner(
        store,
        results_dir,
        run_fn=run_fn,
        scorer=scorer,
        cache_root=cache_root,
        progress=False,
        claim_timeout_s=claim_timeout_s,
    )

    def close() -> None:
        _WORKER.close()
        store.close()

    util.Finalize(_WORKER, close, exitpriority=10)  # runs when the worker process exits
    _WORKER.warm_up()


def _worker_sigint(_signum, _frame) -> None:
    """The first Ctrl-C stops the worker for good: its run is interrupted (the claim is given
    back on the way out), later Ctrl-C are ignored so that cannot be cut short, and it starts
    no other run (an interrupt can leave C extensions in a state unfit to go on)."""
    global _STOPPING
    _STOPPING = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _BUSY:
        raise KeyboardInterrupt


def _run_in_worker(spec: RunSpec):
    """The run's outcome for ``_note_outcome`` (a claimed run is an outcome, not an error)."""
    global _BUSY
    assert _WORKER is not None, "worker not initialised"
    _BUSY = True  # before looking at _STOPPING: a Ctrl-C in between then raises
    try:
        if _STOPPING:
            raise KeyboardInterrupt
        return _WORKER.attempt(spec)
    except RunClaimedError as exc:
        return ("claimed", exc.holder)
    finally:
        _BUSY = False
