"""``s2d-align data ...``: synthetic benchmark, importers and the test-set audit."""

from __future__ import annotations

import argparse

from s2d_align.cli import data_io, data_synth
from s2d_align.cli.vocab import command


def register(sub: argparse._SubParsersAction) -> None:
    parser = command(
        sub,
        "data",
        help="prepare and audit datasets",
        example=[
            "s2d-align data synth --data-dir data/synth",
            "s2d-align data import-iu --report-texts NLMCXR_reports.tgz --data-dir data/iu",
            "s2d-align data check data/iu/annotation.json --strict",
        ],
    )
    group = parser.add_subparsers(
        dest="data_command", metavar="DATA_COMMAND", required=True, help="what to do"
    )
    data_synth.register(group)
    data_io.register(group)
