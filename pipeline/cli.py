"""The `gft` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_build_default(args: argparse.Namespace) -> int:
    from pipeline.embedded import build_embedded_assets

    assets = build_embedded_assets(args.out)
    print(f"embedded task, tokenizer and tiny base model written to {assets.root}")
    for name, path in {**assets.data_files, "base_model": assets.base_model}.items():
        print(f"  {name:<10} {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_recipe
    from pipeline.run import run, summary

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    config = load_recipe(args.recipe, overrides)
    result = run(config)
    print(summary(result, config.eval.pass_k))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gft",
        description="Group Fine-Tuning then GRPO post-training on Ray (arXiv 2604.14258).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a recipe's stages (default: the embedded miniature)")
    run.add_argument("recipe", nargs="?", help="recipe YAML; omitted: the embedded default")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. stages.gft.lr=1e-6")
    run.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    run.set_defaults(handler=_cmd_run)

    build = commands.add_parser(
        "build-default", help="write the embedded task (parquet), tokenizer and tiny Qwen2 base model"
    )
    build.add_argument("--out", type=Path, default=Path("runs/embedded"), help="output folder")
    build.set_defaults(handler=_cmd_build_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.configio import ConfigError
    from pipeline.data import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    # a recipe path and key=value overrides share the positional slots
    if argv[:1] == ["run"] and len(argv) > 1 and "=" in argv[1]:
        argv.insert(1, "")
    args = build_parser().parse_args(argv)
    if getattr(args, "recipe", None) == "":
        args.recipe = None
    try:
        return args.handler(args)
    except (ConfigError, DataError) as err:
        print(f"gft: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
