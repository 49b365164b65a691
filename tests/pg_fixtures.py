"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary cluster, one
fresh database per test.

``postgres_url(request)`` gives a test the URL of its own empty database. The first call of a
session runs ``initdb`` into a temporary folder and starts the server on a free loopback port;
pytest stops it and deletes the folder when it ends. PostgreSQL refuses to run as root, so under
root the server runs as the ``postgres`` user (``nobody`` when there is none).

When the binaries or the psycopg driver are missing, the tests skip and say why. The binaries
are looked up in ``$S2D_PG_BIN``, then on ``PATH``, then in Debian's ``/usr/lib/postgresql/*/bin``
(``apt-get install postgresql``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN_ENV = "S2D_PG_BIN"
START_TIMEOUT_S = 60


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    candidates = [os.environ.get(PG_BIN_ENV, "")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    # Debian keeps the server binaries off PATH, one folder per major version: newest first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    for folder in filter(None, candidates):
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _major(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user the server runs as under root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.skip("PostgreSQL cannot run as root and there is no 'postgres' or 'nobody' user")


@dataclass
class PostgresServer:
    """A running cluster; ``url(db)`` is its SQLAlchemy URL (psycopg 3 driver)."""

    bin_dir: Path
    base: Path
    port: int
    user: pwd.struct_passwd | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        extra = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        if self.user is not None:
            env["HOME"] = str(self.base)
        return subprocess.run(
            [str(self.bin_dir / tool), *args], cwd=self.base, env=env, check=check,
            capture_output=True, text=True, timeout=START_TIMEOUT_S, **extra,
        )  # fmt: skip

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def log_tail(self) -> str:
        log = self.base / "server.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no server log)"


def start_postgres(bin_dir: Path) -> PostgresServer:
    """initdb + pg_ctl start in a fresh temporary folder; raises RuntimeError with the log."""
    user = _server_user()
    # Not pytest's tmp_path: its parents are private to root, and the server user must reach
    # its data folder and socket.
    base = Path(tempfile.mkdtemp(prefix="s2d-pg-"))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir, base, 0, user)
    data = base / "data"
    init = server.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--no-sync", check=False)  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    for _ in range(3):  # a free port can be taken between the probe and the server's bind
        server.port = _free_port()
        options = (f"-p {server.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=60")  # fmt: skip
        start = server.run("pg_ctl", "-D", str(data), "-l", str(base / "server.log"),
                           "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start",
                           check=False)  # fmt: skip
        if start.returncode == 0:
            return server
    log = server.log_tail()
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()}\n{log}")


def stop_postgres(server: PostgresServer) -> None:
    server.run("pg_ctl", "-D", str(server.base / "data"), "-m", "fast", "-w", "stop", check=False)
    shutil.rmtree(server.base, ignore_errors=True)


_SERVER: PostgresServer | None = None
_SKIP_REASON: str | None = None


def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """The session's server, started on first use and stopped when pytest ends; skips the
    calling test with the reason when PostgreSQL or psycopg is missing."""
    global _SERVER, _SKIP_REASON
    if _SERVER is None and _SKIP_REASON is None:
        _SKIP_REASON = _missing()
        if _SKIP_REASON is None:
            _SERVER = start_postgres(find_pg_bin())
            request.config.add_cleanup(_stop_session_server)
    if _SKIP_REASON is not None:
        pytest.skip(_SKIP_REASON)
    return _SERVER


def _missing() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (3) is not installed: pip install -e '.[dev]'"
    if find_pg_bin() is None:
        return (
            "PostgreSQL server binaries not found ($S2D_PG_BIN, PATH, /usr/lib/postgresql/*/bin):"
            " apt-get install postgresql"
        )
    return None


def _stop_session_server() -> None:
    global _SERVER
    if _SERVER is not None:
        stop_postgres(_SERVER)
        _SERVER = None


def postgres_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a new, empty database on the session's server (skips without one)."""
    server = postgres_server(request)
    return server.url(server.create_database())
