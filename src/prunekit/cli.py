"""The ``prunekit`` command line.

    prunekit compress RECIPE.yaml --out DIR [--set section.key=value ...] [--resume]
    prunekit report MODEL.pkz [--out DIR]
    prunekit export MODEL.pkz --onnx OUT.onnx [--opset N]
    prunekit bench MODEL.pkz [--batch N] [--repeats N]

Errors a user can fix (bad recipe, missing data, unknown layer) print one line and exit 2;
nothing else is caught, so a genuine bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PrunekitError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit", description="Compress PyTorch models with ADMM and reweighted pruning."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    compress = sub.add_parser("compress", help="run a recipe: train, prune, retrain, report")
    compress.add_argument("recipe", help="recipe YAML file (see recipes/)")
    compress.add_argument("--out", required=True, help="run directory for results")
    compress.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a recipe key; the value is parsed as YAML (repeatable)",
    )
    compress.add_argument("--resume", action="store_true",
                          help="continue an interrupted run in --out from its last checkpoint")
    compress.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = sub.add_parser("report", help="per-layer table, totals and plots of a saved model")
    report.add_argument("model", help="model.pkz written by `prunekit compress`")
    report.add_argument("--out", help="also write report.json/report.md/plots into this directory")

    export = sub.add_parser("export", help="export a saved model to ONNX (needs prunekit[onnx])")
    export.add_argument("model", help="model.pkz written by `prunekit compress`")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    export.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")

    bench = sub.add_parser("bench", help="dense vs compiled CPU latency of a saved model")
    bench.add_argument("model", help="model.pkz written by `prunekit compress`")
    bench.add_argument("--batch", type=int, default=1, help="input batch size (default 1)")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls (median; default 20)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "compress":
            from .pipeline import run_recipe
            from .recipe import load_recipe

            recipe = load_recipe(args.recipe, args.overrides)
            run_recipe(recipe, args.out, resume=args.resume, progress=not args.no_progress)
        elif args.command == "report":
            from .saved_model import report_saved_model

            report_saved_model(Path(args.model), out_dir=args.out)
        elif args.command == "export":
            from .artifacts.onnx_export import export_saved_model

            print(f"wrote {export_saved_model(Path(args.model), Path(args.onnx), args.opset)}")
        elif args.command == "bench":
            from .runtime.bench import bench_saved_model

            bench_saved_model(Path(args.model), batch=args.batch, repeats=args.repeats)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
