"""Linear probe of the frozen vision tower every run starts from: what the image side carries.

Pooled features of the initial tower (the shared pre-trained tiny tower, or whatever backbone
the config starts from) are computed for the train split and for an evaluation split. One
logistic regression per CheXpert observation is fitted on the train features against the
configured labeler's labels of the train reports, and scored by AUROC on the other split,
under the names the finding AUROC diagnostic uses (``diag/finding_auroc/<obs>`` and their mean
``diag/finding_auroc``), so the two sit in one column. It is a reference for what any variant
could read from the image, not a bound: the language model reads every image token, not one
pooled vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s2d_align.chexpert import OBSERVATIONS
from s2d_align.config import Config
from s2d_align.errors import DataError

#: Label mapping of the targets and of the scored labels (the finding AUROC's: positive = 1).
MAPPING = "u0"
STEPS = 500
LR = 1e-2
SEED = 0
BATCH = 64


def pooled_features(vision: torch.nn.Module, dataset, batch_size: int = BATCH) -> torch.Tensor:
    """``[N, D]`` pooled embeddings of every study of ``dataset`` (float32, not normalised)."""
    pixels, views = dataset.pixel_arrays()
    chunks = []
    vision.eval()
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            x = torch.from_numpy(pixels[start : start + batch_size]).float().div_(255.0)
            n = torch.from_numpy(np.asarray(views[start : start + batch_size]))
            mask = torch.arange(x.shape[1])[None, :] < n[:, None]
            chunks.append(vision(x.unsqueeze(2), mask).pooled.float())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def fit_probe(features: torch.Tensor, targets: torch.Tensor, *, seed: int = SEED):
    """Logistic regression per target column on standardised features (full-batch Adam);
    returns a function mapping features to logits. Leaves the global torch RNG untouched."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = torch.nn.Linear(features.shape[1], targets.shape[1])
        opt = torch.optim.Adam(linear.parameters(), lr=LR)
        x = (features - mean) / std
        for _ in range(STEPS):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(linear(x), targets)
            loss.backward()
            opt.step()

    def predict(other: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return linear((other - mean) / std).numpy()

    return predict


def split_labels(cfg: Config, studies) -> np.ndarray:
    """``[N, 14]`` booleans: the configured labeler's positives (``u0``) for each study's report."""
    from s2d_align.evaluation import ce
    from s2d_align.evaluation.labelers import get_labeler

    labels = get_labeler(cfg.eval).label([s.report for s in studies])
    return ce.binarize(labels, MAPPING, source="report labels").astype(bool)


def tower_probe(
    cfg: Config, cache_root: str | Path, *, split: str = "test", progress: bool = False
) -> dict[str, float]:
    """Finding AUROCs of a linear probe on the initial vision tower's pooled features.

    Fitted on ``train``, scored on ``split``; ``diag/finding_auroc/<obs>`` for observations with
    both classes in ``split`` and ``diag/finding_auroc`` their mean. Deterministic.
    """
    from s2d_align.evaluation.stats import auroc
    from s2d_align.training.retrieval import initial_tower

    with torch.random.fork_rng(devices=[]):  # an untrained tower is built under cfg.seed
        annotation, datasets, vision = initial_tower(cfg, cache_root, split, progress=progress)
    for name, dataset in datasets.items():
        if not dataset.studies:
            raise DataError(
                f"tower probe: {annotation.path} has no {name!r} split (or it is empty)"
            )
    train_x = pooled_features(vision, datasets["train"])
    split_x = pooled_features(vision, datasets[split])
    train_y = split_labels(cfg, datasets["train"].studies)
    split_y = split_labels(cfg, datasets[split].studies)
    scores = fit_probe(train_x, torch.from_numpy(train_y.astype(np.float32)))(split_x)
    out: dict[str, float] = {}
    for k, obs in enumerate(OBSERVATIONS):
        y = split_y[:, k]
        if y.any() and not y.all():
            out[f"diag/finding_auroc/{obs}"] = float(auroc(scores[:, k], y))
    if out:
        out["diag/finding_auroc"] = float(np.mean(list(out.values())))
    return out
