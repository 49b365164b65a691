"""``results bundle``: a store as one small deterministic file; ``report --results FILE`` and
``results unbundle`` rebuild from it exactly what the store gives; a damaged bundle is one
error naming the file."""

from __future__ import annotations

import gzip
import json
import sqlite3
import tempfile
from pathlib import Path

import harness_fakes as fakes
import pytest

from s2d_align.cli.main import main
from s2d_align.harness.bundle import SKIPPED_TABLES
from s2d_align.harness.store import DB_FILENAME, Store

#: The report files a paper takes its numbers from (compared byte for byte).
TEXT_FILES = ["ablation.md", "ablation.csv", "ablation.tex", "diagnostics.md", "diagnostics.csv"]


def _sweep_into(results: Path, tmp: Path) -> None:
    """A three-trial Optuna study in the same store: its own tables must travel too."""
    from s2d_align.harness.space import load_space
    from s2d_align.harness.store import storage_url
    from s2d_align.harness.sweep import SweepJob, run_sweep

    preset = tmp / "sweep.yaml"
    preset.write_text("name: sweep-tiny\ntrain: {total_steps: 4, eval_every: 2}\n")
    space = tmp / "toy.yaml"
    space.write_text(
        "name: toy\nobjective: {metric: ROUGE_L}\nparams:\n"
        "  lr: {key: train.lr, type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    job = SweepJob(str(preset), load_space(space), storage_url(None, results), "toy-study",
                   str(results), run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer())  # fmt: skip
    run_sweep(job, trials=3, workers=1, progress=False)


def _add_foreign_table(db: Path) -> None:
    """A table the suite does not know (as a later version or another tool might add), without
    rowid and with bytes, NULL, NaN and non-ASCII cells."""
    con = sqlite3.connect(db)
    with con:
        con.execute("CREATE TABLE zz_notes (k TEXT PRIMARY KEY, blob BLOB, x REAL) WITHOUT ROWID")
        con.executemany(
            "INSERT INTO zz_notes VALUES (?, ?, ?)",
            [("b", b"\x00\xff raw", float("nan")), ("a", None, 1.5), ("é", b"", None)],
        )
    con.close()


def _add_diagnostics(results: Path, run_ids: list[str]) -> None:
    """Per-run ``diag/...`` metrics, so that the report writes its diagnostics table."""
    store = Store.open(None, results)
    try:
        for rid in run_ids:
            values = {"diag/image_dependence": fakes._rand("dep", rid),
                      "diag/gate/pair": fakes._rand("gate", rid)}  # fmt: skip
            store.record_metrics(rid, "test", values, higher_is_better=dict.fromkeys(values, True))
    finally:
        store.close()


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A finished fake grid with diagnostics, a sweep and a foreign table in one folder."""
    tmp = tmp_path_factory.mktemp("bundle")
    results, run_ids = fakes.small_results_store(tmp)
    _add_diagnostics(results, run_ids)
    _sweep_into(results, tmp)
    _add_foreign_table(results / DB_FILENAME)
    return results


def _bundle(results: Path, out: Path) -> int:
    return main(["results", "bundle", "--results", str(results), "--out", str(out)])


def _dump(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table (the claims aside), in scan order, as SQLite returns them."""
    con = sqlite3.connect(db)
    try:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                           "AND name NOT LIKE 'sqlite_%'")]  # fmt: skip
        return {
            n: [tuple(repr(v) for v in row) for row in con.execute(f'SELECT * FROM "{n}"')]
            for n in names
            if n not in SKIPPED_TABLES
        }
    finally:
        con.close()


def test_unbundled_store_has_every_table_and_row_of_the_original(grid, tmp_path):
    assert _bundle(grid, tmp_path / "b.jsonl.gz") == 0
    assert main(["results", "unbundle", "--in", str(tmp_path / "b.jsonl.gz"),
                 "--results", str(tmp_path / "restored")]) == 0  # fmt: skip
    want, got = _dump(grid / DB_FILENAME), _dump(tmp_path / "restored" / DB_FILENAME)
    assert {
        "s2d_runs",
        "s2d_predictions",
        "s2d_train_logs",
        "studies",
        "trials",
        "zz_notes",
    } <= set(want)
    assert got == want
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == [DB_FILENAME]


def test_same_store_same_bytes_and_an_unchanged_bundle_is_not_rewritten(grid, tmp_path, capsys):
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert _bundle(grid, a) == 0 and _bundle(grid, b) == 0
    data = a.read_bytes()
    assert data == b.read_bytes()
    assert data[4:8] == b"\0\0\0\0" and not data[3] & 0x08  # no mtime, no file name in gzip
    before = a.stat().st_mtime_ns
    capsys.readouterr()
    assert _bundle(grid, a) == 0
    assert "unchanged" in capsys.readouterr().err and a.stat().st_mtime_ns == before
    # the unbundled store bundles to the very same bytes: nothing was lost or reordered
    assert main(["results", "unbundle", "--in", str(a), "--results", str(tmp_path / "r")]) == 0
    assert _bundle(tmp_path / "r", tmp_path / "again.jsonl.gz") == 0
    assert (tmp_path / "again.jsonl.gz").read_bytes() == data
    lines = gzip.decompress(data).decode().splitlines()  # readable (and diffable) with zcat
    assert json.loads(lines[0])["format"] == "s2d-align results bundle"


