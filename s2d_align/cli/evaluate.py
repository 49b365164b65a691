"""``s2d-align label|score|compare``: the evaluation protocol as commands."""

from __future__ import annotations

import argparse

from s2d_align.cli import eval_label, eval_score


def register(sub: argparse._SubParsersAction) -> None:
    eval_label.register(sub)
    eval_score.register(sub)
