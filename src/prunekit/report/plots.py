"""PNG plots of a run: per-layer sparsity, training curves, ADMM residuals and convergence,
weight histograms.

Each function returns the PNG as bytes so the caller can write it atomically. Figures are
made with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never through
``pyplot``: no global figure state, no GUI backend, safe on a headless machine and in a
process that also uses pyplot for something else.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

#: At most this many per-layer panels in ``weights.png``; the title says when more exist.
MAX_WEIGHT_PANELS = 16
_BINS = 60


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _number(value: Any) -> float:
    """A history value as a float (NaN where missing, so matplotlib leaves a gap)."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _empty(fig: Figure, message: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


# ------------------------------------------------------------------------- sparsity
def sparsity_png(layers: Sequence[Mapping[str, Any]]) -> bytes:
    """Horizontal bars of each layer's measured sparsity, coloured by scheme."""
    fig = Figure(figsize=(8, max(2.5, 0.32 * len(layers) + 1.2)), layout="constrained")
    if not layers:
        _empty(fig, "no layers")
        return to_png(fig)
    ax = fig.add_subplot()
    schemes = list(dict.fromkeys(str(layer["scheme"]) for layer in layers))
    colours = {s: f"C{i % 10}" for i, s in enumerate(schemes)}
    y = list(range(len(layers)))
    values = [100 * float(layer["sparsity"]) for layer in layers]
    for scheme in schemes:
        idx = [i for i, layer in enumerate(layers) if str(layer["scheme"]) == scheme]
        ax.barh([y[i] for i in idx], [values[i] for i in idx], color=colours[scheme],
                label=scheme)
    for yi, v in zip(y, values, strict=True):
        ax.text(min(v + 1, 99), yi, f"{v:.1f}%", va="center", fontsize=8)
    ax.set_yticks(y, [str(layer["name"]) for layer in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (% zeros)")
    ax.set_title("Per-layer sparsity")
    ax.legend(loc="lower right", fontsize=8)
    return to_png(fig)


# ------------------------------------------------------------------------- training
def _stage_runs(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int]]]:
    """Consecutive runs of records of the same stage: ``[(stage, [positions])]``."""
    runs: list[tuple[str, list[int]]] = []
    for i, record in enumerate(history):
        stage = str(record.get("stage", ""))
        if runs and runs[-1][0] == stage:
            runs[-1][1].append(i)
        else:
            runs.append((stage, [i]))
    return runs


def _plot_by_stage(ax, history: Sequence[Mapping[str, Any]], key: str, style: str,
                   colours: dict[str, str]) -> bool:
    """Draw ``key`` per epoch, one line per consecutive run of a stage; True if any value."""
    drawn = False
    for stage, idx in _stage_runs(history):
        ys = [_number(history[i].get(key)) for i in idx]
        if all(math.isnan(v) for v in ys):
            continue
        ax.plot([i + 1 for i in idx], ys, style, color=colours[stage], marker=".")
        drawn = True
    return drawn


def training_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Accuracy and loss per epoch: colour says the stage, line style says test or train.
    The x axis counts epochs across all stages in order."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    if not history:
        _empty(fig, "no training history")
        return to_png(fig)
    stages = list(dict.fromkeys(str(r.get("stage", "")) for r in history))
    colours = {s: f"C{i % 10}" for i, s in enumerate(stages)}
    panels = (
        ("Accuracy", (("test_accuracy", "-", "test"), ("train_accuracy", "--", "train"))),
        ("Loss", (("test_loss", "-", "test"), ("loss", "--", "train"))),
    )
    for k, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        shown = [(style, label) for key, style, label in series
                 if _plot_by_stage(ax, history, key, style, colours)]
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not shown:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        handles = [Line2D([], [], color=colours[s], label=s or "(no stage)") for s in stages]
        handles += [Line2D([], [], color="black", linestyle=style, label=label)
                    for style, label in shown]
        ax.legend(handles=handles, fontsize=8)
    return to_png(fig)


# ------------------------------------------------------------------------ residuals
def has_residuals(history: Sequence[Mapping[str, Any]] | None) -> bool:
    """True when some record carries a positive ADMM ``primal`` or ``dual`` residual."""
    return any(_number(r.get(k)) > 0 for r in history or () for k in ("primal", "dual"))


