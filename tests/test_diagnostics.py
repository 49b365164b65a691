"""Per-run diagnostics: permuted images, finding AUROC, gate and alignment from the train log,
retrieval label precision, and how the harness records and reports them."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import harness_fakes as fakes
import numpy as np
import pytest
import torch

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.data.r2gen import Study
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.labelers.rules import RulesLabeler
from s2d_align.inference.diagnostics import (
    FINDING_SENTENCES,
    FINDING_SENTENCES_FILE,
    derangement,
    finding_auroc,
    higher_is_better,
    permute_images,
    retrieval_label_precision,
    sentence_log_likelihoods,
    train_log_diagnostics,
)
from s2d_align.inference.finding_sentences import (
    FindingSentences,
    select_finding_sentences,
    train_finding_sentences,
)
from s2d_align.training.data import Item


# ----------------------------------------------------------------------------- permutation
@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_derangement_moves_every_study_and_is_fixed_by_its_seed(n):
    order = derangement(n)
    assert sorted(order.tolist()) == list(range(n))
    assert not np.any(order == np.arange(n))
    assert np.array_equal(order, derangement(n))  # same swap for every run of a grid
    with pytest.raises(DataError, match="at least 2 studies"):
        derangement(1)


class _Images:
    """A StudyDataset stand-in: study i's pixels are all equal to i."""

    def __init__(self, n: int) -> None:
        self.studies = [
            Study(id=f"t{i}", report=f"r{i}", image_paths=(), split="test") for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, key):
        index = key if isinstance(key, int) else key[0]
        pixels = np.full((1, 4, 4), index, dtype=np.uint8)
        return Item(index, self.studies[index], pixels, 1 + index % 2)


def test_permuted_dataset_moves_only_the_pixels():
    base = _Images(6)
    shown = permute_images(base)
    assert shown.studies == base.studies
    for i in range(len(base)):
        item = shown[i]
        donor = int(item.pixels[0, 0, 0])
        assert item.study.id == f"t{i}" and item.index == i  # the study (prompt, report) stays
        assert donor != i and shown.image_ids[i] == f"t{donor}"
        assert item.n_views == 1 + donor % 2  # the view count travels with the image
    assert sorted(shown.image_ids) == sorted(s.id for s in base.studies)


class _PixelEcho(torch.nn.Module):
    """A 'model' whose report is a function of its image alone."""

    keyphrase_vocab = ()

    def generate(self, batch, *, max_new_tokens, num_beams=1):
        return [f"{float(p.mean()):.6f}" for p in batch["pixel_values"]]


@pytest.mark.slow
def test_permuted_generation_shows_each_study_another_studys_image(tmp_path_factory):
    from training_fixtures import cache_root, shared_run

    from s2d_align.inference.generate import generate_loaded, load_run

    cache = cache_root(tmp_path_factory)
    run = load_run(shared_run(tmp_path_factory), cache_root=cache)
    run.model = _PixelEcho()  # the run's data, prompts and batching; a pixel-driven "model"
    real = generate_loaded(run, "test", context="image", progress=False, cache_root=cache)
    moved = generate_loaded(
        run, "test", context="image", progress=False, cache_root=cache, permute_images=True
    )
    assert [r["id"] for r in moved] == [r["id"] for r in real]
    by_id = {r["id"]: r["prediction"] for r in real}
    assert len(set(by_id.values())) > 1  # the echo really depends on the pixels
    for row in moved:
        assert row["image_id"] != row["id"]
        assert row["prediction"] == by_id[row["image_id"]]  # exactly the donor's image
    assert sum(r["prediction"] != by_id[r["id"]] for r in moved) > 0


# ----------------------------------------------------------------------------- finding AUROC
def test_every_finding_sentence_states_its_observation():
    labels = RulesLabeler().label(list(FINDING_SENTENCES.values()))
    assert tuple(FINDING_SENTENCES) == OBSERVATIONS
    for (obs, sentence), row in zip(FINDING_SENTENCES.items(), labels, strict=True):
        assert row.get(obs) == 1, sentence


