"""Assemble a run's report dict and write it into a run directory.

``build_report`` measures the model (:mod:`.counting`) and adds what only the caller knows
(accuracies, method, epochs, time, history); ``write_report`` turns the dict into
``report.json``, ``report.md`` and PNG plots, every file written atomically so an
interrupted run never leaves a half-written report for ``--resume`` or a reader to trust.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError
from ..files import atomic_write_bytes, atomic_write_text
from .counting import summarize
from .tables import render_markdown

REPORT_FORMAT = 1
#: what a model other than a classifier is measured by (``quality`` of build_report): the
#: range of each, and whether lower is better
QUALITY_METRICS = {"perplexity": (1.0, math.inf, "lower"),
                   "similarity": (-1.0, 1.0, "higher")}


# ------------------------------------------------------------------------ JSON values
def jsonable(value: Any, where: str = "value") -> Any:
    """``value`` with tensors and numpy scalars turned into Python numbers and non-finite
    floats into ``None`` (strict JSON has no NaN), or a ConfigError naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ConfigError(f"{where}: a tensor of shape {tuple(value.shape)} is not a number")
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ConfigError(f"{where}: cannot store a {type(value).__name__} in a report")


def _accuracy(value: Any, which: str) -> float | None:
    what = which if which.startswith("stage_accuracy") else f"accuracy_{which}"
    value = jsonable(value, what)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _history(history: Any) -> list[dict[str, Any]] | None:
    if history is None:
        return None
    if isinstance(history, Mapping) or not isinstance(history, Sequence):
        raise ConfigError(
            f"history must be a list of per-epoch dicts, got {type(history).__name__}"
        )
    for i, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise ConfigError(f"history[{i}] must be a dict, got {type(record).__name__}")
    return jsonable(list(history), "history")


