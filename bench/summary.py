"""Print the performance dashboard: one line per target from the newest saved bench run.

``python bench/summary.py [--storage results/bench] [--run FILE] [--previous FILE]``

Reads the pytest-benchmark JSON that ``nox -s bench`` autosaved (the newest file under
``--storage`` unless ``--run`` names one), and the run saved before it, and prints for every
target: its ratio, the target, met or not, the figures behind it, and the previous run's
ratio. A target the run did not measure (a skipped or failed bench) is listed as such. The exit
status is 0 whether targets are met or not (``--strict``: 1 when any measured target is not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from targets import NOT_MEASURED, TARGETS, load_report, saved_runs, targets_of


def render(current: dict, previous: dict | None) -> list[str]:
    """Dashboard lines for the targets of ``current`` (and ``previous``, when given)."""
    now, before = targets_of(current), targets_of(previous) if previous else {}
    lines = []
    for name, description in TARGETS.items():
        if name in now:
            lines.append(now[name].line(before.get(name)))
            if now[name].note:
                lines.append(f"{'':<24}{now[name].note}")
        else:
            why = NOT_MEASURED.get(name, "not measured in this run (bench skipped or failed)")
            lines.append(f"{name:<22} {'-':>8}  {why}")
        lines.append(f"{'':<24}= {description}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, default=Path("results/bench"))
    parser.add_argument("--run", type=Path, help="the run to show (default: the newest)")
    parser.add_argument("--previous", type=Path, help="the run to compare with")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is not met")
    args = parser.parse_args(argv)

    runs = saved_runs(args.storage) if args.storage.is_dir() else []
    current_path = args.run or (runs[-1] if runs else None)
    if current_path is None:
        print(f"bench summary: no saved run under {args.storage} (run `nox -s bench` first)")
        return 1
    previous_path = args.previous
    if previous_path is None and current_path in runs and runs.index(current_path) > 0:
        previous_path = runs[runs.index(current_path) - 1]
    try:
        current = load_report(current_path)
        previous = load_report(previous_path) if previous_path else None
    except ValueError as exc:
        print(f"bench summary: {exc}", file=sys.stderr)
        return 1
    print(f"performance targets ({current_path}; previous: {previous_path or 'none'})")
    print(f"machine: {current.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}, "
          f"commit {current.get('commit_info', {}).get('id', '?')[:12]}")  # fmt: skip
    for line in render(current, previous):
        print(line)
    unmet = [t for t in targets_of(current).values() if not t.met]
    return 1 if args.strict and unmet else 0


if __name__ == "__main__":
    sys.exit(main())
