"""Reference retrieval: train split only, never the query's own study or patient in training."""

from __future__ import annotations

import pytest
import torch
from training_fixtures import cache_root, shared_run, tiny_config

from s2d_align.config.schema import RetrievalConfig
from s2d_align.data.r2gen import Study
from s2d_align.training.data import StudyDataset, load_run_annotation
from s2d_align.training.retrieval import RetrievalIndex, build_references, load_neighbours


def _index(n: int = 6) -> RetrievalIndex:
    # Patients: p0 owns t0, t1; p1 owns t2, t3; p2 owns t4, t5. Embeddings along two axes so that
    # each study's nearest neighbour is its own patient's other study.
    emb = torch.tensor([[1, 0.0], [1, 0.1], [0.7, 0.7], [0.6, 0.8], [0, 1.0], [0.1, 1.0]])
    return RetrievalIndex(
        ids=[f"t{i}" for i in range(n)],
        subjects=[f"p{i // 2}" for i in range(n)],
        reports=[f"report {i}" for i in range(n)],
        embeddings=torch.nn.functional.normalize(emb[:n], dim=-1),
    )


def test_train_query_never_returns_its_own_study_or_patient():
    index = _index()
    hits = index.query(index.embeddings, k=2, query_ids=index.ids, query_subjects=index.subjects)
    for sid, subject, found in zip(index.ids, index.subjects, hits, strict=True):
        assert len(found) == 2
        assert sid not in found
        assert all(index.subjects[index.ids.index(h)] != subject for h in found)


def test_without_patient_exclusion_the_same_patient_is_the_best_match():
    index = _index()
    hits = index.query(index.embeddings, k=1, query_ids=index.ids)
    assert hits[0] == ["t1"] and hits[1] == ["t0"]  # own study excluded, sibling study found


def test_val_and_test_queries_read_the_train_index_ranked_by_cosine():
    index = _index()
    query = torch.tensor([[0.0, 2.0], [3.0, 0.05]])  # unnormalised on purpose
    hits = index.query(query, k=3)
    assert hits[0][:2] == ["t4", "t5"] and hits[1][0] in ("t0", "t1")
    assert all(h in index.ids for row in hits for h in row)


def test_exclusions_can_leave_fewer_than_k():
    index = _index(2)  # both studies belong to p0
    hits = index.query(index.embeddings, k=1, query_ids=index.ids, query_subjects=index.subjects)
    assert hits == [[], []]


def test_index_round_trips_through_files(tmp_path):
    index = _index()
    index.save(tmp_path)
    back = RetrievalIndex.load(tmp_path)
    assert back.ids == index.ids and back.subjects == index.subjects
    assert torch.equal(back.embeddings, index.embeddings)


def test_references_read_back_from_the_folder_join_the_k_reports_of_one_split(tmp_path):
    from s2d_align.errors import DataError
    from s2d_align.training.retrieval import load_references, reference_texts, save_neighbours

    index = _index()
    neighbours = {"train": {"t0": ["t2", "t4"]}, "test": {"x": ["t5"]}}
    index.save(tmp_path)
    save_neighbours(tmp_path, neighbours)
    test = load_references(tmp_path, "test")
    assert dict(test) == {"x": "report 5"} and test.ids("x") == ["t5"]
    every = load_references(tmp_path)
    assert every["t0"] == "report 2 report 4"  # k=2: both reports, best first
    assert dict(every) == dict(reference_texts(index, neighbours))  # as the run built them
    with pytest.raises(DataError, match="no retrieved references for split 'val'"):
        load_references(tmp_path, "val")
    with pytest.raises(KeyError, match="no retrieved reference for study 'nope'"):
        every["nope"]


class _MeanPixelEncoder(torch.nn.Module):
    """Stands in for S2DModel.encode_images: pooled embedding = coarse image statistics."""

    def encode_images(self, pixel_values, view_mask):
        pooled = torch.nn.functional.avg_pool2d(pixel_values[:, 0], 8).flatten(1)
        return None, pooled


def test_build_references_on_synthcxr_respects_splits_and_patients(tmp_path_factory):
    cfg = tiny_config()
    ann = load_run_annotation(cfg, cache_root(tmp_path_factory))
    datasets = {
        s: StudyDataset(ann.split(s), image_size=cfg.data.image_size, max_views=1)
        for s in ("train", "val", "test")
    }
    index, neighbours = build_references(
        _MeanPixelEncoder(), datasets, RetrievalConfig(k=2), device=torch.device("cpu")
    )
    _check_neighbours(ann, neighbours, k=2)
    assert index.ids == [s.id for s in ann.split("train")]


def _check_neighbours(ann, neighbours, k):
    train = {s.id: s for s in ann.split("train")}
    subjects_in_train = {s.subject_id for s in train.values()}
    assert len(subjects_in_train) < len(train), "SynthCXR should have several studies per patient"
    for split in ("train", "val", "test"):
        studies: list[Study] = ann.split(split)
        assert set(neighbours[split]) == {s.id for s in studies}
        for study in studies:
            found = neighbours[split][study.id]
            assert 1 <= len(found) <= k
            assert all(h in train for h in found), f"{split} study {study.id} got a non-train id"
            if split == "train":
                assert study.id not in found
                assert all(train[h].subject_id != study.subject_id for h in found)


@pytest.mark.slow
def test_a_trained_run_stores_leak_free_neighbours(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    cfg = tiny_config()
    ann = load_run_annotation(cfg, cache_root(tmp_path_factory))
    _check_neighbours(ann, load_neighbours(run / "retrieval"), k=cfg.retrieval.k)
