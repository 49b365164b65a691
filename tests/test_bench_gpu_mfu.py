"""bench/gpu_mfu.py on its CPU toy size: the JSON a GPU run would print, with its MFU arithmetic.

No GPU figure is produced here; the test only checks that the script runs through the
project's model classes and reports consistent numbers.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gpu_mfu():
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(BENCH))  # bench/ is a folder of scripts, not a package
    try:
        yield importlib.import_module("gpu_mfu")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def tiny_result(gpu_mfu):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = gpu_mfu.main(["--tiny", "--peak-tflops", "0.5"])
    return result, out.getvalue()


@pytest.mark.slow  # builds and trains the toy model (~5-10 s with imports)
def test_tiny_run_prints_the_json_it_returns(tiny_result):
    result, printed = tiny_result
    assert json.loads(printed) == json.loads(json.dumps(result))
    assert result["tiny"] is True and result["device"] == "cpu"
    assert result["attention"] == "sdpa"
    assert result["params_total"] == sum(result["params"].values())
    assert result["params"]["vision"] > 0 and result["params"]["llm"] > 0


@pytest.mark.slow  # builds and trains the toy model (~5-10 s with imports)
def test_mfu_is_counted_flops_per_second_over_the_peak(tiny_result, gpu_mfu):
    result, _ = tiny_result
    train, size = result["train"], gpu_mfu.TINY
    assert train["peak_tflops"] == 0.5 and train["peak_source"] == "--peak-tflops"
    assert train["achieved_tflops"] == pytest.approx(
        train["flops_per_step"] / train["step_s"] / 1e12
    )
    assert train["mfu"] == pytest.approx(train["achieved_tflops"] / 0.5)
    # the LM's linear layers alone cost 6 FLOPs per weight and token (forward + backward);
    # the counted step adds attention, the vision tower, projector and memory on top
    linear = size.layers * (4 * size.width**2 + 3 * size.width * size.mlp)
    linear += size.vocab * size.width  # the (tied) output projection
    tokens = size.batch * size.seq_len
    assert 6 * linear * tokens <= train["flops_per_step"] <= 3 * 6 * linear * tokens
    assert train["tokens_per_step"] == tokens and train["steps"] == size.steps


@pytest.mark.slow  # builds and trains the toy model (~5-10 s with imports)
def test_generation_counts_new_tokens_at_both_batch_sizes(tiny_result, gpu_mfu):
    result, _ = tiny_result
    size = gpu_mfu.TINY
    for rows in (1, size.gen_batch):
        gen = result["generate"][f"batch_{rows}"]
        assert gen["batch"] == rows
        assert 0 < gen["new_tokens"] <= rows * size.gen_tokens
        assert gen["tokens_per_s"] == pytest.approx(gen["new_tokens"] / gen["seconds"])


def test_peak_table_knows_the_chips_and_no_others(gpu_mfu):
    assert gpu_mfu.known_peak("NVIDIA H200") == (989.5, "H200")
    assert gpu_mfu.known_peak("NVIDIA H200 NVL") == (835.5, "H200 NVL")
    assert gpu_mfu.known_peak("NVIDIA H100 80GB HBM3") == (989.5, "H100")
    assert gpu_mfu.known_peak("NVIDIA H100 PCIe") == (756.0, "H100 PCIe")
    assert gpu_mfu.known_peak("NVIDIA A100-SXM4-80GB") == (312.0, "A100")
    assert gpu_mfu.known_peak("Tesla T4") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_full_size_without_a_gpu_stops_with_a_message(gpu_mfu):
    with pytest.raises(SystemExit, match=r"no CUDA device.*--tiny"):
        gpu_mfu.main([])
