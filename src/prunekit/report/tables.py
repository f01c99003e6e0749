"""Render a report dict as markdown (``report.md``) or as a terminal summary.

Both views read only the report dict that :func:`prunekit.report.build_report` returns (or
that ``report.json`` holds), so ``prunekit report`` can re-render an old run without the
model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Per-layer columns: (header, key in a layer row, formatter)
_LAYER_COLUMNS = (
    ("layer", "name", str),
    ("type", "type", str),
    ("shape", "shape", lambda s: "x".join(str(d) for d in s)),
    ("scheme", "scheme", str),
    ("bits", "bits", str),
    ("sparsity", "sparsity", lambda v: f"{100 * v:.1f}%"),
    ("nonzeros", "nonzeros", lambda v: f"{v:,}"),
    ("params", "params", lambda v: f"{v:,}"),
    ("MACs", "macs", lambda v: human(v)),
    ("index", "storage", str),
    ("bytes", "bytes", lambda v: human_bytes(v)),
)


# ------------------------------------------------------------------------ numbers
def human(n: float | None) -> str:
    """``1234567`` -> ``"1.23M"``: short counts for tables a person reads."""
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def percent(x: float | None) -> str:
    """Accuracies are fractions in [0, 1]."""
    return "-" if x is None else f"{100 * x:.2f}%"


def seconds(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 120:
        return f"{x:.1f} s"
    minutes, sec = divmod(round(x), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"


def accuracy_line(accuracy: Mapping[str, Any]) -> str:
    dense, comp = accuracy.get("dense"), accuracy.get("compressed")
    text = f"{percent(dense)} -> {percent(comp)}"
    if dense is not None and comp is not None:
        text += f" ({100 * (comp - dense):+.2f} points)"
    return text


# ------------------------------------------------------------------------- tables
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   align_right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured markdown table; ``|`` inside cells is escaped."""
    align_right = align_right or [False] * len(headers)

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in align_right) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
               align_right: Sequence[bool] | None = None) -> str:
    """A plain aligned table for a terminal."""
    align_right = align_right or [False] * len(headers)
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if right else str(c).ljust(w)
                         for c, w, right in zip(cells, widths, align_right, strict=True)
                         ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _layer_row(layer: Mapping[str, Any]) -> list[str]:
    return [fmt(layer[key]) for _, key, fmt in _LAYER_COLUMNS]


def layer_table(layers: Sequence[Mapping[str, Any]], markdown: bool = True) -> str:
    """One row per layer of ``report["layers"]``."""
    headers = [h for h, _, _ in _LAYER_COLUMNS]
    rows = [_layer_row(layer) for layer in layers]
    right = [key not in ("name", "type", "shape", "scheme") for _, key, _ in _LAYER_COLUMNS]
    return (markdown_table if markdown else text_table)(headers, rows, right)


#: a model measured otherwise than by accuracy: metric -> (label, number format)
QUALITY_LABELS = {
    "perplexity": ("Perplexity (dense -> compressed; lower is better)", "{:.2f}"),
    "similarity": ("Embedding similarity to the dense model (cosine; dense -> compressed)",
                   "{:.4f}"),
}


def quality_metric(report: Mapping[str, Any]) -> str | None:
    """The metric a report measures its model by instead of accuracy, if any."""
    return next((m for m in QUALITY_LABELS if isinstance(report.get(m), Mapping)), None)


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def quality_line(report: Mapping[str, Any], metric: str) -> str:
    values = report[metric]
    fmt = QUALITY_LABELS[metric][1]
    dense, comp = values.get("dense"), values.get("compressed")
    text = f"{_number(dense, fmt)} -> {_number(comp, fmt)}"
    if metric == "perplexity" and dense and comp is not None:
        text += f" ({comp / dense:.2f}x)"
    return text


