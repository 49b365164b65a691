"""Who owns a run: process identities, staleness, and the lock file in a run folder.

A run is trained by one process at a time. The owner is claimed in the store (table
``s2d_claims``, see ``Store.claim_run``) and, as a second guard for processes that share a run
folder but not a store, in ``RUN_DIR/.owner`` (created with ``O_EXCL``). While a run is being
worked on, its owner refreshes both every ``heartbeat_interval(timeout)`` seconds.

A claim is stale, and may be taken over, when its process is known to be gone (same host, pid
not alive) or when it has not been refreshed for ``timeout`` seconds (any host: a host that is
down stops refreshing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from s2d_align.errors import S2DError

log = logging.getLogger(__name__)

#: Default time without a heartbeat after which a claim from another host counts as abandoned.
DEFAULT_CLAIM_TIMEOUT_S = 6 * 3600.0
LOCK_FILE = ".owner"


class RunClaimedError(S2DError):
    """The run is being worked on by another live process."""

    def __init__(self, run_id: str, holder: str):
        super().__init__(f"run {run_id} is being trained by {holder}; skipped")
        self.run_id, self.holder = run_id, holder

    def __reduce__(self):  # crosses process boundaries (pool workers)
        return (type(self), (self.run_id, self.holder))


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def is_stale(host: str, pid: int, last_seen: datetime, timeout_s: float, now: datetime) -> bool:
    if host == socket.gethostname() and not pid_alive(pid):
        return True
    return (now - last_seen).total_seconds() > timeout_s


def heartbeat_interval(timeout_s: float) -> float:
    """Often enough that a live owner never looks stale, at most once a minute."""
    return max(0.05, min(60.0, timeout_s / 10))


# -- the lock file -----------------------------------------------------------------------------
def _read_lock(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "owner" in data else None


def _lock_is_stale(path: Path, held: dict | None, timeout_s: float) -> bool:
    try:
        age = datetime.now().timestamp() - path.stat().st_mtime  # refreshed by the heartbeat
    except FileNotFoundError:
        return True
    if held is None:  # unreadable: stale only once its writer had ample time to finish
        return age > min(timeout_s, 60.0)
    if held.get("host") == socket.gethostname() and not pid_alive(int(held.get("pid", -1))):
        return True
    return age > timeout_s


def acquire_lock_file(run_dir: Path, owner: Owner, timeout_s: float) -> str | None:
    """Take ``run_dir/.owner`` for ``owner``; None when taken, else the live holder's label."""
    path = Path(run_dir) / LOCK_FILE
    record = {"owner": owner.id, "host": owner.host, "pid": owner.pid}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            held = _read_lock(path)
            if held is not None and held["owner"] == owner.id:
                return None
            if not _lock_is_stale(path, held, timeout_s):
                return _lock_label(held)
            # Move the stale file aside: of several processes doing this, one rename succeeds.
            aside = path.with_name(f"{LOCK_FILE}.{owner.token}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved != held:  # not the file judged stale: someone took it over meanwhile
                with contextlib.suppress(OSError):
                    os.link(aside, path)
                aside.unlink(missing_ok=True)
                return _lock_label(moved)
            aside.unlink(missing_ok=True)
            log.warning("%s: took over a stale lock of %s", run_dir, _lock_label(held))
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        return None
    return _lock_label(_read_lock(path))


def _lock_label(held: dict | None) -> str:
    if held is None:
        return "another process (unreadable .owner file)"
    return f"{held.get('host')}:{held.get('pid')}"


def release_lock_file(run_dir: Path, owner: Owner) -> None:
    path = Path(run_dir) / LOCK_FILE
    held = _read_lock(path)
    if held is not None and held["owner"] == owner.id:
        path.unlink(missing_ok=True)


def touch_lock_file(run_dir: Path, owner: Owner) -> None:
    path = Path(run_dir) / LOCK_FILE
    held = _read_lock(path)
    if held is not None and held["owner"] == owner.id:
        os.utime(path)


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, beat: Callable[[], None], interval: float):
        self._beat, self._interval = beat, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="s2d-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # a missed beat only ages the claim; training goes on
                log.warning("claim heartbeat failed: %s", exc)
