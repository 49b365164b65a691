"""``s2d-align data ...``: synthetic benchmark, importers and the test-set audit."""

from __future__ import annotations

import argparse

from s2d_align.cli import data_io, data_synth


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="prepare and audit datasets")
    group = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    data_synth.register(group)
    data_io.register(group)