# ---------------------------------------------------------------------------- build
def build_report(
    model: nn.Module,
    example_input: Any,
    *,
    constraints: Mapping[str, Any] | None = None,
    storage: Mapping[str, Any] | None = None,
    accuracy_dense: float | None = None,
    accuracy_compressed: float | None = None,
    method: str | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    updates: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    quality: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready report of ``model``.

    Measured from the model and its model file (see :func:`prunekit.report.summarize`:
    ``constraints`` are the frozen constraints, ``storage`` the file's breakdown): ``params``
    (``total``, ``nonzero``), ``compression_ratio`` (all parameters, biases included),
    ``compression_ratio_weights`` (compressed weights only), ``macs`` and ``bytes``
    (``dense``, ``compressed``, ``ratio``) and ``layers``. Given by the caller:
    ``accuracy`` (``dense``, ``compressed``: fractions in [0, 1]), ``method``, ``epochs``,
    ``seconds``, ``history`` (per-epoch dicts, kept for re-plotting), ``updates`` (the
    pruning method's own records, e.g. ADMM's per-layer residuals per Z/U update, stored as
    ``prune_updates``) and ``extra`` (stored under ``"extra"``, except its
    ``stage_accuracy``: the accuracy measured at named moments, e.g. right after hardening,
    ``[{"stage", "when", "accuracy"}]``, which the report carries at its top level, tables
    in report.md and marks in training.png). ``quality``: a model measured otherwise than
    by accuracy, ``{"metric": "perplexity" | "similarity", "dense", "compressed", "stages":
    [{"stage", "when", <metric>}]}`` (:data:`QUALITY_METRICS`), stored as
    ``report[metric] = {"dense", "compressed"}`` and ``report["stage_" + metric]``.
    """
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 0):
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    if extra is not None and not isinstance(extra, Mapping):
        raise ConfigError(f"extra must be a dict, got {type(extra).__name__}")
    summary = summarize(model, example_input, constraints, storage).to_dict()
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "prunekit_version": __version__,
        "method": None if method is None else str(method),
        "epochs": epochs,
        "seconds": jsonable(seconds, "seconds"),
        "accuracy": {
            "dense": _accuracy(accuracy_dense, "dense"),
            "compressed": _accuracy(accuracy_compressed, "compressed"),
        },
        **summary,
    }
    if quality is not None:
        report.update(_quality(quality))
    hist = _history(history)
    if hist is not None:
        report["history"] = hist
    if updates is not None:
        report["prune_updates"] = _history(updates)
    if extra is not None:
        extra = dict(extra)
        if "stage_accuracy" in extra:
            report["stage_accuracy"] = _stage_accuracy(extra.pop("stage_accuracy"))
        report["extra"] = jsonable(extra, "extra")
    return report


def _metric_value(value: Any, metric: str, where: str) -> float | None:
    low, high, _ = QUALITY_METRICS[metric]
    value = jsonable(value, where)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise ConfigError(f"{where} must be a {metric} in [{low}, {high}], got {value!r}")
    return float(value)


def _quality(quality: Any) -> dict[str, Any]:
    """The report entries of ``build_report``'s ``quality`` (checked)."""
    metric = quality.get("metric") if isinstance(quality, Mapping) else None
    if metric not in QUALITY_METRICS:
        raise ConfigError(f"quality must be a dict whose metric is one of "
                          f"{', '.join(QUALITY_METRICS)}, got {quality!r}")
    return {metric: {which: _metric_value(quality.get(which), metric, f"{metric}.{which}")
                     for which in ("dense", "compressed")},
            f"stage_{metric}": _stage_points(
                quality.get("stages") or [], metric,
                lambda value, where: _metric_value(value, metric, where))}


def _stage_accuracy(points: Any) -> list[dict[str, Any]]:
    """``extra["stage_accuracy"]``: the accuracy measured at named moments of the run, each
    ``{"stage": "prune", "when": "after hardening", "accuracy": 0.83}`` (a fraction, or
    None where it was not measured), in the order they happened."""
    return _stage_points(points, "accuracy", _accuracy)


def _stage_points(points: Any, key: str, check: Any) -> list[dict[str, Any]]:
    """Values measured at named moments, ``[{"stage", "when", key: value}]``, each value
    checked by ``check(value, where)``."""
    name = f"stage_{key}"
    if isinstance(points, Mapping) or not isinstance(points, Sequence):
        raise ConfigError(f"{name} must be a list of dicts, got {type(points).__name__}")
    out = []
    for i, point in enumerate(points):
        if not (isinstance(point, Mapping) and isinstance(point.get("stage"), str)
                and isinstance(point.get("when"), str)):
            raise ConfigError(f"{name}[{i}] must be a dict with 'stage' and 'when' strings "
                              f"and {'an' if key[0] in 'aeiou' else 'a'} {key!r}, got {point!r}")
        out.append({**jsonable(dict(point), f"{name}[{i}]"),
                    key: check(point.get(key), f"{name}[{i}]")})
    return out


# ---------------------------------------------------------------------------- write
def _plots(report: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None,
           weights_before: Mapping[str, Tensor] | None,
           weights_after: Mapping[str, Tensor] | None) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` of the plots this report has data for."""
    from . import plots  # noqa: PLC0415  (matplotlib only loads when plots are drawn)

    out = {"sparsity.png": plots.sparsity_png(report.get("layers", []))}
    if history is not None:
        out["training.png"] = plots.training_png(
            history, dense_accuracy=(report.get("accuracy") or {}).get("dense"),
            stage_accuracy=report.get("stage_accuracy"))
    oneshot = (report.get("extra") or {}).get("oneshot") or {}
    if oneshot.get("layers"):
        out["oneshot_layers.png"] = plots.oneshot_png(oneshot["layers"])
    if plots.layer_updates(report.get("prune_updates")):
        out["admm_convergence.png"] = plots.convergence_png(report["prune_updates"])
    if weights_before or weights_after:
        out["weights.png"] = plots.weights_png(weights_before, weights_after)
    return out


def write_report(
    run_dir: str | os.PathLike,
    report: Mapping[str, Any],
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    weights_before: Mapping[str, Tensor] | None = None,
    weights_after: Mapping[str, Tensor] | None = None,
) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``run_dir``; returns the
    paths written.

    Always: ``sparsity.png``. With a history (``history``, else ``report["history"]``):
    ``training.png`` (with the dense accuracy and ``stage_accuracy`` when the report has
    them); with ADMM's per-update records (``prune_updates``): ``admm_convergence.png``;
    after post-training compression (``extra.oneshot``): ``oneshot_layers.png``.
    With weights (``{name: tensor}`` before and/or after):
    ``weights.png``.
    """
    if not isinstance(report, Mapping) or "layers" not in report:
        raise ConfigError("report must be a dict made by build_report (it has no 'layers')")
    history = _history(history if history is not None else report.get("history"))
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    pngs = _plots(report, history, weights_before, weights_after)
    text = json.dumps(jsonable(dict(report), "report"), indent=2, allow_nan=False)
    written = [
        atomic_write_text(run_dir / "report.json", text + "\n"),
        atomic_write_text(run_dir / "report.md", render_markdown(report, list(pngs))),
    ]
    written += [atomic_write_bytes(run_dir / name, data) for name, data in pngs.items()]
    return written
