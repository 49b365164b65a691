"""One flag vocabulary: the new names work, the old ones still work and say what replaced them,
every help page shows its defaults and an example, and usage errors are one line."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import harness_fakes as fakes
import pytest
import yaml

from s2d_align.cli import harness_results
from s2d_align.cli.eval_score import _cache_dir
from s2d_align.cli.main import build_parser, main, parse_args
from s2d_align.cli.vocab import env_cache
from s2d_align.config.loader import read_yaml
from s2d_align.errors import ConfigError


@pytest.fixture
def wide(monkeypatch):
    """Help text unwrapped, so a default is never split across lines."""
    monkeypatch.setenv("COLUMNS", "500")


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, list[str]]:
    return fakes.small_results_store(tmp_path)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def warning(old: str, new: str, prog: str) -> str:
    return f"DeprecationWarning: {old} is deprecated in {prog}; use {new}"


# (command words, other required arguments, old flag, new flag, value, dest, parsed value)
RENAMES = [
    (["train"], ["--preset", "smoke"], "--out", "--run", "r", "run", "r"),
    (["ablate"], [], "--out", "--results", "d", "results", "d"),
    (["ablate"], [], "--cache-root", "--cache", "c", "cache", Path("c")),
    (["sweep"], ["--preset", "smoke", "--space", "memory", "--trials", "2"],
     "--out", "--results", "d", "results", "d"),
    (["sweep"], ["--preset", "smoke", "--space", "memory", "--trials", "2"],
     "--workers", "--jobs", "3", "jobs", 3),
    (["sweep"], ["--preset", "smoke", "--space", "memory", "--trials", "2"],
     "--cache-root", "--cache", "c", "cache", Path("c")),
    (["report"], [], "--out", "--reports", "rep", "reports", "rep"),
    (["regress"], [], "--out", "--results", "d", "results", "d"),
    (["regress"], [], "--cache-root", "--cache", "c", "cache", Path("c")),
    (["results", "list"], [], "--out", "--results", "d", "results", "d"),
    (["results", "show"], ["RUN"], "--out", "--results", "d", "results", "d"),
    (["results", "compare"], ["A", "B"], "--out", "--results", "d", "results", "d"),
    (["score"], ["--pred", "p.jsonl", "--ann", "a.json"], "--cache-dir", "--cache", "c", "cache",
     Path("c")),
    (["compare"], ["a.jsonl", "b.jsonl", "--ann", "a.json"], "--trials", "--resamples", "500",
     "resamples", 500),
    (["compare"], ["a.jsonl", "b.jsonl", "--ann", "a.json"], "--cache-dir", "--cache", "c",
     "cache", Path("c")),
    (["data", "synth"], [], "--out", "--data-dir", "d", "data_dir", Path("d")),
    (["data", "synth"], ["--data-dir", "d"], "--workers", "--jobs", "2", "jobs", 2),
    (["data", "import-iu"], ["--report-texts", "r.tgz"], "--out", "--data-dir", "d", "data_dir",
     Path("d")),
    (["data", "import-iu"], ["--data-dir", "d"], "--reports", "--report-texts", "r.tgz",
     "report_texts", Path("r.tgz")),
    (["data", "import-mimic"], ["--root", "m"], "--out", "--data-dir", "d", "data_dir", Path("d")),
    (["data", "import-mimic"], ["--root", "m", "--data-dir", "d"], "--reports", "--report-texts",
     "r", "report_texts", Path("r")),
]  # fmt: skip
IDS = [f"{' '.join(c[0])} {c[2]}" for c in RENAMES]


@pytest.mark.parametrize(
    ("words", "rest", "old", "new", "value", "dest", "parsed"), RENAMES, ids=IDS
)
def test_new_flag_works_and_old_alias_warns_and_still_works(
    capsys, words, rest, old, new, value, dest, parsed
):
    assert getattr(parse_args([*words, *rest, new, value]), dest) == parsed
    assert capsys.readouterr().err == ""  # the new name says nothing
    assert getattr(parse_args([*words, *rest, f"{old}={value}"]), dest) == parsed
    line = one_line(capsys.readouterr().err)
    assert line.startswith(warning(old, new, f"s2d-align {' '.join(words)}"))


def test_results_list_with_new_and_old_names(results, capsys):
    out, _ = results
    assert main(["results", "list", "--results", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 run(s)" in captured.out and captured.err == ""
    assert main(["results", "list", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 run(s)" in captured.out
    assert one_line(captured.err).startswith(
        warning("--out", "--results", "s2d-align results list")
    )


@pytest.mark.slow  # the figures: tens of seconds on a busy CPU
def test_report_still_takes_the_old_out(results, tmp_path, capsys):
    out, _ = results  # (--reports itself: test_cli_errors)
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "old")]) == 0
    assert (tmp_path / "old" / "tiny" / "ablation.md").is_file()
    assert one_line(capsys.readouterr().err).startswith(
        warning("--out", "--reports", "s2d-align report")
    )


@pytest.mark.slow  # plans with the real preset: a few seconds
def test_ablate_dry_run_takes_the_old_names_and_creates_nothing(tmp_path, capsys):
    fresh = tmp_path / "fresh"  # (the new names: test_cli_errors)
    argv = ["ablate", "--preset", "smoke", "--variants", "sft", "--seeds", "0", "--dry-run"]
    assert main([*argv, "--out", str(fresh), "--cache-root", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert "1 run(s) to do" in captured.out
    assert captured.err.strip().splitlines() == [
        warning("--out", "--results", "s2d-align ablate")
        + " (the old name goes in the next release)",
        warning("--cache-root", "--cache", "s2d-align ablate")
        + " (the old name goes in the next release)",
    ]
    assert not fresh.exists() and not (tmp_path / "c").exists()


def test_data_synth_writes_into_data_dir_with_jobs(tmp_path, capsys):
    tiny = ["--n-train", "4", "--n-val", "2", "--n-test", "2", "--size", "32", "--no-progress"]
    assert main(["data", "synth", "--data-dir", str(tmp_path / "new"), "--jobs", "1", *tiny]) == 0
    assert (tmp_path / "new" / "annotation.json").is_file()
    assert capsys.readouterr().err == ""
    assert main(["data", "synth", "--out", str(tmp_path / "old"), "--workers", "1", *tiny]) == 0
    assert (tmp_path / "old" / "annotation.json").read_bytes() == (
        tmp_path / "new" / "annotation.json"
    ).read_bytes()
    err = capsys.readouterr().err
    assert "--out is deprecated" in err and "--workers is deprecated" in err


# -- the cache: one flag, one environment variable ----------------------------------------------
def test_s2d_cache_dir_still_works_and_warns(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("S2D_CACHE", raising=False)
    monkeypatch.setenv("S2D_CACHE_DIR", str(tmp_path / "old"))
    args = parse_args(["score", "--pred", "p.jsonl", "--ann", "a.json"])
    assert _cache_dir(args) == tmp_path / "old" / "eval"
    assert one_line(capsys.readouterr().err).startswith(
        "DeprecationWarning: S2D_CACHE_DIR is deprecated in the environment; use S2D_CACHE"
    )
    monkeypatch.setenv("S2D_CACHE", str(tmp_path / "new"))  # the new name wins, silently
    assert env_cache() == tmp_path / "new"
    assert _cache_dir(args) == tmp_path / "new" / "eval"
    flag = parse_args(["score", "--pred", "p.jsonl", "--ann", "a.json", "--cache", "f"])
    assert _cache_dir(flag) == Path("f") / "eval"  # the flag wins over the environment
    assert capsys.readouterr().err == ""


def test_no_cache_consults_no_environment(monkeypatch, capsys):
    monkeypatch.delenv("S2D_CACHE", raising=False)
    monkeypatch.setenv("S2D_CACHE_DIR", "/somewhere")
    assert _cache_dir(parse_args(["score", "--pred", "p", "--ann", "a", "--no-cache"])) is None
    assert capsys.readouterr().err == ""


# -- help pages -----------------------------------------------------------------------------------
def parsers(parser: argparse.ArgumentParser):
    """The parser and every (sub)command parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from parsers(sub)


