"""One shortened run in its own process, for its peak memory: ``python bench/rss_run.py PRESET
OUT [--override KEY=VALUE ...] [--generate N]``.

Trains ``PRESET`` into ``OUT`` (the shared caches must exist: the bench builds them first, in
its own process, as a grid does before its runs), loads the finished run, generates the first
N test studies with the run's own context and batch size, and prints one JSON line: peak RSS
(``getrusage``, the whole process, imports included) and the seconds of each part. Torch
runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB, macOS: bytes
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("out", type=Path)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--generate", type=int, default=64, help="test studies to generate")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    from common import GenerateSpy, cache_root, config, split_inputs

    from s2d_align.inference.generate import load_run
    from s2d_align.inference.passes import generate_rows
    from s2d_align.training.distributed import torch_threads
    from s2d_align.training.pipeline import run_training

    cfg = config(args.preset, args.override)
    imported = time.perf_counter()
    # one torch thread whatever the preset says: memory does not depend on it, and a shared
    # 2-core machine runs a one-thread process several times faster than a two-thread one
    with torch_threads(1):
        result = run_training(cfg, args.out, progress=False, cache_root=cache_root())
        trained = time.perf_counter()
        train_peak = _peak_mib()
        run = load_run(args.out, cache_root=cache_root())
        dataset, store, ctx = split_inputs(run, "test", args.generate)
        spy = GenerateSpy(run.model.llm, run.tokenizer.eos_token_id)
        begin = time.perf_counter()
        rows = generate_rows(
            run.model, dataset, run.builder, store, ctx, run.cfg.inference, dist=run.dist
        )
        generated = time.perf_counter()
    peak_mib = _peak_mib()
    report = {
        "preset": args.preset,
        "overrides": args.override,
        "run_dir": str(args.out),
        "peak_rss_mib": round(peak_mib, 1),
        "peak_rss_after_training_mib": round(train_peak, 1),
        "import_s": round(imported - started, 2),
        "train_s": round(trained - imported, 2),
        "train_steps": result.total_steps,
        "samples_per_s": result.samples_per_s,
        "generate_s": round(generated - begin, 2),
        "generated_studies": len(rows),
        "generated_tokens": spy.tokens,
        "context": ctx.name,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
