"""Oracle paraphrases: each study's report written again from its findings in another style.

The harness's ``oracle-paraphrase`` reference row scores these texts against the real reports.
A paraphrase states the same findings as its reference (same plan: types, sides, zones,
severities, hedges) but the grammar makes its choices from another random stream: radiologist
style, phrasings, sentence order and which normal structures it bothers to mention. So its
n-gram scores are the ceiling that paraphrase alone leaves to a clinically perfect report.

Labels follow the words (``grammar.py``), and a few phrasings state one more observation than
another ("opacity, likely atelectasis" names Lung Opacity). A draw is therefore kept only when
its positive and uncertain CheXpert labels equal the study's ground truth, which makes every CE
cell (blank and negative both binarise to 0) identical to the reference's by construction.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from s2d_align.config.schema import SynthConfig
from s2d_align.data.synth.findings import StudyPlan, plan_studies
from s2d_align.data.synth.generate import ensure_synthcxr
from s2d_align.data.synth.grammar import write_report
from s2d_align.errors import ConfigError, DataError
from s2d_align.utils.io import read_json

#: Random stream of paraphrases; ``generate`` uses 1 (report text) and 2 (pixels).
PARAPHRASE_STREAM = 3
#: Draws tried per study before falling back (the first draw keeps the labels ~97% of the time).
MAX_ATTEMPTS = 200
SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def finding_labels(labels: dict[str, Any]) -> dict[str, int]:
    """The labels CE can see: positive (1) and uncertain (-1) observations only."""
    return {obs: value for obs, value in labels.items() if value in (1, -1)}


def paraphrase_study(
    plan: StudyPlan,
    settings: SynthConfig,
    style_seed: int,
    original: str,
    labels: dict[str, Any],
) -> tuple[str, bool]:
    """One study's paraphrase and whether it is a new text (False: the original came back)."""
    target = finding_labels(labels)
    same_text: str | None = None
    for attempt in range(MAX_ATTEMPTS):
        seq = np.random.SeedSequence(
            [settings.seed, plan.index, PARAPHRASE_STREAM, style_seed, attempt]
        )
        report = write_report(
            plan.findings,
            np.random.default_rng(seq),
            visit=plan.visit,
            portable=plan.portable,
            views=settings.views,
        )
        if finding_labels(report.labels) != target:
            continue
        if report.text != original:
            return report.text, True
        same_text = same_text or report.text
    # no other wording kept the labels: the original text is the only label-exact answer
    return same_text or original, False


def _normalised(findings: list[dict[str, Any]]) -> str:
    return json.dumps(findings, sort_keys=True)


def paraphrase_reports(
    synth_cfg: SynthConfig,
    cache_root: str | Path,
    split: str,
    style_seed: int = 1,
    *,
    progress: bool = False,
) -> dict[str, str]:
    """``{study id: paraphrased report}`` for one split of the SynthCXR dataset of ``synth_cfg``.

    The dataset is read from (or generated into) ``cache_root`` like ``ensure_synthcxr``
    does. Deterministic in (dataset, split, style seed).
    """
    if split not in SPLITS:
        raise ConfigError(f"paraphrase_reports: split must be one of {SPLITS}, got {split!r}")
    if isinstance(style_seed, bool) or not isinstance(style_seed, int) or style_seed < 0:
        raise ConfigError(
            f"paraphrase_reports: style_seed must be an integer >= 0, got {style_seed!r}"
        )
    s = synth_cfg
    ann_path = Path(ensure_synthcxr(synth_cfg, cache_root, progress=progress))
    folder = ann_path.parent
    originals = {e["id"]: e["report"] for e in read_json(ann_path)[split]}
    truth = read_json(folder / "ground_truth.json")
    plans = [p for p in plan_studies(s.n_train, s.n_val, s.n_test, s.seed) if p.split == split]
    if {p.study_id for p in plans} != set(originals):
        raise DataError(
            f"{folder}: the {split} studies of annotation.json are not the ones this generator "
            "plans for these settings; delete the folder so that it is generated again"
        )
    out: dict[str, str] = {}
    kept_original = 0
    for plan in plans:
        gt = truth.get(plan.study_id)
        planned = json.loads(json.dumps([f.to_dict() for f in plan.findings]))
        if gt is None or _normalised(gt["findings"]) != _normalised(planned):
            raise DataError(
                f"{folder}/ground_truth.json: study {plan.study_id} does not hold the findings "
                "this generator plans for it; delete the folder so that it is generated again"
            )
        text, new = paraphrase_study(plan, s, style_seed, originals[plan.study_id],
                                     gt["labels"])  # fmt: skip
        out[plan.study_id] = text
        kept_original += not new
    if kept_original:
        log.info("paraphrase: %d of %d %s studies kept their original text (no other wording "
                 "states the same labels)", kept_original, len(plans), split)  # fmt: skip
    return out


__all__ = ["MAX_ATTEMPTS", "PARAPHRASE_STREAM", "finding_labels", "paraphrase_reports"]
