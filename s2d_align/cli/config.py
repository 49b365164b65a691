"""``s2d-align config show``: a resolved config, with the layer that set each value."""

from __future__ import annotations

import argparse

from s2d_align.cli.vocab import command


def cmd_show(args: argparse.Namespace) -> int:
    from s2d_align.config.provenance import annotated_yaml
    from s2d_align.harness.variants import load_variant, resolve_with_provenance

    variant = load_variant(args.variant) if args.variant else None
    # as `train` resolves it: preset <- variant <- --seed <- key=value overrides
    overrides = [*([f"seed={args.seed}"] if args.seed is not None else []), *args.overrides]
    cfg, sources = resolve_with_provenance(args.preset, variant, overrides)
    chain = " <- ".join(v.name for v in reversed(variant.lineage())) if variant else "none"
    print(f"# preset {args.preset}, variant {chain}, overrides: {' '.join(overrides) or 'none'}")
    print(annotated_yaml(cfg, sources))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "config",
        help="inspect resolved configs",
        example="s2d-align config show --preset smoke --variant s2d train.lr=0.001",
    )
    commands = p.add_subparsers(
        dest="config_command", metavar="SUBCOMMAND", required=True, help="what to do"
    )
    show = command(
        commands,
        "show",
        help="print the resolved config as YAML, each value commented with where it came from "
        "(default, preset, variant:NAME, override)",
        example=[
            "s2d-align config show --preset smoke --variant s2d-no-mem train.lr=0.001",
            "s2d-align config show --preset mimic-cxr --variant s2d --seed 1 > resolved.yaml",
        ],
    )
    show.add_argument("--preset", default="default", help="preset name or YAML path")
    show.add_argument("--variant", help="variant name or YAML path (default: the preset alone)")
    show.add_argument(
        "--seed", type=int, help="training seed, as `train --seed` (default: the preset's)"
    )
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    show.set_defaults(handler=cmd_show)
