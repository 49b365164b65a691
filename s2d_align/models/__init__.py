"""The S2D-Align model: vision encoder -> projector -> memory adapter -> LLM (+ key-phrase head).

Public API: ``S2DModel`` (the docstring of ``s2d_align.models.s2d`` gives the batch layout),
``build_model``, ``S2DOutput``, ``save_adapter`` / ``load_adapter``, ``pretrained_tiny_llm``,
``load_llm_tokenizer``, ``MemoryAdapter`` and ``info_nce``.
"""

from s2d_align.models.adapter import load_adapter, save_adapter
from s2d_align.models.build import build_model
from s2d_align.models.llm import build_llm, load_llm_tokenizer
from s2d_align.models.memory import MemoryAdapter, info_nce
from s2d_align.models.pretrain import pretrained_tiny_llm
from s2d_align.models.s2d import COMPONENTS, S2DModel, S2DOutput

__all__ = [
    "COMPONENTS",
    "MemoryAdapter",
    "S2DModel",
    "S2DOutput",
    "build_llm",
    "build_model",
    "info_nce",
    "load_adapter",
    "load_llm_tokenizer",
    "pretrained_tiny_llm",
    "save_adapter",
]
