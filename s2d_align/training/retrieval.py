"""Reference-report retrieval: the top-k train studies by cosine similarity of pooled images.

The index holds the TRAIN split only, so no val or test report can ever reach a prompt. A train
query never gets its own study back, nor (``retrieval.exclude_same_patient``) another study of
its patient: either would hand the model its own findings. Val and test queries read the same
train index with no exclusion. All splits are embedded with the same encoder state (the one that
built the index), and that state is saved beside the index, so new images at inference are
embedded exactly as the index was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from s2d_align.config.schema import RetrievalConfig
from s2d_align.errors import DataError
from s2d_align.training.collate import pixel_batch
from s2d_align.training.data import StudyDataset
from s2d_align.training.prompts import REFERENCE_SEPARATOR
from s2d_align.utils.io import read_json, write_json
from s2d_align.utils.progress import progress_bar

RETRIEVAL_DIR = "retrieval"
_CHUNK = 512  # queries scored at once (bounds the [chunk, N] similarity matrix)


@dataclass
class RetrievalIndex:
    """L2-normalised pooled embeddings of the train studies, with their ids and patients."""

    ids: list[str]
    subjects: list[str | None]
    reports: list[str]
    embeddings: torch.Tensor  # float32 [N, D], unit rows
    encoder: str = "stage1"

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.subjects) == len(self.reports) == self.embeddings.shape[0] == n):
            raise ValueError(
                "retrieval index: ids, subjects, reports and embeddings differ in length"
            )
        self._row = {sid: i for i, sid in enumerate(self.ids)}
        rows: dict[str, list[int]] = {}
        for i, subject in enumerate(self.subjects):
            if subject is not None:
                rows.setdefault(subject, []).append(i)
        self._subject_rows = {s: torch.tensor(r, dtype=torch.long) for s, r in rows.items()}

    def query(
        self,
        embeddings: torch.Tensor,
        k: int,
        *,
        query_ids: Sequence[str] | None = None,
        query_subjects: Sequence[str | None] | None = None,
    ) -> list[list[str]]:
        """Top-``k`` index ids per query row, best first.

        ``query_ids`` / ``query_subjects`` (train queries) exclude the same study / patient.
        Fewer than ``k`` ids come back only when the exclusions leave fewer candidates.
        """
        q = F.normalize(embeddings.float(), dim=-1)
        kk = min(k, len(self.ids))
        out: list[list[str]] = []
        for start in range(0, q.shape[0], _CHUNK):
            scores = q[start : start + _CHUNK] @ self.embeddings.T
            for r in range(scores.shape[0]):
                qi = start + r
                if query_ids is not None and query_ids[qi] in self._row:
                    scores[r, self._row[query_ids[qi]]] = float("-inf")
                if query_subjects is not None and query_subjects[qi] in self._subject_rows:
                    scores[r, self._subject_rows[query_subjects[qi]]] = float("-inf")
            if kk == 0:
                out.extend([] for _ in range(scores.shape[0]))
                continue
            values, rows = scores.topk(kk, dim=1)
            for vals, idx in zip(values.tolist(), rows.tolist(), strict=True):
                out.append(
                    [self.ids[j] for v, j in zip(vals, idx, strict=True) if v != float("-inf")]
                )
        return out

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.contiguous()}, str(folder / "index.safetensors"))
        write_json(
            folder / "index.json",
            {
                "encoder": self.encoder,
                "ids": self.ids,
                "subjects": self.subjects,
                "reports": self.reports,
            },
            indent=None,
        )

    @classmethod
    def load(cls, folder: Path) -> RetrievalIndex:
        from safetensors.torch import load_file

        meta_path, emb_path = folder / "index.json", folder / "index.safetensors"
        if not meta_path.is_file() or not emb_path.is_file():
            raise DataError(f"{folder}: no retrieval index (index.json + index.safetensors)")
        meta = read_json(meta_path)
        emb = load_file(str(emb_path))["embeddings"]
        return cls(
            meta["ids"], meta["subjects"], meta["reports"], emb, meta.get("encoder", "stage1")
        )


@torch.no_grad()
def embed_dataset(
    model: torch.nn.Module,
    dataset: StudyDataset,
    *,
    device: torch.device,
    batch_size: int = 64,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
    desc: str = "embedding",
) -> torch.Tensor:
    """Pooled image embeddings ``[N, D]`` (float32, unit rows) of every study, in order."""
    was_training = model.training
    model.eval()
    loader = DataLoader(  # private generator: leave the global torch RNG untouched
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=pixel_batch,
        generator=torch.Generator(),
    )
    chunks = []
    bar = progress_bar(loader, wanted=progress, desc=desc, unit="batch")
    try:
        for pixels, view_mask in bar:
            with autocast():
                _, pooled = model.encode_images(pixels.to(device), view_mask.to(device))
            chunks.append(F.normalize(pooled.float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def build_references(
    model: torch.nn.Module,
    datasets: Mapping[str, StudyDataset],
    cfg: RetrievalConfig,
    *,
    device: torch.device,
    encoder: str = "stage1",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
) -> tuple[RetrievalIndex, dict[str, dict[str, list[str]]]]:
    """Embed every split with the model as it stands; index train; neighbours for every study.

    Returns the index and ``{split: {study id: [train ids]}}``.
    """
    if "train" not in datasets:
        raise ValueError("retrieval needs the train split")
    embedded = {
        split: embed_dataset(
            model,
            ds,
            device=device,
            autocast=autocast,
            progress=progress,
            desc=f"embedding {split}",
        )
        for split, ds in datasets.items()
    }
    train = datasets["train"].studies
    index = RetrievalIndex(
        ids=[s.id for s in train],
        subjects=[s.subject_id for s in train],
        reports=[s.report for s in train],
        embeddings=embedded["train"],
        encoder=encoder,
    )
    neighbours: dict[str, dict[str, list[str]]] = {}
    for split, ds in datasets.items():
        ids = [s.id for s in ds.studies]
        is_train = split == "train"
        hits = index.query(
            embedded[split],
            cfg.k,
            query_ids=ids if is_train else None,
            query_subjects=[s.subject_id for s in ds.studies]
            if is_train and cfg.exclude_same_patient
            else None,
        )
        neighbours[split] = dict(zip(ids, hits, strict=True))
    return index, neighbours


def save_neighbours(folder: Path, neighbours: Mapping[str, Mapping[str, list[str]]]) -> None:
    write_json(folder / "neighbours.json", {s: dict(v) for s, v in neighbours.items()}, indent=None)


def load_neighbours(folder: Path) -> dict[str, dict[str, list[str]]]:
    data = read_json(folder / "neighbours.json")
    if not isinstance(data, dict):
        raise DataError(f"{folder / 'neighbours.json'}: expected {{split: {{id: [ids]}}}}")
    return data


class ReferenceTexts(Mapping[str, str]):
    """``{study id: its retrieved train reports, joined}``: the values of the "reference" signal.

    ``neighbours`` maps study ids to train ids (best first), ``reports`` train ids to reports.
    """

    def __init__(self, neighbours: Mapping[str, list[str]], reports: Mapping[str, str]) -> None:
        self.neighbours, self.reports = dict(neighbours), dict(reports)

    def ids(self, sid: str) -> list[str]:
        """The train ids retrieved for ``sid``, best first."""
        if sid not in self.neighbours:
            raise KeyError(f"no retrieved reference for study {sid!r} (retrieval index not built?)")
        return self.neighbours[sid]

    def __getitem__(self, sid: str) -> str:
        return REFERENCE_SEPARATOR.join(self.reports[r].strip() for r in self.ids(sid))

    def __iter__(self) -> Iterator[str]:
        return iter(self.neighbours)

    def __len__(self) -> int:
        return len(self.neighbours)


def reference_texts(
    index: RetrievalIndex, neighbours: Mapping[str, Mapping[str, list[str]]]
) -> ReferenceTexts:
    """The references of every split in ``neighbours`` (``{split: {id: [train ids]}}``)."""
    flat = {sid: hits for split in neighbours.values() for sid, hits in split.items()}
    return ReferenceTexts(flat, dict(zip(index.ids, index.reports, strict=True)))


def load_references(folder: Path, split: str | None = None) -> ReferenceTexts:
    """The references a run retrieved, read from its retrieval ``folder``: of ``split``, or of
    every split (None)."""
    meta_path = folder / "index.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: no retrieval index (index.json)")
    meta = read_json(meta_path)
    neighbours = load_neighbours(folder)
    if split is not None:
        if split not in neighbours:
            raise DataError(f"{folder}: no retrieved references for split {split!r}")
        neighbours = {split: neighbours[split]}
    flat = {sid: hits for hits_of in neighbours.values() for sid, hits in hits_of.items()}
    return ReferenceTexts(flat, dict(zip(meta["ids"], meta["reports"], strict=True)))


class _InitialEncoder(torch.nn.Module):
    """The vision tower as every run starts it, answering ``encode_images`` like S2DModel."""

    def __init__(self, vision: torch.nn.Module):
        super().__init__()
        self.vision = vision

    def encode_images(self, pixels: torch.Tensor, view_mask: torch.Tensor):
        return None, self.vision(pixels, view_mask).pooled


def initial_tower(cfg, cache_root: Path, split: str, *, progress: bool = False):
    """``(annotation, {"train", split: dataset}, vision)``: the vision tower every run starts
    from (the shared pre-trained tiny tower, or the configured backbone; an untrained one is
    built under ``cfg.seed``), with the datasets of the train split and ``split``."""
    from s2d_align.models.vision import VisionEncoder
    from s2d_align.training.data import load_run_annotation
    from s2d_align.training.vision_init import initial_vision_state
    from s2d_align.utils.seed import seed_everything

    annotation = load_run_annotation(cfg, Path(cache_root), progress=progress)
    datasets = {
        name: StudyDataset(
            annotation.split(name), image_size=cfg.data.image_size, max_views=cfg.data.max_views
        )
        for name in dict.fromkeys(("train", split))
    }
    state = initial_vision_state(
        cfg, annotation, Path(cache_root), train=datasets["train"], progress=progress
    )
    seed_everything(cfg.seed)
    vision = VisionEncoder(
        cfg.model.vision,
        image_size=cfg.data.image_size,
        num_views=cfg.data.max_views,
        view_embedding=False,
    )
    if state is not None:
        vision.backbone.load_state_dict(state, strict=True)
    return annotation, datasets, vision


def nearest_train_reports(
    cfg, cache_root: Path, split: str, *, progress: bool = False
) -> dict[str, str]:
    """``{study id: train report}`` of ``split``: the top-1 train study under the shared initial
    vision tower (the pre-trained tiny tower, or the configured pretrained backbone), with the
    same exclusions a run's retrieval applies. Needs no training: a reference row."""
    annotation, datasets, vision = initial_tower(cfg, cache_root, split, progress=progress)
    if not datasets[split].studies:
        raise DataError(f"{annotation.path}: the {split!r} split is empty")
    index, neighbours = build_references(
        _InitialEncoder(vision), datasets, cfg.retrieval, device=torch.device("cpu"),
        encoder="frozen", progress=progress,
    )  # fmt: skip
    reports = dict(zip(index.ids, index.reports, strict=True))
    return {sid: reports[hits[0]] for sid, hits in neighbours[split].items() if hits}
