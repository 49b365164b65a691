"""A results store as one small, deterministic file that ``report`` reads (``results bundle``).

The bundle is gzip'd JSON Lines: a header, then per table (by name) its ``CREATE TABLE``
statement, columns and row count followed by one JSON array per row in the store's own row
order, then each index's ``CREATE INDEX``, then an end record with the totals. Every table of the
SQLite file travels (the suite's, Optuna's studies, any added later) except the live run
claims; cells are copied as SQLite holds them, so the unbundled store is the original one
row for row and a report from it is the same, file for file. The same store always gives the
same bytes (no timestamp or file name in the gzip header), and ``zcat`` shows a diffable text.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from s2d_align.errors import ConfigError, DataError
from s2d_align.harness.records import RunClaim
from s2d_align.harness.store import DB_FILENAME, Store, redact, sqlite_path, storage_url
from s2d_align.utils.io import atomic_write_bytes

FORMAT = "s2d-align results bundle"
VERSION = 1
#: Who holds a run right now: meaningless on another machine, and never read by a report.
SKIPPED_TABLES = frozenset({RunClaim.__tablename__})
_CREATE_TABLE = re.compile(r"\s*CREATE\s+TABLE\s", re.IGNORECASE)
_CREATE_INDEX = re.compile(r"\s*CREATE\s+(UNIQUE\s+)?INDEX\s", re.IGNORECASE)
_WITHOUT_ROWID = re.compile(r"WITHOUT\s+ROWID\s*;?\s*$", re.IGNORECASE)


@dataclass
class BundleSummary:
    """What ``write_bundle`` did: rows per table, the file's size, whether its bytes changed."""

    path: Path
    rows: dict[str, int] = field(default_factory=dict)
    size: int = 0
    changed: bool = True


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cell(value: Any, strip: tuple[str, ...] = ()) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, str):
        for prefix in strip:  # a machine's folders: the path is kept relative to them
            value = value.replace(prefix, "")
    return value


def _line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _dump(
    con: sqlite3.Connection, rows: dict[str, int], strip: tuple[str, ...] = ()
) -> Iterator[str]:
    yield _line({"format": FORMAT, "version": VERSION})
    schema = con.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' AND type IN ('table', 'index') ORDER BY name"
    ).fetchall()
    tables = [(n, sql) for kind, n, _, sql in schema if kind == "table" and n not in SKIPPED_TABLES]
    for name, sql in tables:
        columns = [row[1] for row in con.execute(f"PRAGMA table_info({_quote(name)})")]
        if _WITHOUT_ROWID.search(sql):  # no rowid: the primary key orders its rows
            keys = [r[1] for r in sorted(con.execute(f"PRAGMA table_info({_quote(name)})"),
                                         key=lambda r: r[5]) if r[5]]  # fmt: skip
            order = ", ".join(map(_quote, keys))
        else:  # insertion order, kept so that the restored store scans rows as this one does
            order = "rowid"
        (count,) = con.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()
        rows[name] = count
        yield _line({"table": name, "sql": sql, "columns": columns, "rows": count})
        for row in con.execute(f"SELECT * FROM {_quote(name)} ORDER BY {order}"):
            yield _line([_cell(v, strip) for v in row])
    for kind, name, table, sql in schema:
        if kind == "index" and table not in SKIPPED_TABLES:
            yield _line({"index": name, "sql": sql})
    yield _line({"end": True, "tables": len(tables), "rows": sum(rows.values())})


def _source_path(storage: str | None, results: str | Path) -> Path:
    url = storage_url(storage, results)
    path = sqlite_path(url)
    if path is None:
        raise ConfigError(
            f"results bundle reads an SQLite store (--results DIR or --storage sqlite:///FILE); "
            f"{redact(url)} is not one"
        )
    Store.open_readonly(storage, results).close()  # a missing or foreign store: its own error
    return path


def _prefixes(folders: tuple[str | Path, ...]) -> tuple[str, ...]:
    """``FOLDER/`` for each folder, absolute and as given, longest first (JSON text cells
    escape nothing in a POSIX path, so a plain replace reaches paths inside them too)."""
    out = set()
    for folder in folders:
        for form in (Path(folder).expanduser().resolve(), Path(folder).expanduser().absolute()):
            out.add(str(form).rstrip("/") + "/")
    return tuple(sorted(out, key=len, reverse=True))


def bundle_text(
    storage: str | None, results: str | Path, strip: tuple[str | Path, ...] = ()
) -> tuple[bytes, dict[str, int]]:
    """The bundle's uncompressed JSON Lines and its rows per table, read in one snapshot.
    Every ``FOLDER/`` of ``strip`` is cut from the text cells (paths become relative to it), so
    that a committed bundle names no folder of the machine that made it."""
    path = _source_path(storage, results)
    prefixes = _prefixes(strip)
    rows: dict[str, int] = {}
    con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        con.execute("BEGIN")  # one consistent snapshot even while a grid writes the store
        text = "".join(_dump(con, rows, prefixes)).encode("utf-8")
    except sqlite3.Error as exc:
        raise DataError(f"{path}: cannot read the results store: {exc}") from None
    finally:
        con.close()
    return text, rows


def write_bundle(
    storage: str | None,
    results: str | Path,
    out: str | Path,
    strip: tuple[str | Path, ...] = (),
) -> BundleSummary:
    """Write the bundle of a store to ``out``; a file that already holds the same bundle is
    left untouched (``changed`` False), so re-bundling an unchanged store gives no git diff.
    ``strip``: folders cut from the paths the store records (see :func:`bundle_text`)."""
    out = Path(out)
    text, rows = bundle_text(storage, results, strip)
    summary = BundleSummary(path=out, rows=rows)
    try:
        same = out.is_file() and _decompress(out) == text
    except DataError:
        same = False  # an unreadable old file is simply replaced
    if same:
        summary.changed, summary.size = False, out.stat().st_size
        return summary
    buf = _gzip(text)
    atomic_write_bytes(out, buf)
    summary.size = len(buf)
    return summary


