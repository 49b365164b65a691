"""What the benchmark needs before it can measure anything: models that read the image, and
ablations whose removed component can act while every other difference is held fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import cache_root, tiny_config

from s2d_align.config import load_config
from s2d_align.harness.variants import available_variants, load_variant
from s2d_align.training.collate import Collator, resolve_inference_context
from s2d_align.training.data import ResumableBatchSampler
from s2d_align.training.pipeline import run_training

PARTS = ("vision", "projector", "memory", "llm", "keyphrase_head")


# ----------------------------------------------------------------------------- trainability
@pytest.mark.parametrize("preset", ["default", "smoke", "iu-xray", "mimic-cxr"])
@pytest.mark.parametrize("variant", available_variants())
def test_variants_keep_the_presets_per_tower_trainability(preset, variant):
    if preset in ("iu-xray", "mimic-cxr"):
        pytest.importorskip("transformers")
    try:
        cfg = load_variant(variant).config(preset, 0)
    except Exception as exc:  # real-data presets need local paths only to run, not to resolve
        pytest.fail(f"{variant} on {preset} does not resolve: {exc}")
    base = load_config(preset).model.trainable
    assert cfg.model.trainable == base
    for stage in cfg.stages:
        resolved = cfg.stage_trainable(stage)
        for part in PARTS:
            if getattr(stage.trainable, part) is None:  # the variant did not name the key
                assert getattr(resolved, part) == getattr(base, part), (variant, stage.name, part)


def test_iu_xray_vision_stays_frozen_in_s2d_and_sft():
    for variant in ("s2d", "sft"):
        cfg = load_variant(variant).config("iu-xray", 0)
        assert {cfg.stage_trainable(s).vision for s in cfg.stages} == {"frozen"}


def test_a_stage_overrides_only_the_part_it_names():
    cfg = tiny_config("stages.2.trainable.vision=full")
    last = cfg.stage_trainable(cfg.stages[2])
    assert last.vision == "full"
    assert last.llm == cfg.model.trainable.llm
    assert cfg.stage_trainable(cfg.stages[0]).vision == cfg.model.trainable.vision


# ----------------------------------------------------------------------------- the image matters
def _model_and_batch(folder, *overrides, variant="sft"):
    from model_fixtures import make_tokenizer

    from s2d_align.models import build_model

    cfg = tiny_config(*overrides, variant=variant)
    tok = make_tokenizer(folder)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    size = cfg.data.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 1, 1, size, size, generator=gen)
    ids = tok("Findings: no", add_special_tokens=False)["input_ids"]
    batch = {
        "pixel_values": pixels,
        "view_mask": torch.ones(2, 1, dtype=torch.bool),
        "input_ids": torch.tensor([ids, ids]),
        "attention_mask": torch.ones(2, len(ids), dtype=torch.long),
    }
    return model, batch


def _next_token_logits(model, batch):
    with torch.no_grad():
        enc = model.encode(batch["pixel_values"], batch["view_mask"])
        seq = model._assemble(enc, batch, None)
        return model.llm(inputs_embeds=seq.embeds, attention_mask=seq.attention_mask).logits[:, -1]


def test_the_next_token_depends_on_the_image(tmp_path):
    model, batch = _model_and_batch(tmp_path)
    logits = _next_token_logits(model, batch)
    assert not torch.allclose(logits[0], logits[1])  # same prompt, different images
    swapped = dict(batch, pixel_values=batch["pixel_values"].flip(0))
    assert torch.allclose(_next_token_logits(model, swapped), logits.flip(0), atol=1e-5)


def test_the_image_blind_control_cannot_see_the_image(tmp_path):
    model, batch = _model_and_batch(tmp_path, variant="sft-blind")
    logits = _next_token_logits(model, batch)
    assert torch.allclose(logits[0], logits[1])


# ----------------------------------------------------------------------------- contexts
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("sft", "image"),
        ("s1+s2", "image+reference"),
        ("s2d", "image+reference+predicted_keyphrases"),
        ("d2s", "image"),  # its last stage is image-only: tested the way it ended training
        ("multitask", "image+reference+predicted_keyphrases"),
    ],
)
def test_each_variant_is_generated_with_its_final_stages_context(variant, expected):
    cfg = load_variant(variant).config("smoke", 0)
    assert resolve_inference_context(cfg).name == expected


# ----------------------------------------------------------------------------- data order
def test_the_batch_order_is_one_stream_over_the_whole_run():
    a = ResumableBatchSampler(40, 4, seed=3)
    b = ResumableBatchSampler(40, 4, seed=3, start=7)  # a later stage starting at micro-batch 7
    first = [next(iter(ResumableBatchSampler(40, 4, seed=3, start=k))) for k in range(12)]
    assert next(iter(b)) == first[7]
    assert a.global_batch(0)[0].tolist() == [i for i, _, _ in first[0]]


@pytest.mark.slow
def test_every_variant_sees_the_same_samples_at_the_same_steps(
    tmp_path_factory, tmp_path, monkeypatch
):
    seen: list[list[str]] = []
    original = Collator.__call__

    def spy(self, items):
        if not self.generate:
            seen.append([it.study.id for it in items])
        return original(self, items)

    monkeypatch.setattr(Collator, "__call__", spy)
    orders = {}
    for variant in ("sft", "s2d", "d2s"):
        seen.clear()
        cfg = tiny_config("train.total_steps=9", variant=variant)
        run_training(
            cfg, tmp_path / variant, progress=False, cache_root=cache_root(tmp_path_factory)
        )
        orders[variant] = list(seen)
    assert len(orders["sft"]) == 9
    assert orders["s2d"] == orders["sft"] == orders["d2s"]


# ----------------------------------------------------------------------------- retrieval
@pytest.mark.slow
def test_every_variant_retrieves_with_the_one_shared_encoder(tmp_path_factory, tmp_path):
    from s2d_align.training.retrieval import load_neighbours, nearest_train_reports

    cache = cache_root(tmp_path_factory)
    neighbours = {}
    for variant in ("s2d", "d2s", "multitask"):
        cfg = tiny_config("train.total_steps=6", variant=variant)
        run_training(cfg, tmp_path / variant, progress=False, cache_root=cache)
        folder = tmp_path / variant / "retrieval"
        neighbours[variant] = load_neighbours(folder)
        emb = load_file(folder / "index.safetensors")["embeddings"]
        neighbours[variant + "/emb"] = emb
    assert neighbours["s2d"] == neighbours["d2s"] == neighbours["multitask"]
    assert torch.equal(neighbours["s2d/emb"], neighbours["d2s/emb"])
    # The nn-retrieval reference row reads the same neighbours, without any training.
    cfg = tiny_config()
    rows = nearest_train_reports(cfg, cache, "test")
    from s2d_align.training.data import load_run_annotation

    ann = load_run_annotation(cfg, cache)
    train = {s.id: s.report for s in ann.split("train")}
    assert rows == {sid: train[hits[0]] for sid, hits in neighbours["s2d"]["test"].items()}


# ----------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_memory_weights_reach_stage_two_unchanged(tmp_path_factory, tmp_path):
    from s2d_align.training.checkpoint import latest_checkpoint
    from s2d_align.training.loop import plan_stages

    cfg = tiny_config("train.total_steps=6", variant="s2d")
    run = tmp_path / "s2d"
    stage_end, stage_start = {}, {}

    def watch(info):
        if info.stage_step == plan_stages(cfg)[info.stage_index].steps:  # a stage-end checkpoint
            ckpt = load_file(latest_checkpoint(run) / "model.safetensors")
            stage_end[info.stage_index] = {k: v for k, v in ckpt.items() if k.startswith("memory.")}

    from s2d_align.models.s2d import S2DModel

    original = S2DModel.set_trainable

    def spy(self, trainable):
        if self.memory is not None:
            stage_start[len(stage_start)] = {
                f"memory.{k}": v.detach().clone() for k, v in self.memory.state_dict().items()
            }
        return original(self, trainable)

    import unittest.mock as mock

    with mock.patch.object(S2DModel, "set_trainable", spy):
        run_training(
            cfg, run, progress=False, cache_root=cache_root(tmp_path_factory), callbacks=[watch]
        )
    assert set(stage_end[0]) == set(stage_start[1])
    for key, value in stage_end[0].items():
        assert torch.equal(value, stage_start[1][key]), key


# ----------------------------------------------------------------------------- vision tower
def test_vision_pretraining_is_cached_deterministic_and_leaves_the_rng_alone(tmp_path_factory):
    from s2d_align.training.data import load_run_annotation
    from s2d_align.training.vision_init import initial_vision_state

    cfg = tiny_config()
    assert cfg.model.vision.pretrain_steps > 0
    cache = tmp_path_factory.mktemp("vision-cache")
    ann = load_run_annotation(cfg, cache_root(tmp_path_factory))
    torch.manual_seed(5)
    miss = initial_vision_state(cfg, ann, cache)
    after_miss = torch.rand(3)
    torch.manual_seed(5)
    hit = initial_vision_state(cfg, ann, cache)
    after_hit = torch.rand(3)
    assert torch.equal(after_miss, after_hit)
    assert miss.keys() == hit.keys() and all(torch.equal(miss[k], hit[k]) for k in miss)
    folders = list(cache.glob("tiny-vision-*"))
    assert len(folders) == 1
    meta = __import__("json").loads((folders[0] / "meta.json").read_text())
    assert meta["n_images"] == len(ann.split("train"))  # the train split only
    fresh = tmp_path_factory.mktemp("vision-cache-2")
    again = initial_vision_state(cfg, ann, fresh)
    assert all(torch.equal(miss[k], again[k]) for k in miss)


def test_the_pretrained_tower_separates_labels_it_was_trained_on():
    """A label pre-training on images whose class is visible learns it (sanity of the recipe)."""
    from s2d_align.models.vision_pretrain import train_tiny_vision

    cfg = tiny_config("model.vision.pretrain_steps=60")
    size = cfg.data.image_size
    rng = np.random.default_rng(0)
    n = 64
    targets = (rng.random((n, 2)) < 0.5).astype(np.float32)
    pixels = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    pixels[targets[:, 0] > 0, :, : size // 2] += 150  # class 0: a bright upper half
    pixels[targets[:, 1] > 0, :, :, size // 2 :] += 90  # class 1: a bright right half
    state, log = train_tiny_vision(cfg, pixels, np.ones(n, dtype=np.int64), targets)
    assert log["loss"][-1][1] < log["loss"][0][1] * 0.5
    assert state
