"""CE matrix on hand-computed label sets, the empty-set convention, and sklearn agreement."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from s2d_align.chexpert import FIVE_OBSERVATIONS, OBSERVATIONS
from s2d_align.errors import ConfigError, DataError
from s2d_align.evaluation.ce import (
    binarize,
    ce_cell_names,
    ce_matrix,
    parse_headline,
    per_observation_f1,
)


def labels(**values: int | None) -> dict[str, int | None]:
    """All 14 observations blank except the given ones (underscores for spaces)."""
    out: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    for key, value in values.items():
        out[key.replace("_", " ")] = value
    return out


# Four reports; the expected numbers below were worked out by hand (see each test).
REFS = [
    labels(Cardiomegaly=1, Pleural_Effusion=1),
    labels(No_Finding=1, Pneumothorax=0),
    labels(Atelectasis=-1, Lung_Opacity=1),
    labels(),  # all blank: a normal report without findings
]
PREDS = [
    labels(Cardiomegaly=1, Edema=1),
    labels(No_Finding=1),
    labels(Atelectasis=1, Lung_Opacity=None),
    labels(Pneumothorax=0),  # all negative: correct for the blank reference
]


@pytest.fixture(scope="module")
def matrix() -> dict[str, float]:
    return ce_matrix(PREDS, REFS)


def test_matrix_has_all_36_cells(matrix):
    assert list(matrix) == ce_cell_names()
    assert len(matrix) == 2 * 2 * 3 * 3


def test_micro_u0_14(matrix):
    # TP: Cardiomegaly (r1), No Finding (r2); FP: Edema (r1), Atelectasis (r3, ref -1 -> 0);
    # FN: Pleural Effusion (r1), Lung Opacity (r3)
    assert matrix["ce/u0/14/micro/p"] == pytest.approx(2 / 4)
    assert matrix["ce/u0/14/micro/r"] == pytest.approx(2 / 4)
    assert matrix["ce/u0/14/micro/f1"] == pytest.approx(0.5)


def test_micro_u1_counts_the_uncertain_reference_as_positive(matrix):
    # Atelectasis (r3) turns from FP into TP: TP 3, FP 1, FN 2
    assert matrix["ce/u1/14/micro/p"] == pytest.approx(3 / 4)
    assert matrix["ce/u1/14/micro/r"] == pytest.approx(3 / 5)
    assert matrix["ce/u1/14/micro/f1"] == pytest.approx(6 / 9)


def test_macro_averages_over_all_observations_absent_ones_count_zero(matrix):
    # u0: Cardiomegaly and No Finding have F1 1, the 12 others 0 (zero division -> 0)
    for stat in ("p", "r", "f1"):
        assert matrix[f"ce/u0/14/macro/{stat}"] == pytest.approx(2 / 14)
        assert matrix[f"ce/u1/14/macro/{stat}"] == pytest.approx(3 / 14)  # + Atelectasis


def test_example_based_with_an_all_negative_correct_report(matrix):
    # per report P/R/F1 (u0): r1 .5/.5/.5, r2 1/1/1, r3 0/0/0, r4 (nothing on both sides) 1/1/1
    for stat in ("p", "r", "f1"):
        assert matrix[f"ce/u0/14/example/{stat}"] == pytest.approx(2.5 / 4)
    # u1: r3 becomes P 1, R 1/2, F1 2/3
    assert matrix["ce/u1/14/example/p"] == pytest.approx(3.5 / 4)
    assert matrix["ce/u1/14/example/r"] == pytest.approx(3.0 / 4)
    assert matrix["ce/u1/14/example/f1"] == pytest.approx((0.5 + 1 + 2 / 3 + 1) / 4)


def test_five_label_set(matrix):
    # r1: TP Cardiomegaly, FP Edema, FN Pleural Effusion; r3: FP Atelectasis (u0); r2, r4 empty
    assert matrix["ce/u0/5/micro/p"] == pytest.approx(1 / 3)
    assert matrix["ce/u0/5/micro/r"] == pytest.approx(1 / 2)
    assert matrix["ce/u0/5/micro/f1"] == pytest.approx(2 / 5)
    assert matrix["ce/u0/5/macro/f1"] == pytest.approx(1 / 5)
    # example: r1 .5, r2 (No Finding is not in the 5) empty on both sides 1, r3 predicts a
    # positive the reference lacks 0, r4 1
    assert matrix["ce/u0/5/example/f1"] == pytest.approx(2.5 / 4)
    assert matrix["ce/u1/5/micro/f1"] == pytest.approx(2 / 3)
    assert matrix["ce/u1/5/example/f1"] == pytest.approx(3.5 / 4)


def test_a_single_all_negative_correct_report():
    ref = [labels(Pneumothorax=0, Pleural_Effusion=0)]
    pred = [labels()]
    m = ce_matrix(pred, ref)
    assert m["ce/u0/14/example/f1"] == 1.0  # entirely right
    assert m["ce/u0/14/example/p"] == 1.0 and m["ce/u0/14/example/r"] == 1.0
    assert m["ce/u0/14/micro/f1"] == 0.0  # no positive decision anywhere: 0/0 -> 0


def test_missing_every_positive_scores_zero_per_report():
    m = ce_matrix([labels()], [labels(Edema=1)])
    assert m["ce/u0/14/example/p"] == 0.0
    assert m["ce/u0/14/example/f1"] == 0.0


def test_per_observation_f1():
    f1 = per_observation_f1(PREDS, REFS, "u0")
    assert list(f1) == list(OBSERVATIONS)
    assert f1["Cardiomegaly"] == 1.0 and f1["No Finding"] == 1.0
    assert f1["Atelectasis"] == 0.0 and f1["Edema"] == 0.0
    assert per_observation_f1(PREDS, REFS, "u1")["Atelectasis"] == 1.0


@pytest.mark.parametrize("mapping", ["u0", "u1"])
def test_micro_and_macro_agree_with_sklearn_on_random_labels(mapping):
    rng = np.random.default_rng(7)
    values = [1, 0, -1, None]
    preds = [{o: values[rng.integers(4)] for o in OBSERVATIONS} for _ in range(60)]
    refs = [{o: values[rng.integers(4)] for o in OBSERVATIONS} for _ in range(60)]
    m = ce_matrix(preds, refs)
    for name, observations in (("14", OBSERVATIONS), ("5", FIVE_OBSERVATIONS)):
        cols = [OBSERVATIONS.index(o) for o in observations]
        y_pred = binarize(preds, mapping)[:, cols]
        y_true = binarize(refs, mapping)[:, cols]
        for average in ("micro", "macro"):
            p, r, f1, _ = precision_recall_fscore_support(
                y_true, y_pred, average=average, zero_division=0
            )
            assert m[f"ce/{mapping}/{name}/{average}/p"] == pytest.approx(p)
            assert m[f"ce/{mapping}/{name}/{average}/r"] == pytest.approx(r)
            assert m[f"ce/{mapping}/{name}/{average}/f1"] == pytest.approx(f1)


def test_binarize_mappings_and_blank():
    row = [labels(Edema=-1, Cardiomegaly=1, Pneumothorax=0)]
    idx = {o: i for i, o in enumerate(OBSERVATIONS)}
    u0, u1 = binarize(row, "u0")[0], binarize(row, "u1")[0]
    assert u0[idx["Edema"]] == 0 and u1[idx["Edema"]] == 1
    assert u0[idx["Cardiomegaly"]] == u1[idx["Cardiomegaly"]] == 1
    assert u0.sum() == 1 and u1.sum() == 2  # blanks and negatives are 0


@pytest.mark.parametrize("bad", [2, "1", True, 0.5])
def test_bad_label_values_name_the_row(bad):
    with pytest.raises(DataError, match=r"labels\[1\]: Edema"):
        binarize([labels(), labels(Edema=bad)], "u0")


def test_unknown_observation_is_an_error():
    with pytest.raises(DataError, match="Lung Nodule"):
        binarize([{"Lung Nodule": 1}], "u0")


def test_headline_parsing():
    assert parse_headline("u0/14/micro/f1") == ("u0", "14", "micro", "f1")
    assert parse_headline("ce/u1/5/example/p") == ("u1", "5", "example", "p")
    with pytest.raises(ConfigError, match="mapping/labels/average/metric"):
        parse_headline("u2/14/micro/f1")
    with pytest.raises(ConfigError):
        parse_headline("u0/14/weighted/f1")
