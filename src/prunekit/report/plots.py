"""PNG plots of a run: per-layer sparsity, training curves (with the accuracy measured
after each step), ADMM convergence per layer, weight histograms.

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
def oneshot_png(layers: Sequence[Mapping[str, Any]]) -> bytes:
    """Post-training compression per layer: the relative reconstruction error of the
    solver's weights next to the scheme's plain projection (magnitude), on a log scale,
    and the seconds each layer took."""
    fig = Figure(figsize=(9, max(3.0, 0.3 * len(layers) + 1.5)), layout="constrained")
    if not layers:
        _empty(fig, "no layers")
        return to_png(fig)
    errors, seconds = fig.subplots(1, 2, sharey=True, width_ratios=(3, 1))
    y = list(range(len(layers)))
    method = str(layers[0].get("method", "solver"))
    floor = 1e-12  # an exact reconstruction still shows on a log axis
    errors.plot([max(_number(r["magnitude_error"]), floor) for r in layers], y, "o",
                color="0.6", label="magnitude (the scheme's projection)")
    errors.plot([max(_number(r["error"]), floor) for r in layers], y, "o", color="C0",
                label=method)
    errors.set_xscale("log")
    errors.set_yticks(y, [str(r["name"]) for r in layers], fontsize=7)
    errors.invert_yaxis()
    errors.set_xlabel("relative reconstruction error ||X(W - W0)^T||^2 / ||X W0^T||^2")
    errors.set_title("Post-training compression, per layer (calibration inputs)")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    seconds.barh(y, [_number(r.get("seconds", 0.0)) for r in layers], color="C1")
    seconds.set_xlabel("seconds")
    return to_png(fig)


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
                   colours: dict[str, str], name: str = "") -> bool:
    """Draw ``key`` per epoch, one line per consecutive run of a stage; a run of one epoch
    is a labelled point (a lone dot says nothing by itself). True if any value."""
    drawn = False
    for stage, idx in _stage_runs(history):
        ys = [_number(history[i].get(key)) for i in idx]
        if all(math.isnan(v) for v in ys):
            continue
        xs = [i + 1 for i in idx]
        ax.plot(xs, ys, style, color=colours[stage], marker="o" if len(xs) == 1 else ".")
        if len(xs) == 1:
            ax.annotate(f"{stage} {name} {_short(key, ys[0])}", (xs[0], ys[0]),
                        textcoords="offset points", xytext=(5, 4), fontsize=7,
                        color=colours[stage])
        drawn = True
    return drawn


def _short(key: str, value: float) -> str:
    return f"{100 * value:.1f}%" if "accuracy" in key else f"{value:.3g}"


def _has_penalty(history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether some epoch's training loss includes a method's penalty (ADMM's), so the
    task loss differs from the loss that was minimised."""
    return any(_number(r.get("penalty")) > 0 for r in history)


def _stage_spans(ax, history: Sequence[Mapping[str, Any]], colours: dict[str, str]) -> None:
    """Each stage's epochs shaded in its colour and named at the top of the panel."""
    transform = ax.get_xaxis_transform()  # x in epochs, y in axes fractions
    for stage, idx in _stage_runs(history):
        lo, hi = idx[0] + 0.5, idx[-1] + 1.5
        ax.axvspan(lo, hi, color=colours[stage], alpha=0.07, linewidth=0)
        ax.text((lo + hi) / 2, 0.99, stage or "(no stage)", transform=transform, ha="center",
                va="top", fontsize=7, color=colours[stage])


def _stage_point_x(history: Sequence[Mapping[str, Any]], stage: str, when: str,
                   fallback: float) -> float:
    """Where a stage's accuracy goes on the epoch axis: after hardening, just past the
    stage's last epoch (hardening ends the stage); otherwise at its last epoch."""
    positions = [i + 1 for i, r in enumerate(history) if str(r.get("stage", "")) == stage]
    if not positions:
        return fallback
    return positions[-1] + (0.5 if "harden" in when else 0.0)


def _stage_points(ax, history: Sequence[Mapping[str, Any]],
                  stage_accuracy: Sequence[Mapping[str, Any]], colours: dict[str, str]) -> bool:
    """The accuracy measured at named moments (``{"stage", "when", "accuracy"}``): stars,
    each labelled with what it is."""
    drawn = False
    fallback = len(history) + 0.5
    for point in stage_accuracy:
        value = _number(point.get("accuracy"))
        if math.isnan(value):
            continue
        stage, when = str(point.get("stage", "")), str(point.get("when", ""))
        x = _stage_point_x(history, stage, when, fallback)
        fallback = x + 0.5
        ax.plot([x], [value], "*", markersize=12, color=colours.get(stage, "black"),
                markeredgecolor="black", zorder=5)
        ax.annotate(f"{stage} {when}: {100 * value:.1f}%", (x, value), textcoords="offset points",
                    xytext=(6, -10), fontsize=7)
        drawn = True
    return drawn


