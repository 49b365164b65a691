"""``s2d-align label``: CheXpert-14 labels and key phrases for a JSONL file of reports.

Input lines ``{"id", "report"}``; output lines ``{"id", "labels": {observation: 1|0|-1|null},
"keyphrases": [text, ...], "keyphrase_details": [{"text", "observation", "anatomy", "status"}]}``. Labels come from the chosen labeler (``rules`` by default, or a
user-supplied CheXbert checkpoint); key phrases always come from the clinical text analyser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s2d_align.config.schema import EvalConfig
from s2d_align.errors import DataError
from s2d_align.utils.io import iter_jsonl, write_jsonl


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label reports with CheXpert-14 labels and key phrases")
    p.add_argument(
        "--in",
        dest="inp",
        metavar="REPORTS.jsonl",
        required=True,
        type=Path,
        help='JSONL lines {"id", "report"}',
    )
    p.add_argument("--out", metavar="LABELS.jsonl", required=True, type=Path, help="output JSONL")
    p.add_argument(
        "--labeler", default="rules", choices=("rules", "chexbert"), help="default rules"
    )
    p.add_argument("--chexbert-ckpt", type=Path, help="CheXbert chexbert.pth (labeler chexbert)")
    p.add_argument("--chexbert-sha256", help="expected SHA-256 of the checkpoint (checked)")
    p.add_argument(
        "--vocab", type=Path, help="bert-base-uncased vocab.txt (default: packaged copy)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="CheXbert batch size (default 16)")
    p.add_argument(
        "--device", help="CheXbert device, e.g. cpu or cuda (default: cuda if available)"
    )
    p.set_defaults(handler=_label)


def read_reports(path: Path) -> tuple[list[str], list[str]]:
    """Ids and reports; a missing field, a non-string report or a duplicate id names the line."""
    ids: list[str] = []
    reports: list[str] = []
    seen: set[str] = set()
    for lineno, row in enumerate(iter_jsonl(path), 1):
        key, report = row.get("id"), row.get("report")
        if key is None or report is None:
            raise DataError(
                f'{path}: entry {lineno}: needs "id" and "report", got keys {sorted(row)}'
            )
        if not isinstance(report, str):
            raise DataError(f"{path}: entry {lineno} (id {key!r}): report must be a string")
        key = str(key)
        if key in seen:
            raise DataError(f"{path}: entry {lineno}: duplicate id {key!r}")
        seen.add(key)
        ids.append(key)
        reports.append(report)
    return ids, reports


def _label(args: argparse.Namespace) -> int:
    from s2d_align.evaluation.analyser import analyse
    from s2d_align.evaluation.labelers import get_labeler

    cfg = EvalConfig(
        labeler=args.labeler,
        chexbert_checkpoint=str(args.chexbert_ckpt) if args.chexbert_ckpt else None,
        chexbert_sha256=args.chexbert_sha256,
        vocab=str(args.vocab) if args.vocab else None,
    )
    ids, reports = read_reports(args.inp)
    labeler = get_labeler(
        cfg, batch_size=args.batch_size, device=args.device, progress=sys.stderr.isatty()
    )
    labels = labeler.label(reports)
    rows = []
    for key, report, lab in zip(ids, reports, labels, strict=True):
        phrases = analyse(report).keyphrases
        details = [
            {"text": k.text, "observation": k.observation, "anatomy": k.anatomy, "status": k.status}
            for k in phrases
        ]
        rows.append(
            {
                "id": key,
                "labels": lab,
                "keyphrases": [k.text for k in phrases],
                "keyphrase_details": details,
            }
        )
    write_jsonl(args.out, rows)
    print(f"labelled {len(rows)} reports with {labeler.signature} -> {args.out}")
    return 0
