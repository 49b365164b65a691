"""Who owns a run: process identities, staleness, and the lock file in a run folder.

A run is trained by one process at a time. The owner is claimed in the store (table
``s2d_claims``, see ``Store.claim_run``) and, as a second guard for processes that share a run
folder but not a store, in ``RUN_DIR/.owner`` (created with ``O_EXCL``). While a run is being
worked on, its owner refreshes both every ``heartbeat_interval(timeout)`` seconds.

A claim is stale, and may be taken over, when its process is known to be gone (same machine,
pid not alive) or when it has not been refreshed for ``timeout`` seconds (any machine: one that
is down stops refreshing). "Same machine" is the hostname and ``machine_identity()`` both equal
to ours: two machines or containers that share a hostname and a store never judge each other's
pids. Claims written before identities were recorded (no ``@machine`` in the owner id, no
``machine`` in the lock file) are judged by hostname alone, as they were then.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
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


#: The host's own pid namespace (PROC_PID_INIT_INO, the same number on every Linux kernel).
_INIT_PID_NS = "pid:[4026531836]"


def _first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.readline().strip()
    except (OSError, ValueError):
        return ""


@functools.lru_cache(maxsize=1)
def machine_identity() -> str:
    """A short id that is equal for two processes exactly when one can test the other's pid.

    A pid means something only within one pid namespace of one running kernel, so:

    - a host (the kernel's own pid namespace) is its ``/etc/machine-id``: stable across reboots
      (pids of an earlier boot are all dead, so judging them here is right) and distinct per
      installation;
    - a container, or a host without a machine-id, adds the kernel's ``boot_id`` and its pid
      namespace. Containers on one kernel share ``boot_id`` but not their pid namespace; two
      containers of one image may share a machine-id baked into it (or have none) but not a
      ``boot_id`` unless they run on one kernel. A container's processes never outlive its pid
      namespace, so the id is stable for as long as any of its claims can be alive;
    - without ``/proc`` (macOS, BSD: no pid namespaces) the machine-id, else the hardware
      address, else a random id (nobody judges this process's pids: heartbeat age only).
    """
    machine = _first_line("/etc/machine-id") or _first_line("/var/lib/dbus/machine-id")
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    boot = _first_line("/proc/sys/kernel/random/boot_id")
    if machine and pid_ns == _INIT_PID_NS:
        parts = [machine]
    elif boot:
        parts = [machine, boot, pid_ns]
    elif machine:
        parts = [machine]
    else:
        node = uuid.getnode()  # bit 40 set: no hardware address found, a random one each call
        parts = [f"{node:012x}" if not node & (1 << 40) else uuid.uuid4().hex]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str
    machine: str | None = None  # ``machine_identity()``; None: recorded before there was one

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12], machine_identity())

    @property
    def id(self) -> str:
        """``host:pid:token@machine``: the machine rides in the id, so the store's claims table
        needs no new column and stores written before keep working."""
        base = f"{self.host}:{self.pid}:{self.token}"
        return f"{base}@{self.machine}" if self.machine else base

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


def machine_of(owner_id: str) -> str | None:
    """The machine identity in an ``Owner.id``; None for ids written before there was one."""
    _, sep, machine = owner_id.rpartition("@")
    return machine if sep and machine and ":" not in machine else None


def same_machine(host: str | None, machine: str | None) -> bool:
    """Whether a pid recorded by (``host``, ``machine``) can be tested here with ``kill``.
    ``machine`` None (an older claim): the hostname decides, as it did before."""
    if host != socket.gethostname():
        return False
    return machine is None or machine == machine_identity()


def is_stale(
    host: str, pid: int, last_seen: datetime, timeout_s: float, now: datetime, owner_id: str = ""
) -> bool:
    """Dead pid on this machine (``owner_id`` carries the machine), or no heartbeat for
    ``timeout_s``."""
    if same_machine(host, machine_of(owner_id)) and not pid_alive(pid):
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
    machine = held.get("machine") or None  # absent in lock files of earlier versions
    if same_machine(held.get("host"), machine) and not pid_alive(int(held.get("pid", -1))):
        return True
    return age > timeout_s


def acquire_lock_file(run_dir: Path, owner: Owner, timeout_s: float) -> str | None:
    """Take ``run_dir/.owner`` for ``owner``; None when taken, else the live holder's label."""
    path = Path(run_dir) / LOCK_FILE
    record = {"owner": owner.id, "host": owner.host, "pid": owner.pid, "machine": owner.machine}
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
