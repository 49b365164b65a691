"""``s2d-align config show``: a resolved config, with the layer that set each value."""

from __future__ import annotations

import argparse


def cmd_show(args: argparse.Namespace) -> int:
    from s2d_align.config.provenance import annotated_yaml
    from s2d_align.harness.variants import load_variant, resolve_with_provenance

    variant = load_variant(args.variant) if args.variant else None
    cfg, sources = resolve_with_provenance(args.preset, variant, args.overrides)
    chain = " <- ".join(v.name for v in reversed(variant.lineage())) if variant else "none"
    print(
        f"# preset {args.preset}, variant {chain}, overrides: {' '.join(args.overrides) or 'none'}"
    )
    print(annotated_yaml(cfg, sources))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect resolved configs")
    commands = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = commands.add_parser(
        "show",
        help="print the resolved config as YAML, each value commented with where it came from "
        "(default, preset, variant:NAME, override)",
    )
    show.add_argument(
        "--preset", default="default", help="preset name or YAML path (default: %(default)s)"
    )
    show.add_argument("--variant", help="variant name or YAML path (default: the preset alone)")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    show.set_defaults(handler=cmd_show)