def _gzip(data: bytes) -> bytes:
    # filename "" and mtime 0: the header holds nothing that changes between two runs
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as fh:
        fh.write(data)
    return buf.getvalue()


def _decompress(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            if fh.read(16) == b"SQLite format 3\0":
                raise DataError(f"{path} is an SQLite store, not a results bundle (give its "
                                f"folder: --results {path.parent})")  # fmt: skip
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"no results bundle at {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a results bundle") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable results bundle ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the file is truncated"
    return " ".join(str(exc).split()) or type(exc).__name__


def _records(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw:
            continue
        try:
            yield lineno, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: not a readable results bundle ({exc})") from None


def _restore(path: Path, con: sqlite3.Connection) -> dict[str, int]:
    """Replay the bundle at ``path`` into the empty database ``con``; rows per table."""

    def bad(lineno: int, why: str) -> DataError:
        return DataError(f"{path}:{lineno}: not a readable results bundle ({why})")

    records = _records(path, _decompress(path))
    lineno, head = next(records, (1, None))
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise bad(lineno, f"no {FORMAT!r} header")
    if head.get("version") != VERSION:
        raise bad(lineno, f"version {head.get('version')!r}; this s2d-align reads {VERSION}")
    rows: dict[str, int] = {}
    for lineno, rec in records:
        if not isinstance(rec, dict):
            raise bad(lineno, "a row where a table, index or end record belongs")
        if "table" in rec:
            name, sql, columns, count = (rec.get(k) for k in ("table", "sql", "columns", "rows"))
            if not (isinstance(sql, str) and _CREATE_TABLE.match(sql)):
                raise bad(lineno, f"table {name!r} without a CREATE TABLE statement")
            if not (isinstance(columns, list) and isinstance(count, int) and count >= 0):
                raise bad(lineno, f"table {name!r} without its columns and row count")
            con.execute(sql)  # one statement only: sqlite3 refuses a second
            insert = (f"INSERT INTO {_quote(str(name))} ({', '.join(map(_quote, columns))}) "
                      f"VALUES ({', '.join('?' * len(columns))})")  # fmt: skip
            batch = []
            for _ in range(count):
                lineno, row = next(records, (lineno, None))
                if not isinstance(row, list):
                    raise bad(lineno, f"table {name!r} has fewer than its {count} rows")
                if len(row) != len(columns):
                    raise bad(lineno, f"a row of {len(row)} cells in table {name!r} of "
                                      f"{len(columns)} columns")  # fmt: skip
                try:
                    batch.append([_uncell(v) for v in row])
                except ValueError as exc:
                    raise bad(lineno, str(exc)) from None
            con.executemany(insert, batch)
            rows[str(name)] = count
        elif "index" in rec:
            if not (isinstance(rec.get("sql"), str) and _CREATE_INDEX.match(rec["sql"])):
                raise bad(lineno, f"index {rec['index']!r} without a CREATE INDEX statement")
            con.execute(rec["sql"])
        elif rec.get("end") is True:
            if rec.get("rows") != sum(rows.values()) or rec.get("tables") != len(rows):
                raise bad(lineno, "its end record does not match the rows read")
            if next(records, None) is not None:
                raise bad(lineno + 1, "data after the end record")
            return rows
        else:
            raise bad(lineno, "an unknown record")
    raise bad(lineno, "it ends before its end record (truncated?)")


def _uncell(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$base64"}:
        return base64.b64decode(value["$base64"], validate=True)
    if isinstance(value, (dict, list)):
        raise ValueError("a cell that is neither a plain value nor $base64 bytes")
    return value


def unbundle(bundle: str | Path, results: str | Path) -> Path:
    """Rebuild the store of ``bundle`` as ``results/s2d.db`` (the folder is created; an existing
    store there is never overwritten). Nothing is written outside ``results``."""
    bundle, results = Path(bundle), Path(results)
    target = results / DB_FILENAME
    if results.exists() and not results.is_dir():
        raise ConfigError(f"{results} is a file, not a results folder")
    if target.exists():
        raise ConfigError(f"{target} exists: unbundle into a folder without a results store")
    created = not results.exists()
    results.mkdir(parents=True, exist_ok=True)
    tmp = results / f".{DB_FILENAME}.{os.getpid()}.unbundle"  # same folder: os.replace is atomic
    con = sqlite3.connect(tmp)
    try:
        with con:
            _restore(bundle, con)
        con.close()
        os.replace(tmp, target)
    except (sqlite3.Error, sqlite3.Warning) as exc:  # Python 3.10 warns on a 2nd statement
        raise DataError(f"{bundle}: not a readable results bundle ({exc})") from None
    finally:
        con.close()
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
        if created and not target.exists():
            results.rmdir()  # a failed unbundle leaves no empty folder behind
    return target


@contextmanager
def opened_results(storage: str | None, results: str | Path) -> Iterator[Store]:
    """The store read-only, from a results folder or database URL as ``Store.open_readonly``
    takes them, or from a bundle file (``--results FILE``) unbundled into a temporary folder
    that is removed afterwards."""
    if storage is None and Path(results).is_file():
        with tempfile.TemporaryDirectory(prefix="s2d-bundle-") as tmp:
            unbundle(results, tmp)
            store = Store.open_readonly(None, tmp)
            try:
                yield store
            finally:
                store.close()
        return
    store = Store.open_readonly(storage, results)
    try:
        yield store
    finally:
        store.close()
