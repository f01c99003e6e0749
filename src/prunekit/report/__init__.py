"""What a compressed model is: parameters, nonzeros, MACs, storage bytes, tables and plots.

Everything is measured on the model's own weights (see :mod:`.counting`), never taken from
the rates a recipe asked for.

    report = build_report(model, example_input, constraints=constraints,
                          accuracy_dense=0.91, accuracy_compressed=0.90, method="admm")
    write_report("runs/lenet5", report, history=history)   # report.json, report.md, *.png
    print(format_report(report))

Plots live in :mod:`prunekit.report.plots`, imported only when drawn (matplotlib is slow to
import).
"""

from .build import build_report, jsonable, write_report
from .counting import LayerStats, Summary, layer_positions, summarize
from .tables import format_report, render_markdown

__all__ = [
    "LayerStats",
    "Summary",
    "build_report",
    "format_report",
    "jsonable",
    "layer_positions",
    "render_markdown",
    "summarize",
    "write_report",
]
