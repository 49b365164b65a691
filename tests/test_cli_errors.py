"""Bad input and broken surroundings through ``main(argv)``: one ``error:`` line naming what and
where, a non-zero exit, ``--debug`` for the traceback, and read commands that change nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import struct
import zlib
from pathlib import Path

import harness_fakes as fakes
import pytest
from PIL import Image

from s2d_align.cli.main import main
from s2d_align.harness.plan import plan_grid
from s2d_align.harness.runner import Runner
from s2d_align.harness.store import Store
from s2d_align.harness.variants import load_variants

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its hash (what a read command must leave as it is)."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return sorted(r[0] for r in con.execute("select name from sqlite_master"))


def one_error(capsys, *needles: str) -> str:
    """The command's stderr is exactly one ``error:`` line holding every needle."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A store with a complete two-variant grid (fake training, no model)."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 4}\n")
    out = tmp_path / "results"
    store = Store.open(None, out)
    runner = Runner(store, out, run_fn=fakes.fake_run_fn, scorer=fakes.FakeScorer(), progress=False)
    assert runner.run_grid(plan_grid(preset, load_variants(["sft", "s2d"]), [0])).ok
    store.close()
    return out


# -- read commands never write --------------------------------------------------------------
def test_results_list_on_an_unrelated_sqlite_db_adds_no_tables(tmp_path, capsys):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("create table users (id integer primary key, name text)")
        con.execute("insert into users (name) values ('ada')")
    before, digest = tables(db), sha(db)
    assert main(["results", "list", "--storage", f"sqlite:///{db}"]) == 2
    one_error(capsys, str(db), "not an s2d-align results store")
    assert tables(db) == before == ["users"]
    assert sha(db) == digest


@pytest.mark.parametrize("command", ["results", "report"])
def test_a_mistyped_store_path_is_refused_and_nothing_is_created(tmp_path, capsys, command):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "index.md").write_text("# index of earlier reports\n")
    before = tree(tmp_path)
    typo = str(tmp_path / "resluts")
    argv = {
        "results": ["results", "list", "--results", typo],
        "report": ["report", "--results", typo, "--reports", str(reports)],
    }[command]
    assert main(argv) == 2
    one_error(capsys, "no results store", str(tmp_path / "resluts"))
    assert not (tmp_path / "resluts").exists()
    assert tree(tmp_path) == before  # index.md not rewritten empty


def test_results_list_reads_a_store_without_changing_it(results, capsys):
    before = tree(results)
    assert main(["results", "list", "--results", str(results)]) == 0
    assert "2 run(s)" in capsys.readouterr().out
    assert tree(results) == before


def test_ablate_dry_run_creates_no_folder(tmp_path, capsys):
    out = tmp_path / "fresh"
    code = main(["ablate", "--preset", "smoke", "--variants", "sft", "--seeds", "0",
                 "--results", str(out), "--dry-run"])  # fmt: skip
    assert code == 0 and "1 run(s) to do" in capsys.readouterr().out
    assert not out.exists()


def test_ablate_dry_run_on_an_existing_store_changes_nothing(results, capsys):
    before = tree(results)
    code = main(["ablate", "--preset", str(results.parent / "tiny.yaml"), "--variants", "sft,s2d",
                 "--seeds", "0", "--results", str(results), "--dry-run"])  # fmt: skip
    assert code == 0 and "0 run(s) to do" in capsys.readouterr().out
    assert tree(results) == before


def test_ablate_reports_go_beside_a_custom_store(monkeypatch, tmp_path):
    from s2d_align.cli.harness import DEFAULT_REPORTS, reports_dir
    from s2d_align.cli.main import build_parser

    parse = build_parser().parse_args
    assert reports_dir(parse(["ablate"])) == DEFAULT_REPORTS
    assert reports_dir(parse(["ablate", "--results", str(tmp_path)])) == str(tmp_path / "reports")
    custom = parse(["ablate", "--storage", "sqlite:///x.db"])
    assert reports_dir(custom) == str(Path("results") / "reports")
    assert reports_dir(parse(["ablate", "--results", "o", "--reports", "r"])) == "r"


