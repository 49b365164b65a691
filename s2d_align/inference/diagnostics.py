"""Per-run diagnostics: does a finished run use its images, and did each training signal take?

A headline score can hide partial learning: a model may write fluent, well-scored reports from
language priors alone, or copy its retrieved reference. These measurements look for that:

- **image dependence**: the split generated again with the images permuted across studies
  (:func:`permute_images`: a fixed derangement, the same for every run, so variants are compared
  on the same swap). Only pixels move; each study keeps its prompt, its retrieved references and
  its key phrases (predicted from its own image). The harness scores these predictions with the
  run's scorer; the drop of the CE headline is the dependence on the visual tokens. A model that
  copies its (image-retrieved) reference can score near 0 here: that is what it measures.
- **finding AUROC** (:func:`finding_scores`, :func:`finding_auroc`): for each CheXpert
  observation, a score per study ranked against the reference report's label (0.5: a belief
  that ignores the image). The score is the teacher-forced mean log-likelihood per token of the
  observation's commonest positive train sentences, opening the report after the study's image
  and the ``image`` context prompt, minus that of its commonest negative ones (minus every other
  observation's negative sentences when the train reports never negate it). The sentences are the data's own
  wording, labelled by the run's labeler (:mod:`s2d_align.inference.finding_sentences`): a
  hand-written sentence off the training distribution measures the wording, not the belief.
  An observation no train sentence states on its own falls back to :data:`FINDING_SENTENCES`.
  The image and prompt are run once per batch; each sentence then reads their KV cache.
- **memory gate and alignment** (:func:`train_log_diagnostics`): ``tanh(g)`` at each stage end,
  and the alignment (InfoNCE) loss at the end of each stage divided by its chance level log(B).
- **retrieval label precision** (:func:`retrieval_label_precision`): do retrieved reference
  reports state the same findings as the study's own report?

Every value is named ``diag/...``; :func:`higher_is_better` gives its direction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation import ce
from s2d_align.evaluation.metrics import metric_spec
from s2d_align.evaluation.stats import auroc
from s2d_align.inference.finding_sentences import (
    FINDING_SENTENCES,
    FindingSentences,
    train_finding_sentences,
)

if TYPE_CHECKING:
    from s2d_align.data.r2gen import Study
    from s2d_align.training.data import Item, StudyDataset
    from s2d_align.training.distributed import Dist
    from s2d_align.training.prompts import PromptBuilder

#: Seed of the image derangement. Fixed (not the run's seed) so that every run of a grid, whatever
#: its seed, is shown the same wrong images: image dependence is then paired across variants.
PERMUTATION_SEED = 0
#: Uncertainty mapping for the labels diagnostics compare against (uncertain counts as absent).
MAPPING = "u0"
#: Alignment loss averaged over this many last steps of a stage.
ALIGN_LAST_STEPS = 10
#: The finding sentences a run's diagnostics scored (run folder; see ``finding_sentences``).
FINDING_SENTENCES_FILE = "finding_sentences.json"


def higher_is_better(name: str) -> bool:
    """Direction of a ``diag/...`` value, as the metric registry declares it."""
    return metric_spec(name).higher_is_better


# ----------------------------------------------------------------------------- image permutation
def derangement(n: int, seed: int = PERMUTATION_SEED) -> np.ndarray:
    """A permutation of ``range(n)`` with no fixed point, drawn uniformly for ``seed``
    (rejection sampling: about e draws on average)."""
    if n < 2:
        raise DataError(f"permuting images needs at least 2 studies, got {n}")
    rng = np.random.default_rng([seed, n])
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return order


class ImagePermutedDataset:
    """A study dataset whose study ``i`` carries the pixels of study ``order[i]``.

    Everything but the pixels (and view count) is study ``i``'s own: id, report, prompt parts.
    """

    def __init__(self, base: StudyDataset, order: Sequence[int]) -> None:
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(len(base))):
            raise ValueError(f"order is not a permutation of {len(base)} studies")
        self.base = base
        self.order = order
        self.studies = base.studies
        #: id of the study whose image each study is shown
        self.image_ids = [base.studies[int(j)].id for j in order]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int, int]) -> Item:
        index = key if isinstance(key, int) else key[0]
        own = self.base[key]
        donor = self.base[int(self.order[index])]
        return dataclasses.replace(own, pixels=donor.pixels, n_views=donor.n_views)


def permute_images(dataset: StudyDataset, seed: int = PERMUTATION_SEED) -> ImagePermutedDataset:
    """``dataset`` with every study shown another study's image (:func:`derangement`)."""
    return ImagePermutedDataset(dataset, derangement(len(dataset), seed))


