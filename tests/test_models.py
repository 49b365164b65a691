"""Model components: memory gate and top-k read, multi-view masking, losses, trainability."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import KEYPHRASES, build, make_batch, make_tokenizer, tiny_config

from s2d_align.config.schema import LoraSettings, Trainable
from s2d_align.errors import ConfigError, DataError
from s2d_align.models import MemoryAdapter, info_nce
from s2d_align.models.llm import apply_lora, build_tiny_llm
from s2d_align.models.sequence import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def lm_logits(model, batch):
    """The LLM's logits on the assembled training sequence (eval mode)."""
    model.eval()
    with torch.no_grad():
        enc = model.encode(batch["pixel_values"], batch["view_mask"])
        seq = model._assemble(enc, batch, batch["labels"])
        out = model.llm(
            inputs_embeds=seq.embeds,
            attention_mask=seq.attention_mask,
            position_ids=seq.position_ids,
        ).logits
    return out, seq


# ---------------------------------------------------------------- memory adapter


def test_zero_gate_leaves_tokens_and_lm_output_unchanged_at_init(tok):
    batch = make_batch(tok)
    with_mem = build(tiny_config(memory=True), tok, seed=3)
    without = build(tiny_config(memory=False), tok, seed=3)
    shared = without.state_dict()
    for name, value in with_mem.state_dict().items():
        if not name.startswith("memory."):
            assert torch.equal(value, shared[name]), name  # same seed, same non-memory weights
    t_mem, _ = with_mem.encode_images(batch["pixel_values"], batch["view_mask"])
    t_plain, _ = without.encode_images(batch["pixel_values"], batch["view_mask"])
    assert torch.equal(t_mem, t_plain)
    assert torch.equal(lm_logits(with_mem, batch)[0], lm_logits(without, batch)[0])
    gen = make_batch(tok, generation=True)
    assert with_mem.generate(gen, max_new_tokens=6) == without.generate(gen, max_new_tokens=6)
    # Opening the gate makes the memory read visible: the check above can fail.
    with torch.no_grad():
        with_mem.memory.gate.fill_(0.5)
    assert not torch.equal(lm_logits(with_mem, batch)[0], lm_logits(without, batch)[0])


def test_ungated_memory_adds_the_read_from_the_start(tok):
    batch = make_batch(tok)
    ungated = build(tiny_config(gate=False), tok, seed=3)
    without = build(tiny_config(memory=False), tok, seed=3)
    assert ungated.memory.gate is None
    x = torch.randn(2, 5, 32)
    out, read = ungated.memory(x)
    assert torch.allclose(out, x + read)
    assert not torch.equal(lm_logits(ungated, batch)[0], lm_logits(without, batch)[0])


@pytest.mark.parametrize("topk", [1, 3])
def test_topk_read_attends_to_exactly_k_slots(topk):
    torch.manual_seed(0)
    mem = MemoryAdapter(16, slots=8, num_heads=2, topk=topk)
    _, weights = mem.read(torch.randn(3, 7, 16), return_weights=True)
    assert weights.shape == (3, 2, 7, 8)
    assert torch.all((weights > 0).sum(-1) == topk)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 2, 7))
    dense = MemoryAdapter(16, slots=8, num_heads=2, topk=0)
    _, dense_w = dense.read(torch.randn(3, 7, 16), return_weights=True)
    assert torch.all((dense_w > 0).sum(-1) == 8)


def test_memory_reset_is_seeded_and_keeps_the_gate_open():
    mem = MemoryAdapter(16, slots=4, num_heads=2)
    with torch.no_grad():
        mem.gate.fill_(1.0)
    before = mem.bank.detach().clone()
    mem.reset(torch.Generator().manual_seed(7))
    first = {k: v.clone() for k, v in mem.state_dict().items()}
    assert mem.gate.item() == 1.0 and not torch.equal(before, mem.bank)
    mem.reset(torch.Generator().manual_seed(7))
    assert all(torch.equal(first[k], v) for k, v in mem.state_dict().items())


def test_memory_heads_must_divide_width():
    with pytest.raises(ConfigError, match="num_heads=3"):
        MemoryAdapter(16, slots=4, num_heads=3)