@pytest.mark.slow
def test_report_from_the_bundle_is_the_report_from_the_store(grid, tmp_path, monkeypatch):
    bundle = tmp_path / "b.jsonl.gz"
    assert _bundle(grid, bundle) == 0
    scratch = tmp_path / "scratch"  # where the report unbundles; must be empty afterwards
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    from_store, from_bundle = tmp_path / "rep_store", tmp_path / "rep_bundle"
    assert main(["report", "--results", str(grid), "--reports", str(from_store)]) == 0
    assert main(["report", "--results", str(bundle), "--reports", str(from_bundle)]) == 0
    files = sorted(p.relative_to(from_store) for p in from_store.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(from_bundle) for p in from_bundle.rglob("*") if p.is_file()
    )
    assert {Path("tiny") / name for name in TEXT_FILES} | {
        Path("sweeps/toy-study/trials.csv")
    } <= set(files)
    for rel in files:  # tables, figures (PNG and PDF), the sweep's trials, the index
        assert (from_bundle / rel).read_bytes() == (from_store / rel).read_bytes(), rel
    assert list(scratch.iterdir()) == []


def _damaged(good: bytes, how: str) -> bytes:
    lines = gzip.decompress(good).split(b"\n")
    if how == "truncated":
        return good[: len(good) // 2]
    if how == "bit-flip":
        return good[:200] + bytes([good[200] ^ 0xFF]) + good[201:]
    if how == "not-gzip":
        return b"run_id,metric\n"
    if how == "other-json":
        return gzip.compress(b'{"hello": 1}\n')
    if how == "row-missing":
        return gzip.compress(b"\n".join(lines[:3] + lines[4:]))
    if how == "cut-at-a-line":
        return gzip.compress(b"\n".join(lines[: len(lines) // 2]))
    if how == "sql-injected":
        head = json.loads(lines[1])
        head["sql"] = "ATTACH DATABASE 'escaped.db' AS x"
        return gzip.compress(b"\n".join([lines[0], json.dumps(head).encode(), *lines[2:]]))
    raise AssertionError(how)


HOW = ["truncated", "bit-flip", "not-gzip", "other-json", "row-missing", "cut-at-a-line",
       "sql-injected"]  # fmt: skip


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_bundle_is_one_error_naming_the_file(grid, tmp_path, monkeypatch, capsys, how):
    good = tmp_path / "good.jsonl.gz"
    assert _bundle(grid, good) == 0
    bad = tmp_path / f"{how}.jsonl.gz"
    bad.write_bytes(_damaged(good.read_bytes(), how))
    monkeypatch.chdir(tmp_path)  # where a relative ATTACH would have written
    capsys.readouterr()
    target = tmp_path / "restored"
    assert main(["results", "unbundle", "--in", str(bad), "--results", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "\n" not in err
    assert not target.exists()  # no store, no temp file, no empty folder left behind
    assert main(["report", "--results", str(bad), "--reports", str(tmp_path / "rep")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "escaped.db").exists()


def test_unbundle_never_overwrites_a_store(grid, tmp_path, capsys):
    bundle = tmp_path / "b.jsonl.gz"
    assert _bundle(grid, bundle) == 0
    assert main(["results", "unbundle", "--in", str(bundle), "--results", str(grid)]) == 2
    assert "exists" in capsys.readouterr().err
    assert _bundle(grid, grid / DB_FILENAME) == 2  # the output would destroy the input
    assert "input" in capsys.readouterr().err


def test_the_store_file_itself_is_not_taken_for_a_bundle(grid, tmp_path, capsys):
    db = grid / DB_FILENAME
    assert main(["report", "--results", str(db), "--reports", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "is an SQLite store, not a results bundle" in err and f"--results {grid}" in err
    assert not (tmp_path / "rep").exists()


def test_strip_cuts_this_machines_folders_from_recorded_paths(tmp_path):
    """A bundle to commit names no folder of the machine that made it; without --strip the
    store is copied exactly (the round-trip tests)."""
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.variants import load_variants

    results = tmp_path / "results"
    store = Store.open(None, results)
    runner = Runner(store, results, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(),
                    progress=False)  # fmt: skip
    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    assert runner.run_grid(plan_grid(preset, load_variants(["sft"]), [0])).ok
    store.close()
    exact, stripped = tmp_path / "exact.jsonl.gz", tmp_path / "stripped.jsonl.gz"
    assert main(["results", "bundle", "--results", str(results), "--out", str(exact)]) == 0
    assert main(["results", "bundle", "--results", str(results), "--out", str(stripped),
                 "--strip", str(results)]) == 0  # fmt: skip
    assert str(results.resolve()) in gzip.decompress(exact.read_bytes()).decode()
    text = gzip.decompress(stripped.read_bytes()).decode()
    assert str(results.resolve()) not in text and "runs/tiny/sft" in text
