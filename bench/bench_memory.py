"""Peak resident memory of a default run and of a smollm2-cpu run, each in its own process.

Each run is a fresh Python process (``bench/rss_run.py``, one torch thread): it imports the
package, trains a shortened run from the shared caches (default: 24 steps; smollm2-cpu: 3
steps, one per stage, its frozen vision tower left at its random start instead of the cached
label pre-training), loads the finished run and generates test studies with the run's own
context. Its peak RSS (``getrusage``) is the figure: imports, model, optimizer state, cached
images, generation; not the one-time cache builds (a grid makes those in its parent process
first). A step holds the same tensors at step 3 as at step 300, so a shortened run peaks where
the full one does.

Targets: default < 1 GiB, smollm2-cpu < 3 GiB, the preset as shipped (it inherits
``model.trainable.llm: full`` from the default preset, so AdamW keeps two moments for all
135M SmolLM2 weights; see the README).
"""

from __future__ import annotations

import pytest
from common import SMOLLM2_RUN_OVERRIDES, measured_run, prepare
from targets import Target, record

GIB = 1024.0  # MiB


def _record(benchmark, name: str, report: dict, limit_gib: float) -> None:
    gib = report["peak_rss_mib"] / GIB
    record(
        benchmark,
        Target(
            name,
            gib,
            limit_gib,
            "<=",
            f"{report['peak_rss_mib']:.0f} MiB peak ({report['peak_rss_after_training_mib']:.0f} "
            f"by the end of training); {report['train_steps']} steps in "
            f"{report['train_s']:.0f} s, {report['generated_studies']} test studies generated "
            f"in {report['generate_s']:.0f} s ({report['context']})",
            note=f"overrides {report['overrides']}",
        ),
    )
    benchmark.extra_info.update(report)


@pytest.mark.benchmark(group="memory")
def test_peak_rss_default(benchmark, default_run):
    report = benchmark.pedantic(dict, args=(default_run,), rounds=1, iterations=1)
    assert report["train_steps"] > 0 and report["generated_studies"] > 0
    _record(benchmark, "rss-default", report, 1.0)


@pytest.mark.benchmark(group="memory")
def test_peak_rss_smollm2(benchmark, tmp_path):
    prepare("smollm2-cpu", SMOLLM2_RUN_OVERRIDES)
    report = benchmark.pedantic(
        measured_run,
        args=("smollm2-cpu", tmp_path / "smollm2-run", SMOLLM2_RUN_OVERRIDES),
        kwargs={"generate": 16},
        rounds=1,
        iterations=1,
    )
    assert report["train_steps"] == 3 and report["generated_studies"] == 16
    _record(benchmark, "rss-smollm2", report, 3.0)