def test_info_nce_is_lower_for_aligned_pairs():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=gen)
    b = a + 0.1 * torch.randn(16, 32, generator=gen)
    shuffled = b[torch.randperm(16, generator=gen)]
    aligned = info_nce(a, b, temperature=0.1)
    assert aligned < info_nce(a, shuffled, temperature=0.1)
    assert aligned < torch.log(torch.tensor(16.0))  # better than chance


# ---------------------------------------------------------------- sequence and losses


def test_padded_view_does_not_change_the_output(tok):
    model = build(tiny_config(views=2), tok)
    two = make_batch(tok, n=2, view_mask=[[True, False], [True, True]])
    other_pad = {**two, "pixel_values": two["pixel_values"].clone()}
    other_pad["pixel_values"][0, 1] = torch.rand(1, 32, 32) * 5  # garbage in the padded view
    one_view = {
        **two,
        "pixel_values": two["pixel_values"][:1, :1],
        "view_mask": torch.tensor([[True]]),
        **{k: two[k][:1] for k in ("input_ids", "attention_mask", "labels")},
    }
    ref = model(one_view).losses["lm"]
    logits_a, seq_a = lm_logits(model, two)
    logits_b, _ = lm_logits(model, other_pad)
    logits_c, seq_c = lm_logits(model, one_view)
    assert torch.equal(logits_a, logits_b)
    n = int(seq_c.attention_mask.sum())
    assert int(seq_a.attention_mask[0].sum()) == n  # padded view's tokens are dropped
    assert torch.allclose(logits_a[0, -n:], logits_c[0, -n:], atol=1e-5)
    model.train()
    loss_one = model(one_view).losses["lm"]
    assert torch.allclose(ref, loss_one)
    gen = make_batch(tok, n=1, generation=True, view_mask=[[True, False]])
    gen_garbage = {
        **gen,
        "pixel_values": gen["pixel_values"] + 3.0 * torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1),
    }
    assert model.generate(gen, max_new_tokens=5) == model.generate(gen_garbage, max_new_tokens=5)


def test_a_sample_without_any_view_is_an_error(tok):
    model = build(tiny_config(views=2), tok)
    batch = make_batch(tok, n=2, view_mask=[[False, False], [True, True]])
    with pytest.raises(DataError, match=r"rows \[0\]"):
        model(batch)


def test_loss_counts_target_tokens_only(tok):
    model = build(tiny_config(), tok)
    batch = make_batch(tok)
    out = model(batch)
    assert out.n_target_tokens == int((batch["labels"] != IGNORE_INDEX).sum())
    _, seq = lm_logits(model, batch)
    n_visual = model.vision.num_views * 17  # 16 patches + CLS per view at 32 px / patch 8
    n_prompt = int(
        (batch["labels"][0] == IGNORE_INDEX).logical_and(batch["attention_mask"][0] == 1).sum()
    )
    for row in range(3):
        start = int((seq.attention_mask[row] == 0).sum())  # left padding
        labelled = (seq.labels[row] != IGNORE_INDEX).nonzero().flatten()
        # Labels start right after the visual tokens and the prompt, and cover the target.
        assert int(labelled[0]) == start + n_visual + n_prompt
        assert len(labelled) == int((batch["labels"][row] != IGNORE_INDEX).sum())
    # The loss is the mean next-token cross-entropy over exactly those tokens.
    logits, _ = lm_logits(model, batch)
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), seq.labels[:, 1:].reshape(-1)
    )
    model.eval()
    assert torch.allclose(model(batch).losses["lm"], manual, atol=1e-6)


def test_auxiliary_losses_appear_when_weighted(tok):
    model = build(tiny_config(lambda_align=0.5, lambda_kp=1.0), tok)
    batch = make_batch(tok)
    plain = model(batch)
    assert set(plain.losses) == {"lm"}
    full = model(batch, lambda_align=0.5, lambda_kp=2.0)
    assert set(full.losses) == {"lm", "align", "kp"}
    expected = full.losses["lm"] + 0.5 * full.losses["align"] + 2.0 * full.losses["kp"]
    assert torch.allclose(full.loss, expected)
    assert model.predict_keyphrases(batch).shape == (3, len(KEYPHRASES))
    with pytest.raises(DataError, match="aux_ids"):
        model({**batch, "aux_ids": None}, lambda_align=0.5)


