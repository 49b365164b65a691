"""``s2d-align label``: CheXpert-14 labels and key phrases for a JSONL file of reports.

Input lines ``{"id", "report"}``, or the ``{"id", "prediction", ...}`` rows that ``generate``
writes, or any text field named by ``--field``. Output lines ``{"id", "labels": {observation:
1|0|-1|null}, "keyphrases": [text, ...], "keyphrase_details": [{"text", "observation", "anatomy",
"status"}], "dropped_sections": [name, ...], "no_text": bool}``. Labels come from the chosen
labeler (``rules`` by default, or a user-supplied CheXbert checkpoint); key phrases always come
from the clinical text analyser, which reads every section but those that state no finding of
the study (indication, comparison...). ``no_text`` marks a report with nothing else: under
``rules`` its labels are all blank. The summary counts both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s2d_align.cli.vocab import command
from s2d_align.config.schema import EvalConfig
from s2d_align.errors import DataError
from s2d_align.utils.io import check_output_path, iter_jsonl_lines, write_jsonl
from s2d_align.utils.progress import progress_enabled


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "label",
        help="label reports with CheXpert-14 labels and key phrases",
        example="s2d-align label --in pred.jsonl --out labels.jsonl --labeler rules",
    )
    p.add_argument(
        "--in",
        dest="inp",
        metavar="REPORTS.jsonl",
        required=True,
        type=Path,
        help='JSONL lines {"id", "report"} or generate\'s {"id", "prediction", ...}',
    )
    p.add_argument(
        "--field",
        metavar="NAME",
        help='the text field to label (default: "report", else "prediction")',
    )
    p.add_argument(
        "--out", metavar="LABELS.jsonl", required=True, type=Path, help="labels JSONL to write"
    )
    p.add_argument(
        "--labeler", default="rules", choices=("rules", "chexbert"), help="CheXpert labeler"
    )
    p.add_argument("--chexbert-ckpt", type=Path, help="CheXbert chexbert.pth (labeler chexbert)")
    p.add_argument("--chexbert-sha256", help="expected SHA-256 of the checkpoint (checked)")
    p.add_argument(
        "--vocab", type=Path, help="bert-base-uncased vocab.txt (default: packaged copy)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="CheXbert batch size")
    p.add_argument(
        "--device", help="CheXbert device, e.g. cpu or cuda (default: cuda if available)"
    )
    p.set_defaults(handler=_label)


TEXT_FIELDS = ("report", "prediction")


def _text_field(row: dict, field: str | None, where: str) -> str:
    if field is not None:
        if field not in row:
            raise DataError(f'{where}: no field "{field}" (--field), got keys {sorted(row)}')
        return field
    present = [f for f in TEXT_FIELDS if f in row]
    if len(present) > 1:
        raise DataError(f'{where}: has both "report" and "prediction"; choose one with --field')
    if not present:
        raise DataError(
            f'{where}: needs "id" and "report" (or "prediction"), got keys {sorted(row)}'
        )
    return present[0]


def read_reports(path: Path, field: str | None = None) -> tuple[list[str], list[str]]:
    """Ids and texts (``field``, or "report" / "prediction"); a missing field, a non-string text
    or a duplicate id names the line."""
    ids: list[str] = []
    reports: list[str] = []
    seen: set[str] = set()
    for index, (lineno, row) in enumerate(iter_jsonl_lines(path), 1):
        where = f"{path}: entry {index}" + (f" (line {lineno})" if lineno != index else "")
        name = _text_field(row, field, where)
        key, report = row.get("id"), row[name]
        if key is None:
            raise DataError(f'{where}: needs "id" and "{name}", got keys {sorted(row)}')
        if report is None:
            raise DataError(f'{where} (id {key!r}): {name} is null; write "" for an empty one')
        if not isinstance(report, str):
            raise DataError(
                f"{where} (id {key!r}): {name} must be a string, got {type(report).__name__}"
            )
        key = str(key)
        if key in seen:
            raise DataError(f"{path}: entry {lineno}: duplicate id {key!r}")
        seen.add(key)
        ids.append(key)
        reports.append(report)
    if not ids:
        raise DataError(f"{path}: no reports (the file holds no JSON lines)")
    return ids, reports


def _label(args: argparse.Namespace) -> int:
    from s2d_align.evaluation.analyser import SectionCounts, analyse
    from s2d_align.evaluation.labelers import get_labeler

    cfg = EvalConfig(
        labeler=args.labeler,
        chexbert_checkpoint=str(args.chexbert_ckpt) if args.chexbert_ckpt else None,
        chexbert_sha256=args.chexbert_sha256,
        vocab=str(args.vocab) if args.vocab else None,
    )
    check_output_path(args.out, {"--in": args.inp})
    ids, reports = read_reports(args.inp, args.field)
    labeler = get_labeler(
        cfg, batch_size=args.batch_size, device=args.device, progress=progress_enabled(True)
    )
    labels = labeler.label(reports)
    rows = []
    for key, report, lab in zip(ids, reports, labels, strict=True):
        analysis = analyse(report)
        phrases = analysis.keyphrases
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
                "dropped_sections": list(analysis.dropped_sections),
                "no_text": analysis.no_text,
            }
        )
    write_jsonl(args.out, rows)
    print(f"labelled {len(rows)} reports with {labeler.signature} -> {args.out}")
    empty = [r["id"] for r in rows if r["no_text"]]
    counts = SectionCounts(len(rows), sum(bool(r["dropped_sections"]) for r in rows), len(empty))
    print(f"sections: {counts.describe()}")
    if empty:
        what = "labels blank" if labeler.name == "rules" else "key phrases empty"
        print(
            f"no findings text ({what}): {', '.join(empty[:10])}"
            + (" ..." if len(empty) > 10 else "")
        )
    return 0
