"""The training recipe's steps on their own (``s2d_align.training.pipeline``), and the shared
cache's resolver and key (``s2d_align.training.cache``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from training_fixtures import cache_root, tiny_config

from s2d_align.training.cache import resolve_cache_root, shared_cache_key
from s2d_align.training.checkpoint import RunState
from s2d_align.training.loop import LOG_FILE, plan_stages
from s2d_align.training.pipeline import (
    Restored,
    RunSetup,
    Trained,
    build_run_model,
    build_vocabularies,
    finalize,
    finished_result,
    load_data,
    make_loop_env,
    open_run_dir,
    restore,
    train_stages,
)
from s2d_align.training.prompts import PromptBuilder
from s2d_align.training.result import TrainResult
from s2d_align.training.run_dir import ADAPTER_DIR, CONFIG_FILE, RESULT_FILE
from s2d_align.utils.io import read_json, write_jsonl


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """The recipe run by hand up to the model: (run, data, plans, vocabularies, store, model)."""
    cfg = tiny_config()
    run = RunSetup(cfg, tmp_path_factory.mktemp("recipe") / "run", cache_root(tmp_path_factory))
    open_run_dir(run)
    data = load_data(run)
    plans = plan_stages(cfg)
    vocabs, store = build_vocabularies(run, data, plans)
    model = build_run_model(run, data, vocabs)
    return run, data, plans, vocabs, store, model


@pytest.mark.slow
def test_data_and_vocabulary_steps_build_what_the_model_step_needs(steps):
    run, data, _plans, vocabs, _store, model = steps
    assert (run.run_dir / CONFIG_FILE).is_file()
    assert len(data.dataset("train")) == 32 == run.cfg.data.synth.n_train
    assert (run.run_dir / "tokenizer" / "tokenizer.json").is_file()
    # The s2d stages use key phrases: the vocabulary is built, saved, and sizes the model's head.
    assert 0 < len(vocabs.keyphrases) <= run.cfg.model.keyphrase_vocab
    assert read_json(run.run_dir / "keyphrase_vocab.json")["vocab"] == vocabs.keyphrases
    assert model.keyphrase_head.classifier.out_features == len(vocabs.keyphrases)
    assert model.llm.get_input_embeddings().num_embeddings >= len(vocabs.tokenizer)
    # The model step is seeded: building it again gives the same initial weights.
    again = build_run_model(run, data, vocabs).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again[name]), name


@pytest.mark.slow
def test_a_fresh_restore_starts_at_step_zero_and_finished_stages_train_nothing(steps):
    run, data, plans, vocabs, store, model = steps
    write_jsonl(run.run_dir / LOG_FILE, [{"step": 1, "loss": 9.0}])  # a stale log, no checkpoint
    restored = restore(run, model)
    assert restored.state.global_step == 0 and restored.resumed_from is None
    assert not (run.run_dir / LOG_FILE).exists()
    builder = PromptBuilder(vocabs.tokenizer, run.cfg.prompt, run.cfg.model.llm.max_length)
    env = make_loop_env(run, data, model, builder, store, vocabs.keyphrases)
    done = RunState(stage_index=len(plans) - 1, stage_done=True, global_step=12, samples=48)
    trained = train_stages(env, plans, Restored(done))
    assert trained.state.global_step == 12 and trained.samples == 0  # no stage ran again
    assert not (run.run_dir / LOG_FILE).exists()


@pytest.mark.slow
def test_finalize_writes_the_result_and_refuses_a_run_that_stopped_short(steps):
    run, _data, plans, _vocabs, _store, model = steps
    short = Trained(RunState(global_step=5), seconds=1.0, samples=20)
    with pytest.raises(RuntimeError, match="run ended at step 5, expected 12"):
        finalize(run, model, plans, short)
    assert not (run.run_dir / RESULT_FILE).exists()  # the folder is not marked finished
    assert finished_result(run) is None
    full = Trained(RunState(global_step=12, samples=48, target_tokens=700), seconds=2.0, samples=48)
    result = finalize(run, model, plans, full, resumed_from=6)
    assert (run.run_dir / ADAPTER_DIR).is_dir()
    assert TrainResult.from_dict(read_json(run.run_dir / RESULT_FILE)) == result
    assert (result.total_steps, result.samples_seen, result.tokens_seen) == (12, 48, 700)
    assert result.samples_per_s == 24.0 and result.resumed_from_step == 6
    assert [s["name"] for s in result.stages] == [p.name for p in plans]
    assert finished_result(run) == result  # run_training now returns it without training


# ----------------------------------------------------------------------------- the shared cache
def test_the_cache_root_is_the_given_one_else_the_default_else_the_environment(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("S2D_CACHE", str(tmp_path / "env"))
    assert resolve_cache_root(str(tmp_path / "given")) == tmp_path / "given"
    assert resolve_cache_root(None, default=tmp_path / "grid") == tmp_path / "grid"
    assert resolve_cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("S2D_CACHE")
    assert resolve_cache_root(None) == Path.home() / ".cache" / "s2d-align"


def test_configs_share_caches_exactly_when_data_towers_prompts_and_labeler_agree():
    cfg = tiny_config()
    same = tiny_config("train.lr=0.01", "seed=3")  # training settings build no shared cache
    other_data = tiny_config("data.synth.n_train=40")
    other_llm = tiny_config("model.llm.pretrain_steps=9")
    assert shared_cache_key(cfg) == shared_cache_key(same)
    assert len({shared_cache_key(c) for c in (cfg, same, other_data, other_llm)}) == 3
    bigger = dataclasses.replace(cfg.prompt, instruction=cfg.prompt.instruction + " Be brief.")
    assert shared_cache_key(dataclasses.replace(cfg, prompt=bigger)) != shared_cache_key(cfg)
