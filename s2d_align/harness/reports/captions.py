"""Captions of the ablation table: what each number, interval and mark means, in words.

The Markdown and LaTeX renderers share these, so each statistic is described once, with the
parameters (trials, resamples, alpha) that ``significance.py`` runs it with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from s2d_align.evaluation.metrics import CORPUS
from s2d_align.harness.references import (
    DESCRIPTIONS,
    ReferenceRows,
    display_name,
    reference_variant,
)
from s2d_align.harness.reports.data import PresetResults
from s2d_align.harness.reports.significance import ALPHA, N_BOOT, SEED_TRIALS, proxy_reason
from s2d_align.harness.reports.style import ce_definition, metric_label

if TYPE_CHECKING:
    from s2d_align.harness.reports.tables import AblationTable

MARK = "†"  # differs significantly from the reference variant (seed-level test, Holm-corrected)
PROXY = "‡"  # column tested on its mean sentence score (no exact corpus-level statistic)
#: What the small type in a LaTeX cell means (the table has no room for intervals).
LATEX_NOTE = (
    "Small type: (Δ vs `{reference}`; k/n seeds significant on their own); intervals of Δ are "
    "in the Markdown and CSV tables and the forest figure."
)


#: Presets whose numbers only show that the machinery runs end to end (tiny models, a handful of
#: studies): the index lists them apart and their tables say so.
MACHINERY_CHECKS = frozenset({"smoke"})
#: Folders under the reports directory that hold a shipped example made on such a preset.
EXAMPLE_DIRS = frozenset({"sweep-example"})
MACHINERY_NOTE = (
    "Made on the CI-sized `smoke` preset (tiny models, 16 test studies) to check that training, "
    "generation, scoring and reporting run end to end. Its numbers are a machinery check, not "
    "results: they say nothing about the method and must not be cited."
)


def short_metric(metric: str) -> str:
    """The metric's label in tables and figures (``style.metric_label``)."""
    return metric_label(metric)


def reference_footnotes(references: ReferenceRows, results: PresetResults, split: str) -> list[str]:
    if not references.variants and not references.skipped:
        return []
    shown = [v[len("ref:") :] for v in references.variants]
    notes = []
    if shown:
        what = [f"`{display_name(reference_variant(n))}`: {DESCRIPTIONS[n]}" for n in shown]
        notes.append(
            "Reference rows (below the variants) are made without training and scored with the "
            "same protocol; they are never marked best nor tested: " + "; ".join(what) + "."
        )
    for name, reason in references.skipped.items():
        notes.append(f"`{display_name(reference_variant(name))}` not computed: {reason}.")
    sigs = set(results.signatures.get(split, []))
    if sigs and any(s not in sigs for s in references.signatures):
        notes.append("WARNING: the reference rows were scored under another protocol signature.")
    return notes


def significance_note(reference: str, tested: int) -> str:
    return (
        f"{MARK} (k/n): differs from `{reference}` in a seed-level paired test. Per seed s, the "
        f"corpus-level difference between the variant's seed-s run and `{reference}`'s seed-s "
        "run on the same studies, tested by paired randomisation of studies within the seed "
        f"({SEED_TRIALS:,} trials); p = the largest per-seed p when every seed's difference has "
        "the same sign, else 1 (intersection-union test of 'the difference holds in every "
        "seed'), so a difference carried by one seed is not marked (nor is a variant with one "
        "seed); "
        f"Holm-corrected over all {tested} tested cells of this table (variants × metrics); "
        f"alpha {ALPHA}. k/n: seeds whose own paired randomisation test is significant at "
        f"{ALPHA} (uncorrected)."
    )


def basis_note(basis: dict[str, str]) -> str:
    exact = [m for m, b in basis.items() if b == CORPUS]
    proxy = [m for m, b in basis.items() if b != CORPUS]
    note = ""
    if exact:
        note = (
            "Tested and resampled at corpus level (BLEU from per-study n-gram statistics, CE "
            "from CE labels, ROUGE-L and CIDEr as means of per-study scores): "
            + ", ".join(short_metric(m) for m in exact)
            + "."
        )
    if proxy:
        why = sorted({proxy_reason(m) for m in proxy})
        note += (
            f" {PROXY}: tested on the mean sentence score ({'; '.join(why)}); its intervals are "
            "shifted onto the corpus value: " + ", ".join(short_metric(m) for m in proxy) + "."
        )
    return note.strip()


def delta_note(reference: str) -> str:
    return (
        f"Δ [95% CI]: the mean over seeds of per-seed differences vs `{reference}`, with a "
        f"hierarchical bootstrap interval ({N_BOOT:,} resamples of seeds, then of studies "
        "within each seed), not corrected for multiplicity; p: Holm-adjusted."
    )


def footnotes(
    results: PresetResults, split: str, reference: str, table: AblationTable | None = None
) -> list[str]:
    n_seeds = sorted(set(results.runs.groupby("variant")["seed"].nunique()))
    shas = sorted(set(results.runs["git_sha"]))
    notes = [
        f"Preset `{results.preset}`, {split} split; mean ± sd over {'/'.join(map(str, n_seeds))} "
        "seed(s) per variant (± is the spread over training seeds, the only uncertainty in this "
        "table; intervals are in the difference table and the figures); best per column in bold.",
        significance_note(reference, table.tested if table else 0),
    ]
    if table is not None and table.basis:
        notes.append(basis_note(table.basis))
    definition = ce_definition(table.metrics) if table is not None else None
    if definition:
        notes.append(definition)
    notes.append(
        "Every variant trains for the same number of optimizer steps (compute matching); "
        "tokens seen differ with the prompt contexts."
    )
    sigs = results.signatures.get(split, [])
    if len(sigs) == 1:
        notes.append(f"Protocol signature: `{sigs[0]}`")
    elif sigs:
        notes.append(
            "WARNING: mixed protocol signatures in this table: " + "; ".join(f"`{s}`" for s in sigs)
        )
    for note in _ce_caveats(results, sigs):
        notes.append(note)
    if shas:
        notes.append(f"Code: {', '.join(s[:12] for s in shas)}")
    return notes


def _ce_caveats(results: PresetResults, signatures: list[str]) -> list[str]:
    """The rules labeler's comparability warning, once, when it scored real reports."""
    from s2d_align.evaluation.labelers.rules import comparability_note

    ce_fields = {
        part[3:] for sig in signatures for part in sig.split("|") if part.startswith("ce:")
    }
    notes = {
        comparability_note(ce, dataset) for ce in ce_fields for dataset in results.datasets
    } - {None}
    return sorted(n for n in notes if n)
