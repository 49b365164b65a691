"""The default ``rules`` labeler: the project's clinical text analyser, offline and fast."""

from __future__ import annotations

from collections.abc import Sequence

from s2d_align.evaluation.analyser import ANALYSER_VERSION, analyse
from s2d_align.evaluation.labelers.base import Labels


class RulesLabeler:
    name = "rules"
    signature = f"rules-{ANALYSER_VERSION}"

    def label(self, reports: Sequence[str]) -> list[Labels]:
        return [analyse(report).labels for report in reports]