def _measure_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How good the model is: accuracy, or the metric that stands in for it (a report of
    a language model says perplexity and never accuracy)."""
    metric = quality_metric(report)
    if metric is None:
        return [("Accuracy (dense -> compressed)", accuracy_line(report.get("accuracy", {})))]
    return [(QUALITY_LABELS[metric][0], quality_line(report, metric))]


def _totals(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    p, m, b = report["params"], report["macs"], report["bytes"]
    return [
        *_measure_rows(report),
        ("Parameters (nonzero / total)", f"{p['nonzero']:,} / {p['total']:,}"),
        ("Compression ratio (all parameters)", times(report.get("compression_ratio"))),
        ("Compression ratio (compressed weights)",
         times(report.get("compression_ratio_weights"))),
        ("MACs (dense -> compressed)",
         f"{human(m['dense'])} -> {human(m['compressed'])} ({times(m.get('ratio'))} fewer)"),
        ("Model file (dense fp32 -> compressed)",
         f"{human_bytes(b['dense'])} -> {human_bytes(b['compressed'])} "
         f"({times(b.get('ratio'))} smaller; weights only, activations stay float)"),
        ("File breakdown", ", ".join(f"{k} {human_bytes(v)}"
                                     for k, v in b.get("parts", {}).items() if v) or "-"),
        ("Method", str(report.get("method") or "-")),
        ("Epochs", "-" if report.get("epochs") is None else str(report["epochs"])),
        ("Time", seconds(report.get("seconds"))),
    ]


# -------------------------------------------------------------------------- views
def render_markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """``report.md``: totals, the per-layer table, and links to the ``plots`` (file names
    relative to the report)."""
    per = (report.get("extra") or {}).get("macs_per") or "sample"  # a language model: token
    parts = [
        "# prunekit report",
        "",
        markdown_table(["", "value"], _totals(report)),
        "",
        "Compression ratio = parameters / nonzero parameters. \"All parameters\" includes "
        "biases and normalisation parameters; \"compressed weights\" counts only the weights "
        f"that were compressed. MACs count weight multiplications per {per}. Bytes are those of "
        "the model file (`.pkz`) on disk: each compressed layer's values at its bit width, its "
        "sparsity index (encoding in the `index` column) and quantization scales; the file "
        "breakdown sums to the file size. Dense: 4 bytes per parameter.",
        "",
        "## Layers",
        "",
        layer_table(report.get("layers", [])),
        "",
    ]
    stages = stage_accuracy_rows(report)
    if stages:
        parts += ["## Accuracy by stage", "",
                  markdown_table(["stage", "when", "accuracy"], stages, [False, False, True]),
                  ""]
    metric, rows = stage_quality_rows(report)
    if rows:
        parts += [f"## {metric.capitalize()} by stage", "",
                  markdown_table(["stage", "when", metric], rows, [False, False, True]), ""]
    convergence = convergence_line(report.get("prune_updates"))
    if convergence:
        parts += ["## Convergence", "", convergence, ""]
    notes = (report.get("extra") or {}).get("prune_notes")
    if notes:  # what group_filter rules could not remove, by layer and reason
        parts += ["## Channels kept", "", *[f"- {note}" for note in notes], ""]
    if plots:
        parts += ["## Plots", ""]
        for name in plots:
            title = name.rsplit(".", 1)[0].replace("_", " ")
            parts += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(parts)


def stage_accuracy_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """``[stage, when, accuracy]`` rows: the dense model's accuracy, then each moment the
    run measured (``report["stage_accuracy"]``, e.g. right after hardening), then the
    compressed model's; none when the run recorded no moment of its own."""
    points = report.get("stage_accuracy") or []
    if not points:
        return []
    accuracy = report.get("accuracy") or {}
    rows = []
    if accuracy.get("dense") is not None:
        rows.append(["dense", "trained", percent(accuracy["dense"])])
    rows += [[str(p.get("stage", "")), str(p.get("when", "")), percent(p.get("accuracy"))]
             for p in points]
    if accuracy.get("compressed") is not None:
        rows.append(["compressed", "model file", percent(accuracy["compressed"])])
    return rows


def stage_quality_rows(report: Mapping[str, Any]) -> tuple[str, list[list[str]]]:
    """``(metric, [stage, when, value] rows)`` of a model measured otherwise than by
    accuracy (``report["stage_perplexity"]``...); no rows for any other report."""
    metric = quality_metric(report)
    if metric is None:
        return "", []
    fmt = QUALITY_LABELS[metric][1]
    return metric, [[str(p.get("stage", "")), str(p.get("when", "")),
                     _number(p.get(metric), fmt)]
                    for p in report.get(f"stage_{metric}") or []]


def convergence_line(updates: Sequence[Mapping[str, Any]] | None) -> str | None:
    """Whether ADMM converged before it was hardened, in one sentence (None: no ADMM)."""
    done = [r for r in updates or () if r.get("event") == "update"]
    if not done:
        return None
    last = done[-1]
    residuals = (f"relative primal residual {last.get('relative_primal', float('nan')):.3g}, "
                 f"support change {last.get('support_change', float('nan')):.3g}")
    stopped = [r for r in updates or () if r.get("event") == "converged"]
    if stopped:
        return (f"ADMM converged at Z/U update {stopped[0]['update']} (epoch "
                f"{stopped[0]['epoch']}) and stopped early: {residuals}.")
    return f"ADMM ran all {len(done)} Z/U updates; at the last one: {residuals}."


def format_report(report: Mapping[str, Any]) -> str:
    """A terminal summary of a report: the totals, then the per-layer table."""
    width = max(len(k) for k, _ in _totals(report))
    lines = [f"{key.ljust(width)}  {value}" for key, value in _totals(report)]
    layers = report.get("layers", [])
    if layers:
        lines += ["", layer_table(layers, markdown=False)]
    stages = stage_accuracy_rows(report)
    if stages:
        lines += ["", text_table(["stage", "when", "accuracy"], stages, [False, False, True])]
    metric, rows = stage_quality_rows(report)
    if rows:
        lines += ["", text_table(["stage", "when", metric], rows, [False, False, True])]
    convergence = convergence_line(report.get("prune_updates"))
    if convergence:
        lines += ["", convergence]
    return "\n".join(lines)