# ----------------------------------------------------------------------------- finding AUROC
def _sentence_ids(builder: PromptBuilder, sentence: str) -> list[int]:
    # Tokenised like a target (no leading space, see PromptBuilder.target_ids), without the eos:
    # the sentence opens a report, it is not the whole report.
    ids = list(builder.tokenizer(sentence.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ConfigError(f"finding sentence {sentence!r} has no tokens")
    return ids


def _forward_parameters(llm: Any) -> frozenset[str]:
    import inspect

    try:
        return frozenset(inspect.signature(llm.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _accepts_logits_to_keep(llm: Any) -> bool:
    return "logits_to_keep" in _forward_parameters(llm)


def sentence_log_likelihoods(
    model: Any, batch: dict, targets: Sequence[Sequence[int]], *, use_cache: bool = True
):
    """``[B, K]`` mean log-probability per token of each target sentence after each row's
    visual tokens and (left-padded generation) prompt: the training layout, labels on the
    sentence only. The image is encoded once. With ``use_cache`` the LLM runs the image and
    prompt once and each sentence reads their KV cache (the same values up to float error);
    without, it runs the whole sequence once per sentence."""
    import torch

    from s2d_align.models.sequence import assemble

    enc = model.encode(batch["pixel_values"], batch["view_mask"])
    device = enc.tokens.device
    embed = model.llm.get_input_embeddings()
    prompt = batch["input_ids"].to(device)
    prompt_mask = batch["attention_mask"].to(device)
    rows = prompt.shape[0]
    keep = _accepts_logits_to_keep(model.llm)
    out = torch.empty(rows, len(targets), dtype=torch.float32)
    if use_cache:
        prefix = assemble(enc.tokens, enc.mask, embed(prompt), prompt_mask)
        _cached_log_likelihoods(model.llm, prefix, targets, embed, keep, out)
        return out
    for k, target in enumerate(targets):
        tokens = torch.tensor(list(target), dtype=torch.long, device=device).expand(rows, -1)
        n = tokens.shape[1]
        ids = torch.cat([prompt, tokens], dim=1)
        mask = torch.cat([prompt_mask, torch.ones_like(tokens)], dim=1)
        # assemble left-pads, so every row ends with its n sentence tokens.
        seq = assemble(enc.tokens, enc.mask, embed(ids), mask)
        extra = {"logits_to_keep": n + 1} if keep else {}
        logits = model.llm(
            inputs_embeds=seq.embeds,
            attention_mask=seq.attention_mask,
            position_ids=seq.position_ids,
            use_cache=False,
            **extra,
        ).logits
        logp = logits[:, -(n + 1) : -1].float().log_softmax(-1)
        out[:, k] = logp.gather(-1, tokens[..., None]).squeeze(-1).mean(-1).cpu()
    return out


def _cached_log_likelihoods(llm, prefix, targets, embed, keep: bool, out) -> None:
    """Fill ``out[:, k]`` for each target from one prefix pass and its KV cache.

    The prefix is left-padded, so every row's sentence starts at the same column; its positions
    continue each row's own count (the number of real prefix tokens), and the attention mask is
    the prefix's, extended by ones. The last prefix logit predicts a sentence's first token; the
    sentence's tokens but its last are fed to predict the rest. Each sentence gets a copy of the
    cache (HF's documented way to reuse a prompt cache): decoding appends to it in place."""
    import copy

    import torch

    # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still works, with a
    # deprecation message); older releases know only the old one.
    name = "cache" if "cache" in _forward_parameters(llm) else "past_key_values"
    extra = {"logits_to_keep": 1} if keep else {}
    head = llm(
        inputs_embeds=prefix.embeds,
        attention_mask=prefix.attention_mask,
        position_ids=prefix.position_ids,
        use_cache=True,
        **extra,
    )
    first = head.logits[:, -1].float().log_softmax(-1)  # [B, V]
    cache = getattr(head, name)
    rows, device = first.shape[0], prefix.embeds.device
    start = prefix.attention_mask.sum(1, keepdim=True)  # next position of each row
    for k, target in enumerate(targets):
        tokens = torch.tensor(list(target), dtype=torch.long, device=device).expand(rows, -1)
        n = tokens.shape[1]
        total = first.gather(-1, tokens[:, :1]).squeeze(-1)
        if n > 1:
            fed = tokens[:, :-1]
            logits = llm(
                inputs_embeds=embed(fed),
                attention_mask=torch.cat([prefix.attention_mask, torch.ones_like(fed)], dim=1),
                position_ids=start + torch.arange(n - 1, device=device),
                use_cache=True,
                **{name: copy.deepcopy(cache)},
            ).logits
            logp = logits.float().log_softmax(-1)
            total = total + logp.gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(-1)
        out[:, k] = (total / n).cpu()


def finding_scores(
    model: Any,
    dataset: StudyDataset,
    builder: PromptBuilder,
    *,
    dist: Dist,
    batch_size: int,
    sentences: Sequence[str] = tuple(FINDING_SENTENCES.values()),
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
    use_cache: bool = True,
) -> np.ndarray:
    """``[N, K]`` teacher-forced mean log-likelihood of each sentence for each study, in the
    ``image`` context (no reference, no key phrases: the image is the only study-specific input).
    :meth:`FindingSentences.contrast` turns the columns of its ``sentences()`` into finding
    scores; ``use_cache``: see :func:`sentence_log_likelihoods`.
    """
    import torch

    from s2d_align.inference.passes import sharded_map
    from s2d_align.training.collate import Collator, ContextStore, StageContext

    targets = [_sentence_ids(builder, s) for s in sentences]
    collate = Collator(builder, ContextStore(), [StageContext(name="image")], generate=True)

    def fn(batch: dict) -> list[np.ndarray]:
        with torch.no_grad(), autocast():
            scores = sentence_log_likelihoods(model, batch, targets, use_cache=use_cache)
            return list(scores.numpy())

    was_training = model.training
    model.eval()
    try:
        rows = sharded_map(
            dataset,
            collate,
            fn,
            dist=dist,
            batch_size=batch_size,
            progress=progress,
            desc="finding scores",
        )
    finally:
        model.train(was_training)
    return np.stack(rows) if rows else np.zeros((0, len(targets)), dtype=np.float32)


def finding_auroc(
    scores: np.ndarray,
    labels: Sequence[Mapping[str, int | None]],
    observations: Sequence[str] = OBSERVATIONS,
) -> dict[str, float]:
    """AUROC of each score column against the reference label of its observation.

    ``scores[:, k]`` scores ``observations[k]``; ``labels`` are the reference reports' CheXpert
    labels, binarised with ``u0`` (positive = 1; uncertain, negative, blank = not positive).
    Returns ``diag/finding_auroc/<Observation>`` for every observation with at least one positive
    and one other study, and their unweighted mean ``diag/finding_auroc`` (absent when none has
    both). AUROC by the rank formula with ties averaged (:func:`~s2d_align.evaluation.stats.auroc`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(labels), len(observations)):
        raise ValueError(
            f"finding scores have shape {scores.shape}; expected ({len(labels)} studies, "
            f"{len(observations)} observations)"
        )
    unknown = [o for o in observations if o not in OBSERVATIONS]
    if unknown:
        raise DataError(f"unknown observation(s) {unknown}; valid: {list(OBSERVATIONS)}")
    positive = ce.binarize(labels, MAPPING, source="reference labels").astype(bool)
    out: dict[str, float] = {}
    for k, obs in enumerate(observations):
        y = positive[:, OBSERVATIONS.index(obs)]
        if y.any() and not y.all():
            out[f"diag/finding_auroc/{obs}"] = auroc(scores[:, k], y)
    if out:
        out["diag/finding_auroc"] = float(np.mean(list(out.values())))
    return out


# ----------------------------------------------------------------------------- training log
def train_log_diagnostics(
    rows: Iterable[Mapping[str, Any]], *, batch_size: int, last: int = ALIGN_LAST_STEPS
) -> dict[str, float]:
    """Memory gate and alignment loss per stage, from ``train_log.jsonl`` rows.

    - ``diag/gate/<stage>``: the ``gate`` value (tanh(g)) of the stage's last logged step that
      has one (no entry when the run has no gated memory);
    - ``diag/align_vs_chance/<stage>``: the mean ``losses.align`` over the stage's last ``last``
      steps that have one, divided by log(``batch_size``): an InfoNCE over B rows that has learnt
      nothing sits at log B, so 1.0 is chance and lower means the alignment took. ``batch_size``
      is the rows one process's loss saw (train.batch_size over the number of processes).
    """
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    stages: dict[str, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        if "stage" not in row:
            raise DataError(f"train log row {i}: no 'stage' ({dict(row)})")
        stages.setdefault(str(row["stage"]), []).append(row)
    out: dict[str, float] = {}
    for stage, stage_rows in stages.items():
        gates = [r["gate"] for r in stage_rows if r.get("gate") is not None]
        if gates:
            out[f"diag/gate/{stage}"] = float(gates[-1])
        align = [
            float(r["losses"]["align"])
            for r in stage_rows
            if (r.get("losses") or {}).get("align") is not None
        ]
        if align:
            if batch_size < 2:
                raise ConfigError(
                    f"stage {stage!r} logs an alignment loss but batch size {batch_size} < 2 "
                    "has no negatives (log 1 = 0)"
                )
            tail = align[-last:]
            out[f"diag/align_vs_chance/{stage}"] = sum(tail) / len(tail) / math.log(batch_size)
    return out


# ----------------------------------------------------------------------------- retrieval
def positive_findings(labels: Mapping[str, int | None]) -> frozenset[str]:
    """The observations a report asserts (label 1; u0), No Finding left out: 13 findings."""
    return frozenset(o for o, v in labels.items() if v == 1 and o != "No Finding")


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return 1.0 if not (a or b) else len(a & b) / len(a | b)


def retrieval_label_precision(
    neighbours: Mapping[str, Sequence[str]],
    study_labels: Mapping[str, Mapping[str, int | None]],
    reference_labels: Mapping[str, Mapping[str, int | None]],
) -> dict[str, float]:
    """How often a retrieved reference report states the same findings as the study's report.

    Each report is reduced to its set of positive findings (:func:`positive_findings`: label 1,
    uncertain = absent, the 13 findings without No Finding; a normal report has the empty set).
    Over every (study, retrieved reference) pair of ``neighbours`` (study id -> train ids):

    - ``diag/retrieval_label_precision``: share of pairs whose sets are *equal* (Jaccard 1);
      two normal reports agree, a normal and an abnormal one do not;
    - ``diag/retrieval_label_jaccard``: mean Jaccard of the sets (1 for two empty sets);
    - ``diag/retrieval_label_precision/shuffled``: the first value when each study is compared
      with the references retrieved for all the *other* studies: what retrieval that ignores
      the image would reach on this split's mix of findings.
    """
    pairs: list[tuple[frozenset[str], frozenset[str]]] = []
    own: dict[str, list[frozenset[str]]] = {}
    for sid, refs in neighbours.items():
        if sid not in study_labels:
            raise DataError(f"retrieval neighbours: no labels for study {sid!r}")
        mine = positive_findings(study_labels[sid])
        for ref in refs:
            if ref not in reference_labels:
                raise DataError(f"retrieval neighbours: no labels for reference {ref!r} of {sid!r}")
            theirs = positive_findings(reference_labels[ref])
            pairs.append((mine, theirs))
            own.setdefault(sid, []).append(theirs)
    if not pairs:
        return {}
    out = {
        "diag/retrieval_label_precision": float(np.mean([a == b for a, b in pairs])),
        "diag/retrieval_label_jaccard": float(np.mean([_jaccard(a, b) for a, b in pairs])),
    }
    pool: dict[frozenset[str], int] = {}
    for _, theirs in pairs:
        pool[theirs] = pool.get(theirs, 0) + 1
    shuffled, weight = 0.0, 0
    for sid, refs in own.items():
        others = len(pairs) - len(refs)
        if others:  # share of the other studies' references that agree, weighted by k
            mine = positive_findings(study_labels[sid])
            agree = pool.get(mine, 0) - sum(r == mine for r in refs)
            shuffled += len(refs) * agree / others
            weight += len(refs)
    if weight:
        out["diag/retrieval_label_precision/shuffled"] = shuffled / weight
    return out


# ----------------------------------------------------------------------------- a whole run
@dataclass
class RunDiagnostics:
    """What :func:`run_diagnostics` measured on one split of a finished run."""

    split: str
    values: dict[str, float]  # diag/... -> value (finding AUROC, gate, alignment, retrieval)
    permuted_rows: list[dict[str, Any]]  # prediction rows with permuted images (to be scored)
    finding_sentences: FindingSentences | None = None  # what finding AUROC scored


def _label_texts(labeler: Any, texts: Mapping[str, str]) -> dict[str, dict]:
    unique = sorted(set(texts.values()))
    labelled = dict(zip(unique, labeler.label(unique), strict=True))
    return {key: dict(labelled[text]) for key, text in texts.items()}


def run_diagnostics(
    run_dir: str | Path,
    split: str = "test",
    *,
    labeler: Any,
    context: str | None = None,
    progress: bool = False,
    cache_root: Path | None = None,
    dist: Dist | None = None,
) -> RunDiagnostics:
    """Every diagnostic of a finished run on ``split`` (one model load).

    ``labeler`` (``label(texts) -> CheXpert labels``, the run's ``eval.labeler``) labels the
    split's reference reports, the retrieved train reports and the train sentences that finding
    AUROC scores (chosen once per train split and labeler, cached under ``cache_root/eval``, and
    written to the run folder as :data:`FINDING_SENTENCES_FILE`). ``context`` is the inference
    context of the predictions being diagnosed (default: the run's own). The permuted-image
    predictions are returned unscored: they are scored like the real ones by the caller.
    """
    from s2d_align.inference.generate import generate_loaded, load_run
    from s2d_align.training.cache import resolve_cache_root
    from s2d_align.training.data import load_run_annotation
    from s2d_align.training.distributed import torch_threads
    from s2d_align.training.run_dir import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    cache_root = resolve_cache_root(cache_root)
    with torch_threads(cfg.train.num_threads):
        run = load_run(run_dir, dist=dist, cache_root=cache_root)
        permuted = generate_loaded(
            run,
            split,
            context=context,
            progress=progress,
            cache_root=cache_root,
            permute_images=True,
        )
        annotation = load_run_annotation(cfg, cache_root)
        studies = annotation.split(split)
        train_reports = [s.report for s in annotation.split("train")]
        chosen, scores = _run_finding_scores(
            run, studies, train_reports, labeler=labeler, cache_root=cache_root, progress=progress
        )
        head = _keyphrase_head_values(run, split, cache_root)
    study_labels = _label_texts(labeler, {s.id: s.report for s in studies})
    values = finding_auroc(scores, [study_labels[s.id] for s in studies])
    values.update(head)  # key-phrase head: macro AUROC over phrases, micro F1 at val thresholds
    values.update(_train_log_values(run))
    values.update(_retrieval_values(run_dir, split, labeler, study_labels))
    return RunDiagnostics(
        split=split, values=values, permuted_rows=permuted, finding_sentences=chosen
    )


def _run_finding_scores(
    run: Any,
    studies: Sequence[Study],
    train_reports: Sequence[str],
    *,
    labeler: Any,
    cache_root: Path,
    progress: bool,
) -> tuple[FindingSentences, np.ndarray]:
    """The finding sentences chosen from ``train_reports`` (written to the run folder) and the
    per-observation finding scores of ``studies`` (:func:`finding_scores`)."""
    from s2d_align.training.data import StudyDataset
    from s2d_align.utils.io import write_json

    cfg = run.cfg
    dataset = StudyDataset(studies, image_size=cfg.data.image_size, max_views=cfg.data.max_views)
    chosen = train_finding_sentences(train_reports, labeler, cache_dir=cache_root / "eval")
    if run.dist.is_main:
        write_json(run.run_dir / FINDING_SENTENCES_FILE, chosen.to_dict())
    sentence_scores = finding_scores(
        run.model,
        dataset,
        run.builder,
        dist=run.dist,
        batch_size=cfg.inference.batch_size,
        sentences=chosen.sentences(),
        autocast=run.autocast,
        progress=progress,
    )
    return chosen, chosen.contrast(sentence_scores)


def _keyphrase_head_values(run: Any, split: str, cache_root: Path) -> dict[str, float]:
    """``diag/keyphrase_auroc`` and ``diag/keyphrase_f1`` (none without a trained head)."""
    head: dict[str, float] = {}
    if run.vocab and any(s.lambda_kp > 0 for s in run.cfg.stages):
        from s2d_align.inference.keyphrase_eval import evaluate_keyphrase_head

        metrics = evaluate_keyphrase_head(run, split, cache_root=cache_root)
        if metrics["macro_auroc"] is not None:
            head["diag/keyphrase_auroc"] = float(metrics["macro_auroc"])
        head["diag/keyphrase_f1"] = float(metrics["micro_f1"])
    return head


def _train_log_values(run: Any) -> dict[str, float]:
    """:func:`train_log_diagnostics` of the run's training log, and the loaded memory gate when
    the log has none for the last stage."""
    from s2d_align.training.loop import LOG_FILE
    from s2d_align.training.run_dir import RESULT_FILE
    from s2d_align.utils.io import read_json, read_jsonl

    cfg = run.cfg
    log_path = run.run_dir / LOG_FILE
    result = read_json(run.run_dir / RESULT_FILE)
    processes = max(1, int(result.get("processes") or 1))
    log_rows = read_jsonl(log_path) if log_path.is_file() else []
    values = train_log_diagnostics(log_rows, batch_size=math.ceil(cfg.train.batch_size / processes))
    memory = getattr(run.model, "memory", None)
    last_stage = cfg.stages[-1].name
    if memory is not None and memory.gate is not None and f"diag/gate/{last_stage}" not in values:
        # A log written before the loop recorded the gate: the loaded model holds its final value.
        values[f"diag/gate/{last_stage}"] = float(memory.gate_factor().detach())
    return values


def _retrieval_values(
    run_dir: Path, split: str, labeler: Any, study_labels: Mapping[str, Mapping[str, int | None]]
) -> dict[str, float]:
    """:func:`retrieval_label_precision` of the references retrieved for ``split`` (none when
    the run folder has no retrieval index)."""
    from s2d_align.training.retrieval import RETRIEVAL_DIR, load_neighbours
    from s2d_align.utils.io import read_json

    folder = run_dir / RETRIEVAL_DIR
    if not ((folder / "neighbours.json").is_file() and (folder / "index.json").is_file()):
        return {}
    neighbours = load_neighbours(folder).get(split)
    if not neighbours:
        return {}
    index = read_json(folder / "index.json")
    reports = dict(zip(index["ids"], index["reports"], strict=True))
    wanted = {r for refs in neighbours.values() for r in refs}
    missing = sorted(wanted - set(reports))
    if missing:
        raise DataError(f"{folder}: neighbours name train ids not in the index: {missing[:5]}")
    ref_labels = _label_texts(labeler, {r: reports[r] for r in wanted})
    return retrieval_label_precision(neighbours, study_labels, ref_labels)
