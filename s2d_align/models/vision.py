"""Vision encoder: a tiny ViT built from config or any Hugging Face vision backbone from a folder.

Input images are grayscale in [0, 1] (``[B, V, 1, H, W]``, V views per study). The encoder
normalises them the way the backbone expects, repeats the channel for RGB backbones, runs the
valid views only (padded views never reach the backbone, so their pixels cannot leak), and
returns the per-view token sequences concatenated along the token axis, each view's tokens
shifted by a learned view embedding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from s2d_align.config.schema import VisionConfig
from s2d_align.errors import ConfigError, DataError

# Used when a pretrained folder has no preprocessor_config.json (ImageNet statistics).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Dual-tower checkpoints (CLIP, SigLIP) load as the full model; the image tower is this attribute.
_VISION_TOWER_ATTR = "vision_model"


@dataclass
class VisionOutput:
    tokens: torch.Tensor  # [B, V*T, Dv] view tokens (+ view embedding); zeros for padded views
    token_mask: torch.Tensor  # [B, V*T] bool, False on padded views
    pooled: torch.Tensor  # [B, Dv] mean backbone token over the valid views (for retrieval)


def build_tiny_vit(cfg: VisionConfig, image_size: int) -> nn.Module:
    """A small single-channel ViT (``transformers.ViTModel``) sized by ``cfg``."""
    from transformers import ViTConfig, ViTModel

    if image_size % cfg.patch_size:
        raise ConfigError(
            f"model.vision.patch_size={cfg.patch_size} must divide data.image_size={image_size}"
        )
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(
            f"model.vision.hidden_size={cfg.hidden_size} must be divisible by "
            f"model.vision.num_heads={cfg.num_heads}"
        )
    config = ViTConfig(
        image_size=image_size,
        patch_size=cfg.patch_size,
        num_channels=1,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    return ViTModel(config, add_pooling_layer=False)


def build_tiny_backbone(cfg: VisionConfig, image_size: int) -> nn.Module:
    """The tiny tower named by ``cfg.arch``: a ViT or a small CNN (see ``models.tiny_cnn``)."""
    if cfg.arch == "cnn":
        from s2d_align.models.tiny_cnn import TinyCNN

        return TinyCNN(cfg, image_size)
    return build_tiny_vit(cfg, image_size)


def load_pretrained_backbone(path: str | Path) -> tuple[nn.Module, tuple, tuple]:
    """Load a vision backbone from a local folder; returns (module, mean, std).

    Handles plain vision models (ViT, Swin, DINOv2, ``*VisionModel``) and dual-tower
    checkpoints (CLIP, SigLIP), whose image tower is taken.
    """
    from transformers import AutoModel

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.vision.path: {folder} is not a Hugging Face model folder (no config.json)"
        )
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    if hasattr(model, _VISION_TOWER_ATTR) and hasattr(model, "text_model"):
        model = getattr(model, _VISION_TOWER_ATTR)
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    proc = folder / "preprocessor_config.json"
    if proc.is_file():
        meta = json.loads(proc.read_text(encoding="utf-8"))
        mean = tuple(meta.get("image_mean", mean))
        std = tuple(meta.get("image_std", std))
    return model, mean, std


def _backbone_config(model: nn.Module):
    config = model.config
    return getattr(config, "vision_config", None) or config


class VisionEncoder(nn.Module):
    """Backbone + normalisation + multi-view assembly with a learned view embedding."""

    def __init__(
        self,
        cfg: VisionConfig,
        *,
        image_size: int,
        num_views: int,
        view_embedding: bool = True,
    ) -> None:
        super().__init__()
        if num_views < 1:
            raise ConfigError(f"num_views must be >= 1, got {num_views}")
        self.num_views = num_views
        if cfg.source == "tiny":
            self.backbone = build_tiny_backbone(cfg, image_size)
            mean, std = (0.5,), (0.5,)
        else:
            self.backbone, mean, std = load_pretrained_backbone(cfg.path)
        bcfg = _backbone_config(self.backbone)
        self.in_channels = int(getattr(bcfg, "num_channels", 3))
        # The backbone's own input size (pretrained position embeddings expect it).
        size = getattr(bcfg, "image_size", image_size)
        self.input_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.hidden_size = int(bcfg.hidden_size)
        if len(mean) == 1:
            mean, std = mean * self.in_channels, std * self.in_channels
        if len(mean) != self.in_channels:
            raise ConfigError(
                f"model.vision: image_mean has {len(mean)} values for {self.in_channels} channels"
            )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.view_embedding = (
            nn.Parameter(torch.randn(num_views, self.hidden_size) * 0.02)
            if view_embedding and num_views > 1
            else None
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 1, H, W]`` in [0, 1] -> backbone input (size, channels, mean/std)."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(
                images,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
            )
        if self.in_channels != images.shape[1]:
            images = images.expand(-1, self.in_channels, -1, -1)
        return (images - self.mean) / self.std

    def forward(self, pixel_values: torch.Tensor, view_mask: torch.Tensor) -> VisionOutput:
        if pixel_values.dim() != 5 or pixel_values.shape[2] != 1:
            raise DataError(
                f"pixel_values must be [B, V, 1, H, W] grayscale, got {tuple(pixel_values.shape)}"
            )
        batch, views = pixel_values.shape[:2]
        if views > self.num_views:
            raise DataError(f"batch has {views} views but the model was built for {self.num_views}")
        view_mask = view_mask.to(torch.bool)
        if not bool(view_mask.any(dim=1).all()):
            empty = (~view_mask.any(dim=1)).nonzero().flatten().tolist()
            raise DataError(f"batch rows {empty} have no valid view (view_mask all False)")
        flat_mask = view_mask.reshape(-1)
        images = pixel_values.reshape(batch * views, *pixel_values.shape[2:])[flat_mask]
        images = self.normalise(images.to(self.mean.dtype))
        valid_tokens = self.backbone(pixel_values=images).last_hidden_state  # [N, T, Dv]
        n_tok, dim = valid_tokens.shape[1:]
        tokens = valid_tokens.new_zeros(batch * views, n_tok, dim)
        tokens[flat_mask] = valid_tokens
        tokens = tokens.view(batch, views, n_tok, dim)
        weights = view_mask.to(tokens.dtype)  # [B, V]
        pooled = (tokens.mean(dim=2) * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        if self.view_embedding is not None:
            tokens = tokens + self.view_embedding[:views].view(1, views, 1, dim)
            tokens = tokens * weights[..., None, None]  # keep padded views exactly zero
        token_mask = view_mask[:, :, None].expand(batch, views, n_tok)
        return VisionOutput(
            tokens=tokens.reshape(batch, views * n_tok, dim),
            token_mask=token_mask.reshape(batch, views * n_tok),
            pooled=pooled,
        )
