"""The default ``rules`` labeler: the project's clinical text analyser, offline and fast."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from s2d_align.evaluation.analyser import ANALYSER_VERSION, SectionCounts, analyse
from s2d_align.evaluation.labelers.base import Labels

log = logging.getLogger(__name__)

#: Datasets of real reports, whose papers report CE from CheXbert (or the CheXpert labeler).
REAL_DATASETS = frozenset({"iu_xray", "mimic_cxr"})


class RulesLabeler:
    name = "rules"
    signature = f"rules-{ANALYSER_VERSION}"

    def __init__(self) -> None:
        #: Section tally of the last ``label`` call (reports with sections dropped / no text).
        self.last_sections = SectionCounts(0, 0, 0)

    def label(self, reports: Sequence[str]) -> list[Labels]:
        labels: list[Labels] = []
        dropped = 0
        empty: list[int] = []
        for i, report in enumerate(reports):  # one analysis at a time: MIMIC has 200k reports
            analysis = analyse(report)
            labels.append(analysis.labels)
            dropped += bool(analysis.dropped_sections)
            if analysis.no_text:
                empty.append(i)
        self.last_sections = SectionCounts(len(labels), dropped, len(empty))
        if empty:
            log.warning(
                "rules labeler: %d of %d reports hold only sections that state no finding "
                "(indication, comparison...); their 14 labels are blank, not No Finding "
                "(reports %s)",
                len(empty),
                len(labels),
                ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else ""),
            )
        return labels


def comparability_note(signature: str, dataset: str | None) -> str | None:
    """The warning to show beside CE when the ``rules`` labeler scored real reports, else None."""
    if not signature.startswith("rules-") or dataset not in REAL_DATASETS:
        return None
    return (
        f"CE comes from the project's rules labeler ({signature}): it is not comparable with the "
        "CE of CheXbert-based papers. For that, score with eval.labeler=chexbert and your own "
        "chexbert.pth (README, 'Clinical efficacy with CheXbert')."
    )