def _random_labels(rng: np.random.Generator, n: int) -> list[dict]:
    values = [1, 0, -1, None]
    return [
        {o: values[int(rng.integers(4))] for o in OBSERVATIONS if rng.random() < 0.7}
        for _ in range(n)
    ]


def test_finding_auroc_equals_sklearn_with_ties_and_skips_one_class_observations():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = _random_labels(rng, 40)
    for row in labels:  # Fracture: never positive -> undefined, left out
        row["Fracture"] = 0
    scores = np.round(rng.normal(size=(40, len(OBSERVATIONS))), 1)  # rounding makes ties
    out = finding_auroc(scores, labels)
    per_obs = []
    for k, obs in enumerate(OBSERVATIONS):
        y = np.array([row.get(obs) == 1 for row in labels])  # u0: uncertain is not positive
        if obs == "Fracture":
            assert f"diag/finding_auroc/{obs}" not in out
            continue
        expected = roc_auc_score(y, scores[:, k])
        assert out[f"diag/finding_auroc/{obs}"] == pytest.approx(expected, abs=1e-12)
        per_obs.append(expected)
    assert out["diag/finding_auroc"] == pytest.approx(np.mean(per_obs), abs=1e-12)


def test_an_image_blind_score_has_auroc_one_half():
    labels = _random_labels(np.random.default_rng(0), 30)
    out = finding_auroc(np.full((30, len(OBSERVATIONS)), -2.5), labels)
    assert out and all(v == 0.5 for v in out.values())
    assert finding_auroc(np.zeros((2, 14)), [{}, {}]) == {}  # nothing positive: nothing to rank
    with pytest.raises(ValueError, match="expected \\(3 studies, 14 observations\\)"):
        finding_auroc(np.zeros((2, 14)), [{}, {}, {}])


def test_sentence_scores_are_the_models_own_lm_loss_on_the_sentence(tmp_path):
    from model_fixtures import build, make_tokenizer
    from model_fixtures import tiny_config as model_config

    from s2d_align.training.collate import Collator, ContextStore, StageContext
    from s2d_align.training.prompts import PromptBuilder

    tokenizer = make_tokenizer(tmp_path)
    cfg = model_config()
    model = build(cfg, tokenizer).eval()
    builder = PromptBuilder(tokenizer, cfg.prompt, cfg.model.llm.max_length)
    rng = np.random.default_rng(1)
    items = [
        Item(i, Study(id=f"s{i}", report="", image_paths=(), split="test"),
             rng.integers(0, 255, (2, 32, 32), dtype=np.uint8), 1 + i % 2)
        for i in range(3)
    ]  # fmt: skip
    batch = Collator(builder, ContextStore(), [StageContext()], generate=True)(items)
    sentences = ["The heart is enlarged.", "There is a pleural effusion."]
    targets = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    with torch.no_grad():
        scores = sentence_log_likelihoods(model, batch, targets)
        assert scores.shape == (3, 2)
        for i in range(3):
            prompt = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            for k, target in enumerate(targets):
                row = {
                    "pixel_values": batch["pixel_values"][i : i + 1],
                    "view_mask": batch["view_mask"][i : i + 1],
                    "input_ids": torch.tensor([prompt + target]),
                    "attention_mask": torch.ones(1, len(prompt) + len(target), dtype=torch.long),
                    "labels": torch.tensor([[-100] * len(prompt) + target]),
                }
                loss = float(model(row).losses["lm"])
                assert float(scores[i, k]) == pytest.approx(-loss, abs=1e-4)
    assert not torch.allclose(scores[0], scores[1])  # the image changes the likelihood


