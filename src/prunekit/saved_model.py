"""Reports of a saved model file: ``prunekit report model.pkz``.

Everything is read from the file: the model is rebuilt from its manifest (zoo models only;
a model built by a user's factory needs the model passed in), its weights and frozen
constraints are decoded, and every byte figure is the file's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts
from .errors import DataError
from .report import build_report, format_report, write_report


def report_saved_model(path: str | Path, out_dir: str | Path | None = None, *,
                       model: nn.Module | None = None, echo=print) -> dict[str, Any]:
    """The report of the ``.pkz`` file at ``path`` (printed; written to ``out_dir`` too)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    loaded = artifacts.load(path, model=model)
    shape = loaded.spec.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise DataError(f"{path} does not record the model's input shape")
    meta = loaded.meta
    methods = meta.get("methods") or []
    report = build_report(
        loaded.model, torch.zeros(1, *shape), constraints=loaded.constraints,
        storage=loaded.storage, accuracy_dense=meta.get("accuracy_dense"),
        accuracy_compressed=meta.get("accuracy_compressed"),
        method=" -> ".join(methods) if methods else None, extra={"file": str(path)},
    )
    echo(format_report(report))
    if out_dir is not None:
        write_report(out_dir, report)
        echo(f"report written to {Path(out_dir).resolve()}")
    return report