def test_alignment_without_memory_is_rejected_at_build(tok):
    with pytest.raises(ConfigError, match="memory"):
        build(tiny_config(memory=False, lambda_align=0.5), tok)
    with pytest.raises(ConfigError, match="key-phrase vocabulary"):
        build(tiny_config(lambda_kp=1.0), tok, keyphrases=())


# ---------------------------------------------------------------- trainability

ALL_FROZEN = Trainable(
    vision="frozen", projector="frozen", memory="frozen", llm="frozen", keyphrase_head="frozen"
)
# Build every model with LoRA on both towers so each mode below is available.
LORA_BOTH = Trainable(vision="lora", llm="lora")


def _train_steps(model, batch, steps=3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        out = model(batch, lambda_align=0.5, lambda_kp=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()


@pytest.mark.parametrize(
    ("component", "mode"),
    [
        ("vision", "full"),
        ("vision", "lora"),
        ("projector", "full"),
        ("memory", "full"),
        ("llm", "full"),
        ("llm", "lora"),
        ("keyphrase_head", "full"),
    ],
)
def test_only_the_trainable_component_changes(tok, component, mode):
    cfg = tiny_config(stages=(LORA_BOTH,), lambda_align=0.5, lambda_kp=1.0)
    model = build(cfg, tok)
    trainable = _replace(ALL_FROZEN, **{component: mode})
    model.set_trainable(trainable)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():  # open the gate so the memory receives gradients from step one
        model.memory.gate.fill_(0.3)
        before["memory.gate"] = model.memory.gate.detach().clone()
    _train_steps(model, make_batch(tok))
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    expected = {k for k, v in model.named_parameters() if v.requires_grad}
    assert expected, "nothing was trainable"
    assert changed == expected
    assert all(k.startswith(component + ".") for k in expected)
    if mode == "lora":
        assert all("lora_" in k or k.endswith("view_embedding") for k in expected)


def _replace(t: Trainable, **kw) -> Trainable:
    from dataclasses import replace

    return replace(t, **kw)


def test_frozen_everything_and_lora_on_small_parts_are_rejected(tok):
    model = build(tiny_config(), tok)
    with pytest.raises(ConfigError, match="trains nothing"):
        model.set_trainable(ALL_FROZEN)
    with pytest.raises(ConfigError, match=r"trainable.projector: 'lora'"):
        model.set_trainable(Trainable(projector="lora"))
    with pytest.raises(ConfigError, match="without LoRA"):
        model.set_trainable(Trainable(vision="lora"))  # the stages never asked for vision LoRA


def test_lora_wrapping_leaves_base_weights_and_outputs_identical(tok):
    cfg = tiny_config()
    torch.manual_seed(0)
    llm = build_tiny_llm(cfg.model.llm, tok)
    base = {k: v.clone() for k, v in llm.state_dict().items()}
    ids = torch.tensor([[1, 5, 9, 11, 4]])
    llm.eval()
    ref = llm(input_ids=ids).logits
    wrapped = apply_lora(llm, LoraSettings(r=4, alpha=8, dropout=0.0))
    after = wrapped.state_dict()
    for key, value in base.items():
        new_key = key
        if key not in after:  # wrapped linear layers keep their weight under base_layer
            stem, _, leaf = key.rpartition(".")
            new_key = f"{stem}.base_layer.{leaf}"
        assert torch.equal(after[new_key], value), key
    assert any("lora_A" in k for k in after)
    assert torch.equal(wrapped(input_ids=ids).logits, ref)


def test_lora_target_that_does_not_exist_names_the_valid_ones(tok):
    llm = build_tiny_llm(tiny_config().model.llm, tok)
    with pytest.raises(ConfigError, match=r"\['c_attn'\] not found.*q_proj"):
        apply_lora(llm, LoraSettings(target_modules=("q_proj", "c_attn")))