def residuals_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """ADMM primal and dual residuals per epoch on a log scale (non-positive values, which
    a log axis cannot show, are left out)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    if not has_residuals(history):
        _empty(fig, "no ADMM residuals recorded")
        return to_png(fig)
    ax = fig.add_subplot()
    for key, style in (("primal", "-"), ("dual", "--")):
        points = [(i + 1, _number(r.get(key))) for i, r in enumerate(history)]
        points = [(x, v) for x, v in points if v > 0]
        if points:
            ax.plot(*zip(*points, strict=True), style, marker=".", label=f"{key} residual")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("residual")
    ax.set_title("ADMM residuals")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return to_png(fig)


def layer_updates(updates: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The Z/U update records that carry per-layer residuals (ADMM's ``history``)."""
    return [r for r in updates or () if r.get("event") == "update"
            and isinstance(r.get("layers"), Mapping)]


def convergence_png(updates: Sequence[Mapping[str, Any]]) -> bytes:
    """:func:`convergence_figure` as PNG bytes."""
    return to_png(convergence_figure(updates))


def convergence_figure(updates: Sequence[Mapping[str, Any]]) -> Figure:
    """Per layer and Z/U update: the relative primal residual ``||W - Z|| / ||W||`` and the
    support change (weights entering or leaving Z's support over the kept weights), so a
    user sees whether ADMM had converged when it was hardened; with ``reallocate``, a third
    panel shows each layer's rate as the allocation moved it."""
    records = layer_updates(updates)
    moved = any("target_sparsity" in v for r in records for v in r["layers"].values())
    fig = Figure(figsize=(15 if moved else 10, 4), layout="constrained")
    if not records:
        _empty(fig, "no ADMM updates recorded")
        return fig
    names = list(dict.fromkeys(n for r in records for n in r["layers"]))
    panels = [("relative_primal", "relative primal residual ||W - Z|| / ||W||", "log"),
              ("support_change", "support change per update", "log")]
    if moved:
        panels.append(("target_sparsity", "layer rate (reallocated)", "linear"))
    for k, (key, title, scale) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for name in names:
            points = [(i + 1, _number(r["layers"][name].get(key)))
                      for i, r in enumerate(records) if key in r["layers"].get(name, {})]
            points = [(x, v) for x, v in points if v > 0 or scale == "linear"]
            if points:
                ax.plot(*zip(*points, strict=True), "-", marker=".", label=name)
        ax.set_yscale(scale)
        ax.set_xlabel("Z/U update")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    return fig


# -------------------------------------------------------------------------- weights
def _nonzero_values(w: Tensor | None) -> Tensor | None:
    if w is None:
        return None
    w = torch.as_tensor(w).detach().to("cpu", torch.float32).reshape(-1)
    return w[w != 0]


def _ndim(w: Tensor | None) -> int:
    return 0 if w is None else torch.as_tensor(w).dim()


def weights_png(before: Mapping[str, Tensor] | None,
                after: Mapping[str, Tensor] | None) -> bytes:
    """Histograms of the nonzero weights of each layer before (filled) and after (outline)
    compression, on shared bins so the two are comparable. Weights with >= 2 dims are
    shown when there are any (biases tell little and would crowd them out)."""
    before, after = dict(before or {}), dict(after or {})
    names = list(dict.fromkeys([*before, *after]))
    matrices = [n for n in names if _ndim(before.get(n)) >= 2 or _ndim(after.get(n)) >= 2]
    names = matrices or names  # biases and norm scales only when nothing else was given
    shown = names[:MAX_WEIGHT_PANELS]
    cols = min(4, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6), layout="constrained")
    if not shown:
        _empty(fig, "no weights given")
        return to_png(fig)
    title = "Nonzero weights before / after"
    if len(names) > len(shown):
        title += f" (first {len(shown)} of {len(names)} layers)"
    fig.suptitle(title)
    for k, name in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        series = [(label, _nonzero_values(d.get(name)), colour)
                  for label, d, colour in (("before", before, "C0"), ("after", after, "C1"))]
        series = [(label, v, c) for label, v, c in series if v is not None and v.numel()]
        if series:
            lo = min(float(v.min()) for _, v, _ in series)
            hi = max(float(v.max()) for _, v, _ in series)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = torch.linspace(lo, hi, _BINS + 1)
            for label, v, colour in series:
                counts = torch.histc(v, bins=_BINS, min=lo, max=hi)
                ax.stairs(counts.numpy(), edges.numpy(), fill=label == "before",
                          alpha=0.45 if label == "before" else 1.0, color=colour,
                          linewidth=1.5, label=f"{label} ({v.numel():,})")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "all zero", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    return to_png(fig)
