"""Training data: the run's studies, their images (cached as uint8 when small) and batch order.

The batch order is a pure function of (seed, micro-batch number): a seeded permutation per epoch,
cut into global batches, of which each process takes every ``world``-th row. The micro-batch
number runs over the whole run, so stages continue one data order and every variant of a grid
sees the same samples at the same global steps. Resuming a
run therefore only needs the number of micro-batches consumed, not a pickled iterator.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Sampler

from s2d_align.config.schema import Config
from s2d_align.data.r2gen import Annotation, Study, load_annotation, load_image
from s2d_align.errors import ConfigError
from s2d_align.utils.progress import progress_bar

#: Decoded images are kept in memory when all of them fit in this many bytes (as uint8).
IMAGE_CACHE_BYTES = 2 << 30


def load_run_annotation(cfg: Config, cache_root: Path, *, progress: bool = False) -> Annotation:
    """The run's annotation: SynthCXR (generated once into the cache) or an R2Gen file."""
    data = cfg.data
    if data.source == "synth":
        from s2d_align.data.synth import ensure_synthcxr

        ann_path = Path(ensure_synthcxr(data.synth, cache_root, progress=progress))
        return load_annotation(ann_path, dataset="synthcxr")
    assert data.annotation is not None  # the schema enforces it for source r2gen
    ann_path = Path(data.annotation).expanduser()
    if not ann_path.is_file():
        raise ConfigError(
            f"data.annotation: {ann_path} does not exist; set it to your annotation.json, e.g. "
            "`data.annotation=/path/to/annotation.json` (and `data.image_root=/path/to/images` "
            "when the images are not beside it)"
        )
    image_root = Path(data.image_root).expanduser() if data.image_root else None
    if image_root is not None and not image_root.is_dir():
        raise ConfigError(f"data.image_root: {image_root} is not a folder")
    return load_annotation(
        ann_path,
        image_root,
        dataset=data.dataset,
        group_by_study=data.group_by_study,
        skip_bad=data.skip_bad,
    )


def train_reports(annotation: Annotation) -> list[str]:
    """One report per train study (per-image MIMIC rows repeat their study's report)."""
    seen, out = set(), []
    for study in annotation.split("train"):
        key = study.study_id or study.id
        if key not in seen:
            seen.add(key)
            out.append(study.report)
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class Item:
    """One study as the collate function receives it."""

    index: int
    study: Study
    pixels: np.ndarray  # uint8 [V, H, W]; views past n_views are zeros
    n_views: int
    epoch: int = 0
    mix: int = 0  # which signal set of a multitask stage this micro-batch uses


class StudyDataset(Dataset):
    """Studies with their images resized to ``image_size`` and cut or padded to ``max_views``.

    Pixels always go through uint8, cached or not, so a cached run and an uncached one see the
    same numbers.
    """

    def __init__(
        self,
        studies: Sequence[Study],
        *,
        image_size: int,
        max_views: int,
        cache: bool | None = None,
        progress: bool = False,
    ) -> None:
        self.studies = list(studies)
        self.image_size = image_size
        self.max_views = max_views
        n_bytes = len(self.studies) * max_views * image_size * image_size
        self.cached = n_bytes <= IMAGE_CACHE_BYTES if cache is None else cache
        self._pixels: np.ndarray | None = None
        self._views: np.ndarray | None = None
        if self.cached:
            self._preload(progress)

    def _load(self, study: Study) -> tuple[np.ndarray, int]:
        out = np.zeros((self.max_views, self.image_size, self.image_size), dtype=np.uint8)
        paths = study.image_paths[: self.max_views]
        for v, path in enumerate(paths):
            out[v] = _to_uint8(load_image(path, self.image_size))
        return out, len(paths)

    def _preload(self, progress: bool) -> None:
        shape = (len(self.studies), self.max_views, self.image_size, self.image_size)
        self._pixels = np.zeros(shape, dtype=np.uint8)
        self._views = np.zeros(len(self.studies), dtype=np.int64)
        bar = progress_bar(
            self.studies,
            desc="loading images",
            unit="study",
            wanted=progress,
        )
        for i, study in enumerate(bar):
            self._pixels[i], self._views[i] = self._load(study)

    def pixel_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All studies' pixels (uint8 ``[N, V, H, W]``) and view counts ``[N]``."""
        if self._pixels is None or self._views is None:
            self._preload(progress=False)
        assert self._pixels is not None and self._views is not None
        return self._pixels, self._views

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, key: int | tuple[int, int, int]) -> Item:
        index, epoch, mix = (key, 0, 0) if isinstance(key, int) else key
        study = self.studies[index]
        if self._pixels is not None and self._views is not None:
            pixels, n_views = self._pixels[index], int(self._views[index])
        else:
            pixels, n_views = self._load(study)
        return Item(index, study, pixels, n_views, epoch, mix)


def mix_choice(weights: Sequence[float], seed: int, micro_batch: int) -> int:
    """Which signal set a multitask micro-batch uses: a seeded draw by mixing weight."""
    if len(weights) == 1:
        return 0
    rng = np.random.default_rng([seed, 0x5EED, micro_batch])
    p = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(weights), p=p / p.sum()))


class ResumableBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Endless global batches from a seeded permutation per epoch, starting at ``start``.

    Yields this process's rows of each global batch as ``(index, epoch, mix)`` keys. Incomplete
    batches at the end of an epoch are dropped (every optimizer step sees ``batch_size`` rows).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        mix_weights: Sequence[float] = (1.0,),
    ) -> None:
        if n < batch_size:
            raise ConfigError(
                f"train.batch_size={batch_size} is larger than the train split ({n} studies)"
            )
        if batch_size < world:
            raise ConfigError(
                f"train.batch_size={batch_size} must be >= the number of processes ({world})"
            )
        self.n, self.batch_size = n, batch_size
        self.seed = seed
        self.rank, self.world = rank, world
        self.start = start
        self.mix_weights = tuple(mix_weights)
        self.per_epoch = n // batch_size

    def global_batch(self, micro_batch: int) -> tuple[np.ndarray, int]:
        """Row indices of global micro-batch ``micro_batch`` and its epoch."""
        epoch, offset = divmod(micro_batch, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[offset * self.batch_size : (offset + 1) * self.batch_size], epoch

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        micro = self.start
        while True:
            rows, epoch = self.global_batch(micro)
            mix = mix_choice(self.mix_weights, self.seed, micro)
            yield [(int(i), epoch, mix) for i in rows[self.rank :: self.world]]
            micro += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress displays
        return sys.maxsize