def training_png(history: Sequence[Mapping[str, Any]], *, dense_accuracy: float | None = None,
                 stage_accuracy: Sequence[Mapping[str, Any]] | None = None) -> bytes:
    """:func:`training_figure` as PNG bytes."""
    return to_png(training_figure(history, dense_accuracy=dense_accuracy,
                                  stage_accuracy=stage_accuracy))


def training_figure(history: Sequence[Mapping[str, Any]], *,
                    dense_accuracy: float | None = None,
                    stage_accuracy: Sequence[Mapping[str, Any]] | None = None) -> Figure:
    """Accuracy and loss per epoch. Colour (and the shaded, named band) says the stage,
    line style says test or train; the x axis counts epochs across all stages in order.
    The accuracy panel adds the dense model's accuracy as a level line and the accuracy
    measured at named moments (right after hardening, at a stage's end) as stars; the loss
    panel shows the task loss apart from the loss with the method's penalty whenever the
    history records a penalty (ADMM's ``rho/2 ||W - Z + U||^2``)."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    if not history:
        _empty(fig, "no training history")
        return fig
    stages = list(dict.fromkeys(str(r.get("stage", "")) for r in history))
    stages += [str(p.get("stage", "")) for p in stage_accuracy or ()
               if str(p.get("stage", "")) not in stages]
    colours = {s: f"C{i % 10}" for i, s in enumerate(stages)}
    penalty = _has_penalty(history)
    train_loss = "train loss (with the method's penalty)" if penalty else "train loss"
    panels = (
        ("Accuracy", (("test_accuracy", "-", "test", "test"),
                      ("train_accuracy", "--", "train", "train"))),
        ("Loss", (("test_loss", "-", "test loss", "test"), ("loss", "--", train_loss, "train"),
                  *((("task_loss", ":", "train task loss (no penalty)", "task"),)
                    if penalty else ()))),
    )
    for k, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        shown = [(style, label) for key, style, label, short in series
                 if _plot_by_stage(ax, history, key, style, colours, short)]
        extra: list[Line2D] = []
        if k == 0 and dense_accuracy is not None:
            ax.axhline(dense_accuracy, color="grey", linestyle="-.", linewidth=1)
            extra.append(Line2D([], [], color="grey", linestyle="-.",
                                label=f"dense model {100 * dense_accuracy:.1f}%"))
        if k == 0 and stage_accuracy and _stage_points(ax, history, stage_accuracy, colours):
            extra.append(Line2D([], [], color="white", marker="*", markersize=10,
                                markeredgecolor="black", label="measured after a step"))
        _stage_spans(ax, history, colours)
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not shown and not extra:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        handles = [Line2D([], [], color=colours[s], label=s or "(no stage)") for s in stages]
        handles += [Line2D([], [], color="black", linestyle=style, label=label)
                    for style, label in shown]
        ax.legend(handles=handles + extra, fontsize=7)
    return fig


# ------------------------------------------------------------------------ ADMM
def layer_updates(updates: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The Z/U update records that carry per-layer residuals (ADMM's ``history``)."""
    return [r for r in updates or () if r.get("event") == "update"
            and isinstance(r.get("layers"), Mapping)]


def convergence_png(updates: Sequence[Mapping[str, Any]]) -> bytes:
    """:func:`convergence_figure` as PNG bytes."""
    return to_png(convergence_figure(updates))


#: what the support-change panel's values mean, printed under it
SUPPORT_CHANGE_NOTE = ("(weights entered + left) / kept weights: 0 = support settled,\n"
                       "2.0 = every kept weight replaced (far from converged)")


def convergence_figure(updates: Sequence[Mapping[str, Any]]) -> Figure:
    """Per layer and Z/U update: the relative primal residual ``||W - Z|| / ||W||`` and the
    support change (weights entering or leaving Z's support over the kept weights, whose
    largest value 2.0 means the whole support was replaced: every kept weight left and as
    many others entered), so a user sees whether ADMM had converged when it was hardened;
    a black line gives all layers together. With ``reallocate``, a third panel shows each
    layer's rate as the allocation moved it."""
    records = layer_updates(updates)
    moved = any("target_sparsity" in v for r in records for v in r["layers"].values())
    fig = Figure(figsize=(15 if moved else 10, 4.4), layout="constrained")
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
        total = [(i + 1, _number(r.get(key))) for i, r in enumerate(records)]
        total = [(x, v) for x, v in total if v > 0]
        if total and scale == "log":
            ax.plot(*zip(*total, strict=True), "-", color="black", linewidth=2,
                    label="all layers")
        if key == "support_change":
            ax.axhline(2.0, color="grey", linestyle="--", linewidth=1)
            ax.text(0.01, 2.0, " 2.0: whole support replaced", color="grey", fontsize=7,
                    va="bottom", transform=ax.get_yaxis_transform())
            ax.set_xlabel(f"Z/U update\n{SUPPORT_CHANGE_NOTE}", fontsize=8)
        else:
            ax.set_xlabel("Z/U update")
        ax.set_yscale(scale)
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