def examples(parser: argparse.ArgumentParser) -> list[list[str]]:
    lines = [line.strip() for line in (parser.epilog or "").splitlines()]
    commands = [line.split("#")[0].split(">")[0] for line in lines if line.startswith("s2d-align ")]
    return [shlex.split(c)[1:] for c in commands]


ALL = list(parsers(build_parser()))


@pytest.mark.parametrize("parser", ALL, ids=[p.prog for p in ALL])
def test_help_shows_every_default_an_example_and_no_old_name(wide, parser):
    text = " ".join(parser.format_help().split())
    assert examples(parser), f"{parser.prog} --help has no example"
    usage = " ".join(parser.format_usage().split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (parser.prog, action.dest)
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if not unset and action.default != []:  # a value the command really starts from
            assert f"(default: {action.default})" in text, (parser.prog, action.dest)
        for old in getattr(action, "deprecated", ()):
            assert f"[deprecated: {old}" in text  # named once, after the help
            assert f"[{old} " not in usage and f"{old}, " not in text


@pytest.mark.parametrize("parser", ALL, ids=[p.prog for p in ALL])
def test_every_example_parses_with_the_current_names(parser, capsys):
    for argv in examples(parser):
        args = parse_args(argv)
        assert callable(getattr(args, "handler", None)), argv
        assert capsys.readouterr().err == "", argv  # no deprecated name in an example


def test_the_vocabulary_is_the_same_everywhere():
    """A folder flag means one thing: --results never names a reports or run folder, etc."""
    meanings: dict[str, set[str]] = {}
    for parser in ALL:
        for action in parser._actions:
            old = getattr(action, "deprecated", ())
            for flag in (f for f in action.option_strings if f not in old):
                meanings.setdefault(flag, set()).add(action.dest)
    assert meanings["--results"] == {"results"}
    assert meanings["--reports"] == {"reports"}
    assert meanings["--run"] == {"run"}
    assert meanings["--cache"] == {"cache"}
    assert meanings["--jobs"] == {"jobs"}
    assert meanings["--resamples"] == {"resamples"}
    assert meanings["--data-dir"] == {"data_dir"}
    assert not {"--workers", "--cache-root", "--cache-dir"} & set(meanings)  # aliases only
    assert meanings["--trials"] == {"trials"}  # Optuna's, on sweep alone
    assert [p.prog for p in ALL if any("--trials" in a.option_strings for a in p._actions)] == [
        "s2d-align compare",  # the deprecated alias of --resamples
        "s2d-align sweep",
    ]
    current = {  # where --out is not (or no longer) the file a command writes, it is deprecated
        p.prog for p in ALL for a in p._actions
        if "--out" in a.option_strings and "--out" not in getattr(a, "deprecated", ())
    }  # fmt: skip
    assert current == {
        "s2d-align data check", "s2d-align label", "s2d-align score", "s2d-align compare",
        "s2d-align generate", "s2d-align results export", "s2d-align results bundle",
    }  # fmt: skip


# -- results list --status, read commands, usage errors ------------------------------------------
def test_status_is_checked_against_the_store_statuses(results, capsys):
    from s2d_align.harness.store import STATUSES

    assert harness_results.STATUSES == STATUSES
    with pytest.raises(SystemExit) as exc:
        main(["results", "list", "--status", "bogus"])
    assert exc.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: s2d-align results list: argument --status: invalid choice")
    assert "'complete'" in line
    out, _ = results
    assert main(["results", "list", "--results", str(out), "--status", "failed"]) == 0
    assert "0 run(s)" in capsys.readouterr().out
    assert main(["results", "list", "--results", str(out), "--status", "complete"]) == 0
    assert "2 run(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["results", "list"],
        ["results", "show", "RUN"],
        ["results", "compare", "A", "B"],
        ["results", "export", "--format", "csv", "--out", "{tmp}/x.csv"],
        ["report", "--reports", "{tmp}/rep"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_read_commands_never_create_a_store(tmp_path, capsys, argv):
    typo = tmp_path / "resluts"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--results", str(typo)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "no results store" in line and str(typo) in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "prog", "stray"),
    [
        (["ablate", "--bogus"], "s2d-align ablate", "--bogus"),
        (["results", "list", "extra"], "s2d-align results list", "extra"),
        (["--nope", "config", "show"], "s2d-align config show", "--nope"),
    ],
)
def test_unrecognized_arguments_are_one_line_exit_2(capsys, argv, prog, stray):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"error: {prog}: unrecognized arguments: {stray} (see '{prog} --help')"


def test_a_missing_required_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2
    assert "the following arguments are required: --preset" in one_line(capsys.readouterr().err)


# -- config -------------------------------------------------------------------------------------
def test_config_show_takes_the_seed_as_train_does(capsys):
    assert main(["config", "show", "--preset", "smoke", "--variant", "s2d", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["seed"] == 7
    assert any(line.split() == ["seed:", "7", "#", "override"] for line in text.splitlines())
    assert text.startswith("# preset smoke, variant s2d, overrides: seed=7")


def test_deeply_nested_yaml_is_one_clear_error(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: YAML nested too deeply"):
        read_yaml(deep)
    assert main(["config", "show", "--preset", str(deep)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(deep) in line and "nested too deeply" in line
