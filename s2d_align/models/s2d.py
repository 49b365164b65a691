"""S2DModel: vision encoder -> projector -> memory adapter -> LLM, plus the key-phrase head.

The LLM reads ``[memory-augmented visual tokens ; embed(input_ids)]``; the LM loss covers target
tokens only. A batch (built by ``s2d_align.training.collate.Collator``) is a dict:

- ``ids``: study ids; ``pixel_values [B, V, 1, H, W]`` in [0, 1]; ``view_mask [B, V]`` (bool);
- ``input_ids`` and ``attention_mask [B, L]``: prompt + target, right-padded, for ``forward``;
  the prompt alone, left-padded, for ``generate``;
- training batches only: ``labels [B, L]``, ``input_ids`` with every non-target position at
  -100; ``aux_ids`` / ``aux_mask`` (the alignment text, when ``lambda_align > 0``) and
  ``kp_targets [B, K]`` (key-phrase multi-hot, when ``lambda_kp > 0``), else None.

What trains is declared per stage (``Trainable``: ``frozen`` / ``lora`` / ``full`` per
component). LoRA layers are injected at construction for every tower that some stage trains
with ``lora`` (their B matrices start at zero, so the model is unchanged); ``set_trainable``
only flips ``requires_grad``, so parameter names never change between stages and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s2d_align.config.schema import ModelConfig, Trainable
from s2d_align.errors import ConfigError, DataError
from s2d_align.models.keyphrase_head import KeyphraseHead, masked_mean
from s2d_align.models.llm import (
    apply_lora,
    is_lora_parameter,
    vision_lora_targets,
)
from s2d_align.models.memory import MemoryAdapter, info_nce
from s2d_align.models.projector import build_projector
from s2d_align.models.sequence import IGNORE_INDEX, assemble
from s2d_align.models.vision import VisionEncoder

COMPONENTS = ("vision", "projector", "memory", "llm", "keyphrase_head")
# Components that LoRA can wrap; the others are small and new, so they train fully or not at all.
LORA_COMPONENTS = ("vision", "llm")


@dataclass
class S2DOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]  # "lm" always; "align" and "kp" when their weight is > 0
    n_target_tokens: int


@dataclass
class EncodedImages:
    tokens: torch.Tensor  # [B, T, D] memory-augmented projected tokens (zeros on padded views)
    mask: torch.Tensor  # [B, T] bool
    pooled_image: torch.Tensor  # [B, Dv] pooled vision-encoder output (retrieval)
    memory_read: torch.Tensor | None  # [B, T, D] raw memory read (alignment), None without memory


class S2DModel(nn.Module):
    """The full model. ``stage_trainables`` lists every stage's ``Trainable`` (what may train)."""

    def __init__(
        self,
        cfg: ModelConfig,
        llm: nn.Module,
        tokenizer,
        num_views: int,
        keyphrase_vocab: Sequence[str],
        *,
        image_size: int = 128,
        stage_trainables: Sequence[Trainable] = (Trainable(),),
    ) -> None:
        super().__init__()
        _check_trainables(stage_trainables)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.num_views = num_views
        self.image_size = image_size
        self.keyphrase_vocab = list(keyphrase_vocab)
        modes = {c: {getattr(t, c) for t in stage_trainables} for c in COMPONENTS}
        self.lora_vision = "lora" in modes["vision"]
        self.lora_llm = "lora" in modes["llm"]
        # Checkpoints hold a tower's full weights only when they can differ from what a fresh
        # build reproduces from files: it trains fully in some stage, or it is a tiny tower
        # (self-contained runs; the tiny LM's cache could be deleted).
        self.save_vision_base = cfg.vision.source == "tiny" or "full" in modes["vision"]
        self.save_llm_base = cfg.llm.source == "tiny" or "full" in modes["llm"]

        # Construction order matters for reproducibility: the memory adapter is built last so
        # that a model with and without memory share every other initial weight under one seed.
        self.vision = VisionEncoder(
            cfg.vision,
            image_size=image_size,
            num_views=num_views,
            view_embedding=cfg.view_embedding,
        )
        if self.lora_vision:
            apply_lora(
                self.vision.backbone,
                cfg.lora,
                targets=vision_lora_targets(self.vision.backbone),
                where="model.lora (vision)",
            )
        dim = llm.get_input_embeddings().embedding_dim
        self.projector = build_projector(self.vision.hidden_size, dim, cfg.projector_layers)
        self.keyphrase_head = (
            KeyphraseHead(dim, len(self.keyphrase_vocab)) if self.keyphrase_vocab else None
        )
        self.llm = apply_lora(llm, cfg.lora) if self.lora_llm else llm
        mem = cfg.memory
        self.memory = (
            MemoryAdapter(
                dim, mem.slots, mem.num_heads, topk=mem.topk, gate=mem.gate, gate_init=mem.gate_init
            )
            if mem.enabled
            else None
        )

    # ------------------------------------------------------------------ encoding
    def _device(self) -> torch.device:
        return self.projector[0].weight.device

    def encode(self, pixel_values: torch.Tensor, view_mask: torch.Tensor) -> EncodedImages:
        device = self._device()
        if self.cfg.image_input == "constant":  # image-blind control: one grey image for all
            pixel_values = torch.full_like(pixel_values, 0.5)
        vis = self.vision(pixel_values.to(device), view_mask.to(device))
        tokens = self.projector(vis.tokens)
        read = None
        if self.memory is not None:
            tokens, read = self.memory(tokens)
        tokens = tokens * vis.token_mask[..., None].to(tokens.dtype)
        return EncodedImages(tokens, vis.token_mask, vis.pooled, read)

    def encode_images(
        self, pixel_values: torch.Tensor, view_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(visual_tokens [B, T, D], pooled_image [B, Dv])``; see ``EncodedImages``."""
        enc = self.encode(pixel_values, view_mask)
        return enc.tokens, enc.pooled_image

    def _assemble(self, enc: EncodedImages, batch: dict, labels: torch.Tensor | None):
        device = self._device()
        input_ids = batch["input_ids"].to(device)
        text = self.llm.get_input_embeddings()(input_ids)
        return assemble(
            enc.tokens,
            enc.mask,
            text,
            batch["attention_mask"].to(device),
            None if labels is None else labels.to(device),
        )

    # ------------------------------------------------------------------ training forward
    def forward(
        self, batch: dict, *, lambda_align: float = 0.0, lambda_kp: float = 0.0
    ) -> S2DOutput:
        enc = self.encode(batch["pixel_values"], batch["view_mask"])
        if batch.get("labels") is None:
            raise DataError("training batch has no 'labels'")
        seq = self._assemble(enc, batch, batch["labels"])
        assert seq.labels is not None
        logits = self.llm(
            inputs_embeds=seq.embeds,
            attention_mask=seq.attention_mask,
            position_ids=seq.position_ids,
            use_cache=False,
        ).logits
        # Token t predicts token t+1; the mean is over target tokens of the whole batch.
        targets = seq.labels[:, 1:]
        n_target = int((targets != IGNORE_INDEX).sum())
        if n_target == 0:
            raise DataError(f"batch {batch.get('ids')}: no target tokens (labels all -100)")
        lm = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ) / max(n_target, 1)
        losses = {"lm": lm}
        loss = lm
        if lambda_align > 0:
            losses["align"] = self.alignment_loss(enc, batch)
            loss = loss + lambda_align * losses["align"]
        if lambda_kp > 0:
            losses["kp"] = self.keyphrase_loss(enc, batch)
            loss = loss + lambda_kp * losses["kp"]
        return S2DOutput(loss=loss, losses=losses, n_target_tokens=n_target)

    def alignment_loss(self, enc: EncodedImages, batch: dict) -> torch.Tensor:
        """InfoNCE between the image's pooled memory read and the auxiliary text's read."""
        if self.memory is None or enc.memory_read is None:
            raise ConfigError("the alignment loss needs the memory adapter (model.memory.enabled)")
        if batch.get("aux_ids") is None or batch.get("aux_mask") is None:
            raise DataError("lambda_align > 0 but the batch has no aux_ids/aux_mask")
        device = self._device()
        aux_mask = batch["aux_mask"].to(device)
        with torch.no_grad():  # the LLM's input embeddings stay frozen for this loss
            aux = self.llm.get_input_embeddings()(batch["aux_ids"].to(device))
        text_vec = masked_mean(aux.to(self.memory.bank.dtype), aux_mask.bool())
        text_read = self.memory.read(text_vec)
        image_read = masked_mean(enc.memory_read, enc.mask)
        return info_nce(image_read, text_read, self.cfg.memory.align_temperature)

    def keyphrase_loss(self, enc: EncodedImages, batch: dict) -> torch.Tensor:
        if self.keyphrase_head is None:
            raise ConfigError("lambda_kp > 0 but the model has no key-phrase vocabulary")
        if batch.get("kp_targets") is None:
            raise DataError("lambda_kp > 0 but the batch has no kp_targets")
        logits = self.keyphrase_head(enc.tokens, enc.mask)
        targets = batch["kp_targets"].to(logits.device, logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, batch: dict, *, max_new_tokens: int, num_beams: int = 1) -> list[str]:
        """Greedy (``num_beams=1``) or beam search with KV cache; prompts left-padded or not."""
        from transformers import GenerationConfig

        was_training = self.training
        self.eval()
        try:
            enc = self.encode(batch["pixel_values"], batch["view_mask"])
            seq = self._assemble(enc, batch, None)
            tok = self.tokenizer
            gen_cfg = GenerationConfig(
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                early_stopping=num_beams > 1,
                use_cache=True,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id,
            )
            out = self.llm.generate(
                inputs_embeds=seq.embeds,
                attention_mask=seq.attention_mask,
                generation_config=gen_cfg,
            )
        finally:
            self.train(was_training)
        # With inputs_embeds only, generate returns just the new tokens.
        return [text.strip() for text in tok.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def predict_keyphrases(self, batch: dict) -> torch.Tensor:
        """Key-phrase probabilities ``[B, K]`` in the order of ``keyphrase_vocab``."""
        if self.keyphrase_head is None:
            raise ConfigError("the model has no key-phrase head (empty key-phrase vocabulary)")
        was_training = self.training
        self.eval()
        try:
            enc = self.encode(batch["pixel_values"], batch["view_mask"])
            return torch.sigmoid(self.keyphrase_head(enc.tokens, enc.mask))
        finally:
            self.train(was_training)

    def reset_memory(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the memory content (bank, read projections; the gate is kept);
        no-op without memory."""
        if self.memory is not None:
            self.memory.reset(generator)

    def gate_value(self) -> float | None:
        """tanh(g) of the memory gate (None without memory or without a gate)."""
        if self.memory is None or self.memory.gate is None:
            return None
        return float(torch.tanh(self.memory.gate.detach()).item())

    # ------------------------------------------------------------------ trainability
    def component(self, name: str) -> nn.Module | None:
        if name not in COMPONENTS:
            raise ConfigError(f"unknown model component {name!r}; valid: {list(COMPONENTS)}")
        return getattr(self, name)

    def set_trainable(self, trainable: Trainable) -> None:
        """Set ``requires_grad`` per component: frozen (none), full (all), lora (LoRA only).

        In ``lora`` mode the vision view embedding (a new parameter) trains with the LoRA layers.
        A missing component (memory disabled, no key-phrase head) has nothing to set.
        """
        _check_trainables([trainable])
        for name in COMPONENTS:
            module, mode = self.component(name), getattr(trainable, name)
            if module is None:
                continue
            if mode == "lora" and not getattr(self, f"lora_{name}"):
                raise ConfigError(
                    f"trainable.{name} is 'lora' but the model was built without LoRA for it "
                    "(build the model with every stage's trainables)"
                )
            for pname, param in module.named_parameters():
                if mode == "full":
                    param.requires_grad_(True)
                elif mode == "frozen":
                    param.requires_grad_(False)
                else:
                    param.requires_grad_(is_lora_parameter(pname) or pname == "view_embedding")
        if not any(p.requires_grad for p in self.parameters()):
            raise ConfigError(f"stage trains nothing: {trainable}")

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{component: (total, trainable)}`` parameter counts."""
        counts = {}
        for name in COMPONENTS:
            module = self.component(name)
            params = list(module.parameters()) if module is not None else []
            counts[name] = (
                sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad),
            )
        return counts

    # ------------------------------------------------------------------ checkpoint content
    def checkpoint_keys(self) -> list[str]:
        """Names of the tensors a checkpoint holds (see ``trainable_state_dict``)."""
        keys, seen = [], set()
        for name, tensor in self.state_dict(keep_vars=True).items():
            ident = (tensor.data_ptr(), tuple(tensor.shape))
            if ident in seen:  # tied weights (lm_head = embed_tokens) are stored once
                continue
            seen.add(ident)
            if self._in_checkpoint(name):
                keys.append(name)
        return keys

    def _in_checkpoint(self, name: str) -> bool:
        top, _, rest = name.partition(".")
        if top == "vision":
            return self.save_vision_base or is_lora_parameter(rest) or rest == "view_embedding"
        if top == "llm":
            return self.save_llm_base or is_lora_parameter(rest)
        return True  # projector, memory, key-phrase head: always ours, always saved

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold: LoRA, projector, memory, heads, view embedding, plus the
        full weights of any tower that trains fully in some stage or is tiny. Detached copies."""
        state = self.state_dict()
        return {k: state[k].detach().clone().contiguous() for k in self.checkpoint_keys()}

    def load_trainable_state_dict(
        self, state: dict[str, torch.Tensor], strict: bool = True, *, source: str = "state dict"
    ) -> tuple[list[str], list[str]]:
        """Load a ``trainable_state_dict``; returns ``(missing, unexpected)``.

        ``strict`` (default) fails on any missing or unexpected key, naming them; a shape
        mismatch always fails. Non-strict loading still reports what it skipped.
        """
        expected = self.checkpoint_keys()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if strict and (missing or unexpected):
            raise DataError(
                f"{source}: does not match the model: "
                f"missing keys {preview_names(missing)}, unexpected keys {preview_names(unexpected)}"
            )
        current = self.state_dict()
        bad = [
            f"{k} {tuple(state[k].shape)} != {tuple(current[k].shape)}"
            for k in expected
            if k in state and state[k].shape != current[k].shape
        ]
        if bad:
            raise DataError(f"{source}: shape mismatch: {preview_names(bad)}")
        with torch.no_grad():
            for key in expected:
                if key in state:
                    current[key].copy_(state[key])
        return missing, unexpected


def preview_names(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _check_trainables(trainables: Sequence[Trainable]) -> None:
    for t in trainables:
        for name in COMPONENTS:
            if getattr(t, name) == "lora" and name not in LORA_COMPONENTS:
                raise ConfigError(
                    f"trainable.{name}: 'lora' is only supported for {list(LORA_COMPONENTS)}; "
                    "use 'frozen' or 'full'"
                )
