"""Pre-training of the tiny vision tower on the train split, cached by content hash.

Real report generators start from an encoder that already carries findings (ImageNet or
chest-X-ray pre-training). A tiny tower trained from scratch by a language-model loss whose
targets are mostly template tokens learns nothing about the image within a CPU budget, so tiny
presets first train the tower alone on the train split, the way PromptMRG's diagnosis branch
does: multi-label BCE on the CheXpert-14 labels that the configured labeler gives the train
reports (positive and uncertain count as present). Every variant and seed then starts from the
same weights (frozen, LoRA or full, as its stages declare).

The result depends only on the vision config, the images, the labels and this recipe; it is
cached under ``cache_root/tiny-vision-<sha256>/`` (:mod:`s2d_align.models.weights_cache`), and
computed inside a forked RNG with its own seed, so a cache hit and a miss
leave the caller's random streams identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from s2d_align.config import to_dict
from s2d_align.config.schema import Config
from s2d_align.errors import ConfigError, DataError
from s2d_align.models.tiny_cnn import ARCH_VERSION as CNN_VERSION
from s2d_align.models.weights_cache import cached_weights
from s2d_align.utils.progress import progress_bar

PRETRAIN_SEED = 4321  # fixed on purpose: the cache is shared by every run seed
BATCH_SIZE = 32
WARMUP_FRACTION = 0.05
MAX_SHIFT = 4  # random translation in pixels: cheap augmentation against memorising positions
CACHE_FORMAT = 1


def vision_cache_key(cfg: Config, material: str) -> str:
    """Key of a pre-trained tower: the recipe, the vision config and the caller's ``material``
    (a digest of the train images and their labels, see ``training.vision_init``)."""
    recipe = {
        "format": CACHE_FORMAT,
        "vision": to_dict(cfg.model.vision),
        "image_size": cfg.data.image_size,
        "max_views": cfg.data.max_views,
        "seed": PRETRAIN_SEED,
        "batch_size": BATCH_SIZE,
        "warmup_fraction": WARMUP_FRACTION,
        "max_shift": MAX_SHIFT,
        "cnn_version": CNN_VERSION,
    }
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8"))
    h.update(material.encode("utf-8"))
    return h.hexdigest()


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, int(WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _shift(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``MAX_SHIFT`` pixels (zero fill)."""
    n, _, h, w = images.shape
    pad = F.pad(images, (MAX_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen)
    return torch.stack(
        [pad[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def train_tiny_vision(
    cfg: Config,
    pixels: np.ndarray,
    n_views: np.ndarray,
    targets: np.ndarray,
    *,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a fresh tiny tower + linear head on (images, multi-label targets); deterministic.

    ``pixels`` uint8 ``[N, V, H, W]``, ``n_views`` ``[N]``, ``targets`` float ``[N, C]``.
    Returns the backbone's state dict (the head is dropped) and a training log.
    """
    from s2d_align.models.vision import VisionEncoder

    vcfg = cfg.model.vision
    n = len(pixels)
    if n == 0 or targets.shape[0] != n:
        raise DataError(f"vision pre-training: {n} images but {targets.shape[0]} label rows")
    log: dict = {"steps": vcfg.pretrain_steps, "lr": vcfg.pretrain_lr, "loss": []}
    start = time.perf_counter()
    images = torch.from_numpy(pixels)
    views = torch.as_tensor(np.asarray(n_views)).long()
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PRETRAIN_SEED)
        encoder = VisionEncoder(
            vcfg, image_size=cfg.data.image_size, num_views=images.shape[1], view_embedding=False
        )
        head = torch.nn.Linear(encoder.hidden_size, y.shape[1])
        params = [*encoder.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=vcfg.pretrain_lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(PRETRAIN_SEED)
        bar = progress_bar(
            range(vcfg.pretrain_steps),
            desc="pre-train vision tower",
            wanted=progress,
        )
        encoder.train()
        for step in bar:
            pick = torch.randint(n, (min(BATCH_SIZE, n),), generator=gen)
            batch = images[pick].float().div_(255.0)  # [B, V, H, W]
            b, v, h, w = batch.shape
            batch = _shift(batch.reshape(b * v, 1, h, w), gen).reshape(b, v, 1, h, w)
            mask = torch.arange(v)[None, :] < views[pick][:, None]
            for group in opt.param_groups:
                group["lr"] = vcfg.pretrain_lr * _lr_factor(step, vcfg.pretrain_steps)
            logits = head(encoder(batch, mask).pooled)
            loss = F.binary_cross_entropy_with_logits(logits, y[pick])
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"vision pre-training diverged at step {step} (loss {loss.item()}); "
                    "lower model.vision.pretrain_lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 20 == 0 or step == vcfg.pretrain_steps - 1:
                log["loss"].append([step, round(loss.item(), 5)])
                bar.set_postfix(loss=f"{loss.item():.3f}")
        encoder.eval()
        standardise = getattr(encoder.backbone, "standardise_from", None)
        if standardise is not None:  # frontal (first) views of every train image
            standardise(encoder.normalise(images[:, :1].float().div(255.0)))
    log["seconds"] = round(time.perf_counter() - start, 2)
    state = {k: t.detach().clone().contiguous() for k, t in encoder.backbone.state_dict().items()}
    return state, log


def pretrained_tiny_vision(
    cfg: Config,
    pixels: np.ndarray,
    n_views: np.ndarray,
    targets: Callable[[], np.ndarray],
    material: str,
    cache_root: Path,
    *,
    extra_meta: dict | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], Path]:
    """The pre-trained backbone state dict (from the cache, or trained and cached now) and the
    cache folder (its ``meta.json`` holds the training log). ``targets`` is called only on a
    cache miss (labelling the train reports is the costly part of a hit otherwise)."""
    if cfg.model.vision.source != "tiny" or cfg.model.vision.pretrain_steps <= 0:
        raise ConfigError(
            "vision pre-training applies to model.vision.source 'tiny' with steps > 0"
        )

    def build() -> tuple[dict[str, torch.Tensor], dict]:
        state, log = train_tiny_vision(cfg, pixels, n_views, targets(), progress=progress)
        meta = {"n_images": len(pixels), "vision": to_dict(cfg.model.vision), "log": log}
        return state, {**meta, **(extra_meta or {})}

    return cached_weights(Path(cache_root), "tiny-vision", vision_cache_key(cfg, material), build)


def label_targets(labels: Sequence[dict], observations: Sequence[str]) -> np.ndarray:
    """``[N, C]`` float targets: 1 where a label is positive or uncertain, else 0."""
    out = np.zeros((len(labels), len(observations)), dtype=np.float32)
    for i, row in enumerate(labels):
        for j, obs in enumerate(observations):
            if row.get(obs) in (1, -1):
                out[i, j] = 1.0
    return out
