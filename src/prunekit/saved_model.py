"""Reports for a saved model: ``prunekit report model.pt``.

A saved model carries the recipe that made it, so the model is rebuilt from its zoo name or
factory, its masked weights are loaded, and the schemes are re-resolved from the recipe's
target rules (only to price their storage: every figure is measured from the weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import models
from .errors import DataError
from .io import load_checkpoint
from .masks import load_masked_state_dict
from .pipeline import MODEL_FORMAT
from .recipe import load_recipe
from .report import build_report, format_report, write_report
from .report.counting import layers_from_targets
from .targets import resolve


def load_saved_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model stored at ``path`` (masks attached) and the checkpoint's metadata."""
    saved = load_checkpoint(path)
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise DataError(f"{path} is not a prunekit model file (expected format {MODEL_FORMAT})")
    spec = saved["model"]
    kwargs = dict(spec.get("kwargs") or {})
    if ":" not in spec["name"]:
        kwargs.setdefault("num_classes", saved["num_classes"])
        kwargs.setdefault("input_shape", tuple(saved["input_shape"]))
    model = models.from_spec(spec["name"], **kwargs)
    load_masked_state_dict(model, saved["state_dict"])
    return model, saved


def report_saved_model(path: Path, out_dir: str | Path | None = None,
                       echo=print) -> dict[str, Any]:
    model, saved = load_saved_model(path)
    recipe = load_recipe(text=saved["recipe"], path=f"{path}[recipe]")
    targets = resolve(model, recipe["prune"]["targets"]) if recipe["prune"] else []
    example = torch.zeros(1, *saved["input_shape"])
    report = build_report(
        model, example, layers=layers_from_targets(targets),
        accuracy_dense=saved["accuracy"]["dense"],
        accuracy_compressed=saved["accuracy"]["compressed"],
        method=recipe["prune"]["method"] if recipe["prune"] else None,
    )
    echo(format_report(report))
    if out_dir is not None:
        write_report(out_dir, report)
        echo(f"report written to {Path(out_dir).resolve()}")
    return report