# -- stores that cannot be opened -----------------------------------------------------------
def test_a_text_file_as_storage(tmp_path, capsys):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 50)
    digest = sha(text)
    assert main(["results", "list", "--storage", f"sqlite:///{text}"]) == 2
    one_error(capsys, str(text), "not an SQLite database")
    assert sha(text) == digest


def test_a_truncated_sqlite_store(results, tmp_path, capsys):
    cut = tmp_path / "cut.db"
    cut.write_bytes((results / "s2d.db").read_bytes()[:1500])
    digest = sha(cut)
    assert main(["results", "list", "--storage", f"sqlite:///{cut}"]) == 2
    one_error(capsys, str(cut))
    assert sha(cut) == digest


def test_postgresql_without_its_driver_is_one_line(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    try:  # a driver SQLAlchemy knows but the dev extra does not install (it has psycopg 3)
        import pg8000  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pg8000 is installed")
    url = "postgresql+pg8000://me:secret@localhost/s2d"
    assert main(["results", "list", "--storage", url]) == 2
    line = one_error(capsys, "postgresql+pg8000://me:***@localhost/s2d", "driver is not installed")
    assert "secret" not in line


def test_out_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me\n")
    digest = sha(blocker)
    code = main(["ablate", "--preset", "smoke", "--variants", "sft", "--seeds", "0",
                 "--results", str(blocker), "--no-progress"])  # fmt: skip
    assert code == 2
    one_error(capsys, str(blocker), "is a file")
    assert sha(blocker) == digest


@pytest.mark.skipif(ROOT, reason="root ignores folder permissions")
def test_a_read_only_store_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code = main(["ablate", "--preset", "smoke", "--variants", "sft", "--seeds", "0",
                     "--results", str(folder), "--no-progress"])  # fmt: skip
    finally:
        folder.chmod(0o755)
    assert code == 2
    one_error(capsys, str(folder))
    assert list(folder.iterdir()) == []


def test_a_full_disk_while_writing_reports(results, tmp_path, monkeypatch, capsys):
    import s2d_align.utils.io as io

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(io.os, "replace", full)
    reports = tmp_path / "rep"
    assert main(["report", "--results", str(results), "--reports", str(reports)]) == 2
    one_error(capsys, "No space left on device", str(reports))
    assert not [p for p in reports.rglob("*") if p.is_file()]  # no half-written file left


def test_debug_shows_the_traceback(tmp_path, capsys):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    assert main(["--debug", "results", "list", "--storage", f"sqlite:///{text}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


# -- config and data ------------------------------------------------------------------------
def test_a_negative_learning_rate_is_a_config_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--run", str(out), "train.lr=-1"]) == 2
    one_error(capsys, "train.lr", "-1")
    assert not out.exists()


def test_overrides_on_both_sides_of_an_option(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "smoke", "train.total_steps=3", "--run", str(out),
                 "train.lr=-1"])  # fmt: skip
    assert code == 2  # the second override was read (not "unrecognized arguments")
    one_error(capsys, "train.lr")
    assert not out.exists()


def test_a_directory_given_as_a_preset_file(tmp_path, capsys):
    folder = tmp_path / "preset.yaml"
    folder.mkdir()
    assert main(["train", "--preset", str(folder), "--run", str(tmp_path / "run")]) == 2
    one_error(capsys, str(folder), "is a directory")


def _bomb_png(path: Path, side: int = 30_000) -> None:
    """A few hundred bytes that claim side x side pixels (Pillow refuses to decode it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _annotation(folder: Path, images: dict[str, str]) -> Path:
    entries = {split: [] for split in ("train", "val", "test")}
    for i, (split, name) in enumerate(images.items()):
        entries[name].append(
            {"id": f"s{i}", "report": f"the lungs are clear {i}.", "image_path": [split]}
        )
    ann = folder / "annotation.json"
    ann.write_text(json.dumps(entries))
    return ann


def test_a_decompression_bomb_is_named_by_data_check(tmp_path, capsys):
    for name in ("ok_val.png", "ok_test.png"):
        Image.new("L", (8, 8), 128).save(tmp_path / name)
    _bomb_png(tmp_path / "bomb.png")
    ann = _annotation(tmp_path, {"bomb.png": "train", "ok_val.png": "val", "ok_test.png": "test"})
    digest = sha(tmp_path / "bomb.png")
    assert main(["data", "check", str(ann), "--strict"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert f"train: unreadable image {tmp_path / 'bomb.png'}" in out.out
    assert "too many pixels" in out.out
    assert sha(tmp_path / "bomb.png") == digest


def test_load_image_refuses_a_bomb_and_a_directory(tmp_path):
    from s2d_align.data.images import load_image
    from s2d_align.errors import DataError

    _bomb_png(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"bomb\.png: refused to decode, too many pixels"):
        load_image(tmp_path / "bomb.png", 64)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="is a directory, not an image file"):
        load_image(tmp_path / "dir.png", 64)


# -- reports ----------------------------------------------------------------------------------
def test_a_row_mixing_configs_is_flagged(tmp_path):
    from s2d_align.harness.reports.data import load_preset, mixed_config_notes

    preset = tmp_path / "tiny.yaml"
    preset.write_text("name: tiny\ntrain: {total_steps: 8}\n")
    store = Store.open(None, tmp_path / "results")
    runner = Runner(store, tmp_path / "results", run_fn=fakes.fake_run_fn,
                    scorer=fakes.FakeScorer(), progress=False)  # fmt: skip
    sft = load_variants(["sft"])
    assert runner.run_grid(plan_grid(preset, sft, [1, 2])).ok
    assert runner.run_grid(plan_grid(preset, sft, [0], overrides=["train.total_steps=4"])).ok
    assert runner.run_grid(plan_grid(preset, load_variants(["s2d"]), [0, 1])).ok
    results = load_preset(store, "tiny")
    store.close()
    notes = mixed_config_notes(results)
    assert len(notes) == 1, notes  # s2d's seeds share a config: no flag
    assert "variant `sft` mixes runs of 2 different configs" in notes[0]
    assert "train.total_steps" in notes[0] and "seed(s) 1, 2" in notes[0]
    reports = tmp_path / "rep"
    assert main(["report", "--results", str(tmp_path / "results"), "--reports", str(reports)]) == 0
    table = (reports / "tiny" / "ablation.md").read_text()
    assert "WARNING: variant `sft` mixes runs of 2 different configs" in table


def test_report_keeps_the_index_entries_of_presets_its_store_lacks(results, tmp_path, capsys):
    reports = tmp_path / "rep"
    other = reports / "other" / "ablation.md"
    other.parent.mkdir(parents=True)
    other.write_text("| variant | BLEU-4 |\n")
    digest = sha(other)
    store_before = tree(results)
    assert main(["report", "--results", str(results), "--reports", str(reports)]) == 0
    index = (reports / "index.md").read_text()
    assert "[other/ablation.md](other/ablation.md)" in index  # another store's preset kept
    assert "[tiny/ablation.md](tiny/ablation.md)" in index
    assert sha(other) == digest
    assert tree(results) == store_before  # the store is only read


def test_a_tracker_alone_does_not_split_a_row():
    """``train.report_to`` only watches a run: seeds that differ in it (or a config stored
    before the field existed) share one row, and one run id."""
    from s2d_align.config import config_hash, load_config, to_dict
    from s2d_align.harness.reports.data import setting_hash

    cfg = to_dict(load_config("smoke"))
    watched = {**cfg, "train": {**cfg["train"], "report_to": ["tensorboard"]}}
    older = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "report_to"}}
    assert setting_hash(cfg) == setting_hash(watched) == setting_hash(older)
    changed = {**cfg, "train": {**cfg["train"], "lr": cfg["train"]["lr"] * 2}}
    assert setting_hash(changed) != setting_hash(cfg)
    assert config_hash(load_config("smoke", overrides=["train.report_to=[mlflow]"])) == config_hash(
        load_config("smoke")
    )
