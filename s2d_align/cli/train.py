"""``s2d-align train`` and ``s2d-align generate``: one run, then its reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s2d_align.cli.vocab import CACHE_ENV, add_cache, command, env_cache, option
from s2d_align.config import load_config
from s2d_align.errors import ConfigError
from s2d_align.training.signals import inference_contexts
from s2d_align.utils.progress import progress_enabled


def _progress(args: argparse.Namespace) -> bool:
    return progress_enabled(not args.no_progress)


def _variant_config(args: argparse.Namespace):
    """preset <- variant overrides <- seed <- key=value overrides."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={int(args.seed)}")
    if args.variant is None:
        return load_config(args.preset, overrides), None
    from s2d_align.harness.variants import load_variant

    variant = load_variant(args.variant)
    return variant.resolve(args.preset, overrides), variant.name


def _default_out(preset: str, variant: str | None, seed: int) -> Path:
    return Path("results") / "runs" / f"{Path(preset).stem}.{variant or 'preset'}.s{seed}"


def cmd_train(args: argparse.Namespace) -> int:
    from s2d_align.training.collate import check_signal_names
    from s2d_align.training.pipeline import run_training
    from s2d_align.training.run_dir import check_run_folder

    cfg, variant = _variant_config(args)
    check_signal_names(cfg)
    out = Path(args.run) if args.run else _default_out(args.preset, variant, cfg.seed)
    check_run_folder(out)  # never write into a user's folder
    cache = args.cache or env_cache()
    result = run_training(cfg, out, progress=_progress(args), cache_root=cache)
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else ""
    print(
        f"trained {out}: {result.total_steps} steps{resumed}, {result.tokens_seen} target tokens, "
        f"{result.samples_per_s:.1f} samples/s, wall {result.wall_time_s:.1f} s, "
        f"peak RSS {result.peak_rss_mb:.0f} MB"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from s2d_align.inference.generate import generate_for_images, generate_split

    cache = args.cache or env_cache()
    if args.image:
        if args.split or args.out:
            raise ConfigError("generate: --image cannot be combined with --split or --out")
        print(generate_for_images(args.run, args.image, context=args.context, cache_root=cache))
        return 0
    if not args.out:
        raise ConfigError("generate --split needs --out PRED.jsonl (or give --image)")
    rows = generate_split(
        args.run,
        args.split or "test",
        context=args.context,
        progress=_progress(args),
        out=args.out,
        cache_root=cache,
    )
    print(json.dumps({"written": str(args.out), "rows": len(rows), "context": rows[0]["context"]}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "train",
        help="train one run (all stages) into a run folder",
        example=[
            "s2d-align train --preset smoke --variant s2d --seed 0 --run runs/s2d.s0 "
            "train.lr=0.001",
            "(the same command again resumes from the last checkpoint)",
        ],
    )
    p.add_argument(
        "--preset", required=True, help="preset name (s2d_align/ablations/presets) or YAML path"
    )
    p.add_argument(
        "--variant",
        help="variant name (s2d_align/ablations/variants) or YAML path (default: the preset as is)",
    )
    p.add_argument("--seed", type=int, help="training seed (default: the preset's)")
    option(
        p,
        "--run",
        "--out",
        metavar="DIR",
        help="run folder to write or resume (default: results/runs/PRESET.VARIANT.sSEED)",
    )
    add_cache(p, "data, tokenizers and tiny LMs", f"${CACHE_ENV}, else ~/.cache/s2d-align")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(handler=cmd_train)

    p = command(
        sub,
        "generate",
        help="generate reports with a trained run",
        example=[
            "s2d-align generate --run runs/s2d.s0 --split test --out pred.jsonl",
            "s2d-align generate --run runs/s2d.s0 --image frontal.png --image lateral.png",
        ],
    )
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `train`")
    p.add_argument(
        "--split", choices=("train", "val", "test"), help="split to generate (default: test)"
    )
    p.add_argument(
        "--out",
        metavar="PRED.jsonl",
        help="predictions JSONL to write ({id, prediction, reference_ids, keyphrases})",
    )
    p.add_argument(
        "--image", action="append", help="image of a new study (repeat for several views)"
    )
    p.add_argument(
        "--context",
        choices=["auto", *inference_contexts()],
        help="what the prompt holds (default: the run's inference.context)",
    )
    add_cache(p, "data and tokenizers", f"${CACHE_ENV}, else ~/.cache/s2d-align")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_generate)
