"""``s2d-align data synth``: generate the SynthCXR benchmark (and optionally its example figure)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from s2d_align.cli.vocab import add_jobs, command, option
from s2d_align.config.schema import SynthConfig


def register(group: argparse._SubParsersAction) -> None:
    defaults = SynthConfig()
    parser = command(
        group,
        "synth",
        help="generate the SynthCXR benchmark (images, reports, ground truth)",
        description=(
            "Write SynthCXR into --data-dir: images/*.png, annotation.json (R2Gen format), "
            "ground_truth.json (CheXpert labels, key phrases, findings) and synth_meta.json. "
            "The same seed and settings give byte-identical files, whatever --jobs is."
        ),
        example="s2d-align data synth --data-dir data/synth --n-train 200 --jobs 4 "
        "--figure synth.png",
    )
    option(
        parser,
        "--data-dir",
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="dataset folder to write (empty, or an earlier SynthCXR)",
    )
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="train studies")
    parser.add_argument("--n-val", type=int, default=defaults.n_val, help="validation studies")
    parser.add_argument("--n-test", type=int, default=defaults.n_test, help="test studies")
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument(
        "--views", type=int, choices=(1, 2), default=defaults.views, help="1 frontal, 2 + lateral"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="dataset seed")
    add_jobs(parser, "rendering processes", "--workers", type=int, default=1)
    parser.add_argument(
        "--force", action="store_true", help="replace a SynthCXR dataset already in --data-dir"
    )
    parser.add_argument("--figure", type=Path, help="also write a grid of examples to this PNG")
    parser.add_argument("--figure-n", type=int, default=8, help="examples in the figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from s2d_align.data.synth import (
        generate_synthcxr,
        is_complete,
        plot_examples,
    )
    from s2d_align.utils.io import read_json

    # the generator's rules (an empty split is allowed here, unlike in a training config)
    settings = SynthConfig(args.n_train, args.n_val, args.n_test, args.size, args.views, args.seed)
    if is_complete(args.data_dir, settings) and not args.force:
        print(
            f"{args.data_dir}: SynthCXR with these settings is already complete (--force regenerates)"
        )
    else:
        started = time.perf_counter()
        generate_synthcxr(
            args.data_dir,
            **asdict(settings),
            workers=args.jobs,
            progress=not args.no_progress,
            overwrite=args.force,
        )
        elapsed = time.perf_counter() - started
        meta = read_json(args.data_dir / "synth_meta.json")
        studies, patients = meta["studies"], meta["patients"]
        print(
            f"SynthCXR {meta['version']} -> {args.data_dir} in {elapsed:.1f}s: "
            + ", ".join(f"{s} {studies[s]} studies / {patients[s]} patients" for s in studies)
            + f"; No Finding {meta['no_finding_share']:.0%}"
        )
    if args.figure is not None:
        path = plot_examples(args.data_dir, args.figure, n=args.figure_n)
        print(f"figure: {path}")
    return 0