# The labels a labeler might give each sentence (No Finding = 1 beside Support Devices only,
# as CheXpert sets it).
_TOY_LABELS = {
    "Large effusion": {"Pleural Effusion": 1},
    "Bilateral effusions": {"Pleural Effusion": 1},
    "Small effusion": {"Pleural Effusion": 1},
    "Effusion and edema": {"Pleural Effusion": 1, "Edema": 1},
    "Edema without effusion": {"Edema": 1, "Pleural Effusion": 0},
    "Central line in place": {"Support Devices": 1, "No Finding": 1},
    "No effusion": {"Pleural Effusion": 0, "No Finding": 1},
    "No effusion or pneumothorax": {"Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1},
    "No pneumothorax": {"Pneumothorax": 0, "No Finding": 1},
    "Heart normal": {"Cardiomegaly": 0, "No Finding": 1},
}
_TOY_COUNTS = {
    "Large effusion": 9,
    "Bilateral effusions": 5,  # ties with "Small effusion": text order decides
    "Small effusion": 5,
    "Effusion and edema": 50,  # the commonest effusion sentence, but it also states edema
    "Edema without effusion": 40,  # states edema: no negative for effusion
    "Central line in place": 7,
    "No effusion": 20,
    "No effusion or pneumothorax": 30,
    "No pneumothorax": 10,
    "Heart normal": 25,
}


def test_finding_sentences_are_the_commonest_that_state_one_observation():
    chosen = select_finding_sentences(_TOY_COUNTS, _TOY_LABELS, k=2)
    assert chosen.positive["Pleural Effusion"] == ("Large effusion", "Bilateral effusions")
    assert chosen.negative["Pleural Effusion"] == ("No effusion or pneumothorax", "No effusion")
    assert chosen.positive["Edema"] == ("Edema without effusion",)  # alone among positives
    assert chosen.negative["Edema"] == ()
    assert chosen.positive["Support Devices"] == ("Central line in place",)  # No Finding aside
    # No Finding: normal sentences only (the line states a device); k caps it at two
    assert chosen.positive["No Finding"] == ("No effusion or pneumothorax", "Heart normal")
    assert chosen.negative["Cardiomegaly"] == ("Heart normal",)
    # no sentence states a pneumothorax: the fixed sentence, in the splitter's form
    assert chosen.positive["Pneumothorax"] == ("There is a pneumothorax",)
    assert chosen.negative["Pneumothorax"] == ("No effusion or pneumothorax", "No pneumothorax")
    assert set(chosen.fallback) == set(OBSERVATIONS) - {
        "Pleural Effusion", "Edema", "Support Devices", "No Finding"
    }  # fmt: skip
    assert chosen.counts["Large effusion"] == 9 and chosen.counts["There is a pneumothorax"] == 0
    wider = select_finding_sentences(_TOY_COUNTS, _TOY_LABELS, k=3)
    assert wider.positive["Pleural Effusion"][2] == "Small effusion"
    with pytest.raises(DataError, match="no labels for 1 sentence"):
        select_finding_sentences({**_TOY_COUNTS, "Unlabelled": 1}, _TOY_LABELS)
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_finding_sentences(_TOY_COUNTS, _TOY_LABELS, k=0)


def test_finding_score_is_the_positive_mean_minus_the_negative_mean():
    chosen = select_finding_sentences(_TOY_COUNTS, _TOY_LABELS, k=2)
    sentences = chosen.sentences()
    assert len(sentences) == len(set(sentences))  # each scored once, shared between sets
    rng = np.random.default_rng(0)
    ll = rng.normal(size=(4, len(sentences)))
    col = {s: ll[:, i] for i, s in enumerate(sentences)}
    scores = chosen.contrast(ll)
    assert scores.shape == (4, len(OBSERVATIONS))
    effusion = OBSERVATIONS.index("Pleural Effusion")
    expected = (col["Large effusion"] + col["Bilateral effusions"]) / 2 - (
        col["No effusion or pneumothorax"] + col["No effusion"]
    ) / 2
    np.testing.assert_allclose(scores[:, effusion], expected)
    # never negated: the positive mean minus the mean of every other negative sentence
    negatives = sorted({s for obs in OBSERVATIONS for s in chosen.negative[obs]})
    assert negatives and not chosen.negative["Edema"]
    baseline = np.mean([col[s] for s in negatives], axis=0)
    edema = OBSERVATIONS.index("Edema")
    np.testing.assert_allclose(scores[:, edema], col["Edema without effusion"] - baseline)
    with pytest.raises(ValueError, match="expected \\(studies, "):
        chosen.contrast(ll[:, :-1])
    assert FindingSentences.from_dict(chosen.to_dict()) == chosen


class _ToyLabeler:
    """Keyword labels; counts what it was asked to label."""

    def __init__(self, signature: str = "toy-1") -> None:
        self.signature = signature
        self.seen: list[str] = []

    def label(self, texts):
        self.seen.extend(texts)
        return [_TOY_LABELS.get(t, {"No Finding": 1}) for t in texts]


def test_train_sentences_are_labelled_once_and_cached(tmp_path):
    reports = [
        "Large effusion. No pneumothorax.",
        "Large effusion. Edema without effusion.",
        "Heart normal. No effusion. No pneumothorax.",
        "Central line in place. Heart normal.",
    ]
    labeler = _ToyLabeler()
    chosen = train_finding_sentences(reports, labeler, cache_dir=tmp_path)
    assert sorted(labeler.seen) == sorted(set(labeler.seen))  # each distinct sentence once
    assert "Large effusion" in labeler.seen and "Large effusion." not in labeler.seen
    assert chosen.positive["Pleural Effusion"] == ("Large effusion",)
    assert chosen.counts["Large effusion"] == 2 and chosen.labeler == "toy-1"
    (entry,) = tmp_path.glob("finding-sentences-*.json")
    again = _ToyLabeler()  # the same reports in another order: read from the cache
    assert train_finding_sentences(reports[::-1], again, cache_dir=tmp_path) == chosen
    assert again.seen == []
    other = _ToyLabeler("toy-2")  # another labeler labels again
    assert train_finding_sentences(reports, other, cache_dir=tmp_path).labeler == "toy-2"
    assert other.seen
    entry.write_text("{not json")  # a damaged entry is recomputed, not trusted
    assert train_finding_sentences(reports, _ToyLabeler(), cache_dir=tmp_path) == chosen
    assert FindingSentences.from_dict(json.loads(entry.read_text())) == chosen


def test_cached_sentence_scores_equal_the_full_passes(tmp_path):
    """One image + prompt pass and its KV cache give each row's own likelihoods, with rows
    left-padded by both their view count and their prompt length."""
    from model_fixtures import build, make_tokenizer
    from model_fixtures import tiny_config as model_config

    from s2d_align.training.collate import Collator, ContextStore, StageContext
    from s2d_align.training.prompts import PromptBuilder
    from s2d_align.training.retrieval import ReferenceTexts

    tokenizer = make_tokenizer(tmp_path)
    cfg = model_config(memory=False)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, llm=dataclasses.replace(cfg.model.llm, num_layers=2, max_length=96)
        ),
    )
    model = build(cfg, tokenizer).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights: sharp attention and logits, so that a wrong
        for param in model.llm.parameters():  # position or mask shows in the scores
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    builder = PromptBuilder(tokenizer, cfg.prompt, cfg.model.llm.max_length)
    rng = np.random.default_rng(2)
    refs = ["Normal.", "The heart is enlarged. Small left pleural effusion.", "No pneumothorax."]
    items = [
        Item(i, Study(id=f"s{i}", report="", image_paths=(), split="test"),
             rng.integers(0, 255, (2, 32, 32), dtype=np.uint8), 1 + i % 2)
        for i in range(3)
    ]  # fmt: skip
    references = ReferenceTexts(
        {f"s{i}": [f"r{i}"] for i in range(3)}, {f"r{i}": text for i, text in enumerate(refs)}
    )
    store = ContextStore(values={"reference": references})
    batch = Collator(builder, store, [StageContext(signals=("reference",))], generate=True)(items)
    assert not batch["attention_mask"].bool().all()  # prompts of different lengths
    sentences = ["The heart is enlarged", "Small left pleural effusion"]
    targets = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    targets.append(targets[0][:1])  # a one-token sentence: read off the prefix pass alone
    with torch.no_grad():
        cached = sentence_log_likelihoods(model, batch, targets)
        full = sentence_log_likelihoods(model, batch, targets, use_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    assert float((full - full.mean(0)).abs().max()) > 1e-2  # rows really differ


# ----------------------------------------------------------------------------- train log
def _log() -> list[dict]:
    rows = []
    for step in range(1, 5):  # stage 1: gate opening, no alignment
        rows.append({"stage": "pair", "step": step, "loss": 3.0, "losses": {"lm": 3.0},
                     "gate": 0.1 * step})  # fmt: skip
    for step in range(5, 20):  # stage 2: alignment loss falling from 2.0 by 0.1 a step
        rows.append({"stage": "reference", "step": step, "loss": 2.0,
                     "losses": {"lm": 2.0, "align": 2.0 - 0.1 * (step - 5)},
                     "gate": 0.5})  # fmt: skip
    rows.append({"stage": "keyphrases", "step": 20, "loss": 1.0,
                 "losses": {"lm": 1.0, "align": 1.5, "kp": 0.3}, "gate": None})  # fmt: skip
    return rows


def test_gate_and_alignment_per_stage_from_the_train_log():
    out = train_log_diagnostics(_log(), batch_size=8)
    assert out["diag/gate/pair"] == pytest.approx(0.4)  # the stage's last value
    assert out["diag/gate/reference"] == 0.5
    assert "diag/gate/keyphrases" not in out  # None: not logged
    last10 = [2.0 - 0.1 * (step - 5) for step in range(10, 20)]
    assert out["diag/align_vs_chance/reference"] == pytest.approx(np.mean(last10) / math.log(8))
    assert out["diag/align_vs_chance/keyphrases"] == pytest.approx(1.5 / math.log(8))
    assert "diag/align_vs_chance/pair" not in out
    no_memory = [{"stage": "pair", "step": 1, "loss": 1.0, "losses": {"lm": 1.0}}]
    assert train_log_diagnostics(no_memory, batch_size=8) == {}
    with pytest.raises(ConfigError, match="no negatives"):
        train_log_diagnostics(_log(), batch_size=1)
    with pytest.raises(DataError, match="row 0: no 'stage'"):
        train_log_diagnostics([{"step": 1}], batch_size=8)


def test_directions_of_the_diagnostics():
    assert higher_is_better("diag/image_dependence")
    assert higher_is_better("diag/finding_auroc/Edema")
    assert not higher_is_better("diag/align_vs_chance/reference")
    assert not higher_is_better("diag/permuted/ce/u0/14/micro/f1")


# ----------------------------------------------------------------------------- retrieval
def test_retrieval_label_precision_on_hand_made_neighbours():
    studies = {
        "a": {"Cardiomegaly": 1},
        "b": {"No Finding": 1},  # normal
        "c": {"Pleural Effusion": 1, "Edema": -1},  # uncertain edema does not count (u0)
    }
    refs = {
        "r1": {"Cardiomegaly": 1, "Support Devices": 0},
        "r2": {"Cardiomegaly": 1, "Edema": 1},
        "r3": {"No Finding": 1},
        "r4": {"Pleural Effusion": 1, "Edema": None},
    }
    neighbours = {"a": ["r1", "r2"], "b": ["r3", "r1"], "c": ["r4", "r3"]}
    out = retrieval_label_precision(neighbours, studies, refs)
    # pairs: a-r1 equal, a-r2 J=1/2, b-r3 both normal, b-r1 J=0, c-r4 equal, c-r3 J=0
    assert out["diag/retrieval_label_precision"] == pytest.approx(3 / 6)
    assert out["diag/retrieval_label_jaccard"] == pytest.approx((1 + 0.5 + 1 + 0 + 1 + 0) / 6)
    # against the other studies' 4 references: a matches r1 (of b) 1/4, b matches r3 (of c)
    # 1/4, c matches none: (2 * 1/4 + 2 * 1/4 + 0) / 6
    assert out["diag/retrieval_label_precision/shuffled"] == pytest.approx(1 / 6)
    with pytest.raises(DataError, match="no labels for reference 'r9'"):
        retrieval_label_precision({"a": ["r9"]}, studies, refs)
    assert retrieval_label_precision({}, studies, refs) == {}


# ----------------------------------------------------------------------------- harness
def _diag_run_fn(spec, run_dir, *, splits, hooks, progress, cache_root=None):
    """The fake run plus diagnostics on test: permuted predictions are the real ones rotated
    by one study (each study gets its neighbour's report)."""
    artifacts = fakes.fake_run_fn(
        spec, run_dir, splits=splits, hooks=hooks, progress=progress, cache_root=cache_root
    )
    if "test" in splits:
        rows = artifacts.predictions["test"]
        texts = [r["prediction"] for r in rows]
        artifacts.permuted_predictions["test"] = [
            {**r, "prediction": texts[(i + 1) % len(rows)]} for i, r in enumerate(rows)
        ]
        artifacts.diagnostics["test"] = {
            "diag/finding_auroc": 0.5 + 0.1 * spec.seed,
            "diag/align_vs_chance/reference": 0.9,
            "diag/gate/pair": 0.2,
        }
    return artifacts


class _FailOnPermuted(fakes.FakeScorer):
    def __init__(self):
        super().__init__()
        self.fail = True

    def score(self, cfg, split, predictions, refs):
        if self.fail and split == "test" and getattr(self, "_seen_test", False):
            self._seen_test = False
            raise RuntimeError("scoring the permuted predictions failed")
        self._seen_test = split == "test"
        return super().score(cfg, split, predictions, refs)


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ntrain: {total_steps: 6}\n")
    return path


def test_runner_records_diagnostics_within_the_one_test_evaluation(tmp_path, preset):
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    store = Store.open(None, tmp_path / "results")
    scorer = fakes.FakeScorer(tmp_path / "score_calls.jsonl")
    runner = Runner(store, tmp_path / "results", run_fn=_diag_run_fn, scorer=scorer, progress=False)
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    assert runner.run_grid(specs).ok
    head = "ce/u0/14/micro/f1"
    for spec in specs:
        metrics = store.metrics(spec.run_id, "test")
        rows = [
            {"id": k, "prediction": v} for k, v in store.predictions(spec.run_id, "test").items()
        ]
        refs = fakes.references("test")  # the permuted score, recomputed without the runner
        texts = [r["prediction"] for r in sorted(rows, key=lambda r: r["id"])]
        ids = sorted(r["id"] for r in rows)
        moved = {sid: texts[(i + 1) % len(ids)] for i, sid in enumerate(ids)}
        expected = fakes.FakeScorer().score(None, "test", moved, refs).report.metrics[head].value
        assert metrics[f"diag/permuted/{head}"].value == pytest.approx(expected)
        assert metrics["diag/image_dependence"].value == pytest.approx(
            metrics[head].value - expected
        )
        assert metrics["diag/image_dependence"].value > 0  # rotated reports lose CE
        assert metrics["diag/finding_auroc"].value == pytest.approx(0.5 + 0.1 * spec.seed)
        assert metrics["diag/image_dependence"].higher_is_better
        assert not metrics[f"diag/permuted/{head}"].higher_is_better
        assert not metrics["diag/align_vs_chance/reference"].higher_is_better
        assert metrics["ROUGE_L"].ci_low is not None  # the scored metrics are all still there
        assert not any(n.startswith("diag/") for n in store.metrics(spec.run_id, "val"))
        assert len(store.test_evaluations(spec.run_id)) == 1  # one logged test evaluation
        assert (
            Path(store.get_run(spec.run_id).run_dir) / "predictions" / "test.permuted.jsonl"
        ).is_file()
    calls = [line for line in (tmp_path / "score_calls.jsonl").read_text().splitlines()]
    assert sum('"test"' in c for c in calls) == 2 * len(specs)  # real + permuted, once each
    assert runner.run_grid(specs).skipped == [s.run_id for s in specs]  # nothing rescored


def test_a_failed_permuted_scoring_records_nothing_of_the_test_split(tmp_path, preset):
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    store = Store.open(None, tmp_path / "results")
    scorer = _FailOnPermuted()
    runner = Runner(store, tmp_path / "results", run_fn=_diag_run_fn, scorer=scorer, progress=False)
    (spec,) = plan_grid(preset, load_variants(["s2d"]), [0])
    with pytest.raises(RuntimeError, match="permuted"):
        runner.run_one(spec)
    assert store.test_evaluations(spec.run_id) == [] and store.metrics(spec.run_id, "test") == {}
    scorer.fail = False
    runner.run_one(spec)  # the lock does not block the retry: no test evaluation was logged
    assert "diag/image_dependence" in store.metrics(spec.run_id, "test")
    assert len(store.test_evaluations(spec.run_id)) == 1


def test_diagnostics_table_shows_mean_and_sd_over_seeds(tmp_path, preset):
    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.reports import preset_report
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    store = Store.open(None, tmp_path / "results")
    runner = Runner(
        store, tmp_path / "results", run_fn=_diag_run_fn, scorer=fakes.FakeScorer(), progress=False
    )
    assert runner.run_grid(plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1, 2])).ok
    written = preset_report(store, "tiny", tmp_path / "reports")
    md = (tmp_path / "reports" / "tiny" / "diagnostics.md").read_text()
    assert tmp_path / "reports" / "tiny" / "diagnostics.md" in written
    # finding AUROC is 0.5 + 0.1 * seed: mean 0.6, sd 0.1 over seeds 0, 1, 2
    sft_line = next(line for line in md.splitlines() if line.startswith("| `sft`"))
    assert "0.600 ± 0.100" in sft_line and sft_line.split(" | ")[1] == "3"
    for name in ("image dep.", "CE permuted", "finding AUROC", "gate pair"):
        assert f"- **{name}**:" in md  # every column is explained
    rows = list(
        csv.DictReader(io.StringIO((tmp_path / "reports" / "tiny" / "diagnostics.csv").read_text()))
    )
    cell = next(r for r in rows if r["variant"] == "s2d" and r["metric"] == "diag/image_dependence")
    values = [
        store.metrics(s.run_id, "test")["diag/image_dependence"].value
        for s in plan_grid(preset, load_variants(["s2d"]), [0, 1, 2])
    ]
    assert float(cell["mean"]) == pytest.approx(np.mean(values), abs=1e-6)
    assert float(cell["sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert cell["n_seeds"] == "3"


# ----------------------------------------------------------------------------- a trained run
@pytest.mark.slow
def test_real_pipeline_returns_the_diagnostics_of_the_test_split(tmp_path_factory):
    from training_fixtures import cache_root, shared_run, tiny_config

    from s2d_align.harness.real_run import train_and_generate
    from s2d_align.harness.spec import NoHooks, RunSpec
    from s2d_align.harness.variants import load_variant

    run_dir = shared_run(tmp_path_factory)
    spec = RunSpec(preset="smoke", variant=load_variant("s2d"), seed=0, config=tiny_config())
    artifacts = train_and_generate(
        spec,
        run_dir,
        splits=("test",),
        hooks=NoHooks(),
        progress=False,
        cache_root=cache_root(tmp_path_factory),
    )
    real, moved = artifacts.predictions["test"], artifacts.permuted_predictions["test"]
    assert [r["id"] for r in moved] == [r["id"] for r in real]
    assert all(r["image_id"] != r["id"] for r in moved)
    assert [r["reference_ids"] for r in moved] == [r["reference_ids"] for r in real]
    values = artifacts.diagnostics["test"]
    aurocs = {k: v for k, v in values.items() if k.startswith("diag/finding_auroc/")}
    assert aurocs and all(0.0 <= v <= 1.0 for v in aurocs.values())
    assert values["diag/finding_auroc"] == pytest.approx(np.mean(list(aurocs.values())))
    # the sentences it scored: the train reports' own, recorded in the run folder
    scored = FindingSentences.from_dict(json.loads((run_dir / FINDING_SENTENCES_FILE).read_text()))
    assert scored.labeler == RulesLabeler.signature and len(scored.fallback) < len(OBSERVATIONS)
    stages = [s.name for s in spec.config.stages]
    assert f"diag/gate/{stages[-1]}" in values and -1.0 < values[f"diag/gate/{stages[-1]}"] < 1.0
    for stage in spec.config.stages:  # every stage with an alignment loss, and only those
        assert (f"diag/align_vs_chance/{stage.name}" in values) == (stage.lambda_align > 0)
    assert 0.0 <= values["diag/retrieval_label_precision"] <= 1.0
    assert 0.0 <= values["diag/retrieval_label_jaccard"] <= 1.0


def test_diagnostics_show_grounded_f1_and_distinct_reports_beside_the_reference_rows(
    tmp_path, preset
):
    from test_harness_references import FakeSource

    from s2d_align.harness.plan import plan_grid
    from s2d_align.harness.reports import diagnostics
    from s2d_align.harness.reports.data import load_preset
    from s2d_align.harness.runner import Runner
    from s2d_align.harness.store import Store
    from s2d_align.harness.variants import load_variants

    class GroundedScorer(fakes.FakeScorer):  # a grounded F1 that depends on the predictions
        def score(self, cfg, split, predictions, refs):
            scored = super().score(cfg, split, predictions, refs)
            hits = np.mean([predictions[s] == refs.reports[s] for s in refs.reports])
            scored.report.metrics["grounded/f1"] = fakes.FakeMetric(0.5 * hits, None, None)
            scored.report.metrics["grounded/ungrounded_f1"] = fakes.FakeMetric(hits, None, None)
            return scored

    store = Store.open(None, tmp_path / "results")
    runner = Runner(store, tmp_path / "results", run_fn=_diag_run_fn, scorer=GroundedScorer(),
                    progress=False, reference_source=FakeSource())  # fmt: skip
    specs = plan_grid(preset, load_variants(["sft", "s2d"]), [0, 1])
    assert runner.run_grid(specs).ok
    table = diagnostics.diagnostics_table(store, load_preset(store, "tiny"))
    # each run's distinct share, read off its stored predictions, averaged over seeds
    for variant in ("sft", "s2d"):
        shares = []
        for spec in specs:
            if spec.variant.name == variant:
                texts = list(store.predictions(spec.run_id, "test").values())
                shares.append(len(set(texts)) / len(texts))
        assert table.rows[variant][diagnostics.DISTINCT].mean == pytest.approx(np.mean(shares))
        assert diagnostics.GROUNDED_F1 in table.rows[variant]
    n = len(fakes.references("test").reports)
    normal, oracle = table.references["ref:all-normal"], table.references["ref:oracle-paraphrase"]
    assert normal[diagnostics.DISTINCT].mean == pytest.approx(1 / n)  # one report for all
    assert oracle[diagnostics.GROUNDED_F1].mean == pytest.approx(0.5)  # the scorer's ceiling
    assert oracle[diagnostics.UNGROUNDED_F1].mean == pytest.approx(1.0)
    assert "diag/finding_auroc" not in normal  # a reference row has no per-run diagnostics
    md = diagnostics.to_markdown(table)
    head = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert head.index("distinct reports") < head.index("grounded F1") < head.index("ungrounded F1")
    for name in ("distinct reports", "grounded F1", "ungrounded F1"):
        assert f"- **{name}**:" in md
    assert "| `ref: all-normal` | - |" in md
    rows = list(csv.DictReader(io.StringIO(diagnostics.to_csv(table))))
    assert {r["metric"] for r in rows if r["variant"] == "ref:all-normal"} == {
        "report/distinct", "grounded/f1", "grounded/ungrounded_f1"
    }  # fmt: skip


def test_distinct_share_counts_exact_texts():
    from s2d_align.harness.reports.diagnostics import distinct_share

    assert distinct_share({"a": "x.", "b": "x. ", "c": "y."}) == pytest.approx(2 / 3)
    assert distinct_share({}) is None
