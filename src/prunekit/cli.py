"""The ``prunekit`` command line.

    prunekit compress RECIPE.yaml --out DIR [--set section.key=value ...] [--resume] [--force]
    prunekit report  MODEL [--out DIR]                   [--model SPEC [--model-kwargs YAML]]
    prunekit export  MODEL --onnx OUT.onnx [--opset N] [--static-batch] [--no-shrink] [--model ...]
    prunekit bench   MODEL [--batch N] [--repeats N]    [--model SPEC [--model-kwargs YAML]]

MODEL is a ``model.pkz`` file or the run directory that holds one. A model built by the
user's own factory is rebuilt from the factory named on the command line (``--model``) or
in the run directory's recipe, never from a name found only inside the file (see
:mod:`prunekit.commands`). The current directory is searched last for such a module, as
``python -m`` would, so ``--model mymodels:cnn`` finds ``./mymodels.py``.

Errors a user can fix (bad recipe, missing data, unknown layer) print one line and exit 2;
Ctrl-C during ``compress`` prints the command that resumes the run and exits 130; nothing
else is caught, so a genuine bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .errors import PrunekitError

#: exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130
MODEL_HELP = "model.pkz written by `prunekit compress`, or the run directory holding it"


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument(
        "--model", dest="model_spec", metavar="MODULE:FUNCTION",
        help="build the model with this factory (or zoo name) before loading the weights: "
             "needed for a model.pkz whose model your own code builds")
    parser.add_argument(
        "--model-kwargs", metavar="YAML",
        help="the factory's keyword arguments as a YAML mapping, e.g. '{width: 32}' "
             "(default: those recorded in the file)")


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
                          help="continue an interrupted run in --out from its last checkpoint "
                               "(refused when the plan differs from the one recorded there)")
    compress.add_argument("--force", action="store_true",
                          help="replace the run already in --out, or resume it with another "
                               "plan")
    compress.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = sub.add_parser("report", help="per-layer table, totals and plots of a saved model")
    _model_options(report)
    report.add_argument("--out", help="also write report.json/report.md/plots into this directory")

    export = sub.add_parser("export", help="export a saved model to ONNX (needs prunekit[onnx])")
    _model_options(export)
    export.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    export.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    export.add_argument("--static-batch", action="store_true",
                        help="fix the batch axis to 1 (default: dynamic, any batch size)")
    export.add_argument("--shrink", action=argparse.BooleanOptionalAction, default=True,
                        help="remove dead (pruned) channels so the file is physically "
                             "smaller, when the outputs stay equal (default: on)")

    bench = sub.add_parser("bench", help="dense vs compiled CPU latency of a saved model")
    _model_options(bench)
    bench.add_argument("--batch", type=int, default=1, help="input batch size (default 1)")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls (median; default 20)")
    bench.add_argument("--plan-cache", metavar="DIR",
                       help="keep compile's measured plans here: a second bench of the same "
                            "model and shape measures nothing again")
    return parser


def resume_command(argv: list[str]) -> str:
    """The command line that continues the ``compress`` run of ``argv``: the same arguments
    with ``--resume`` (and without ``--force``: the run is there now), quoted for a POSIX
    shell."""
    args = [a for a in argv if a not in ("--resume", "--force")]
    return shlex.join(["prunekit", *args, "--resume"])


def _compress(args: argparse.Namespace, argv: list[str]) -> int:
    from .pipeline import run_recipe  # noqa: PLC0415
    from .recipe import load_recipe  # noqa: PLC0415

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run_recipe(recipe, args.out, resume=args.resume, progress=not args.no_progress,
                   force=args.force)
    except KeyboardInterrupt:
        print(f"\nprunekit: interrupted; continue with: {resume_command(argv)}",
              file=sys.stderr)
        return INTERRUPTED
    return 0


def _saved_model_command(args: argparse.Namespace) -> None:
    from . import commands  # noqa: PLC0415

    source = {"model_spec": args.model_spec,
              "model_kwargs": commands.parse_model_kwargs(args.model_kwargs)}
    if args.command == "report":
        commands.report(args.model, args.out, **source)
    elif args.command == "export":
        commands.export(args.model, args.onnx, opset=args.opset,
                        dynamic_batch=not args.static_batch, shrink=args.shrink, **source)
    else:
        commands.bench(args.model, batch=args.batch, repeats=args.repeats,
                       plan_cache=args.plan_cache, **source)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # like `python -m`, but after every installed package
        sys.path.append(os.getcwd())
    try:
        if args.command == "compress":
            return _compress(args, argv)
        _saved_model_command(args)
    except PrunekitError as exc:
        print(f"prunekit: error: {str(exc).rstrip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, not a traceback; every file is written atomically
        print(f"\nprunekit: {args.command} interrupted", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
