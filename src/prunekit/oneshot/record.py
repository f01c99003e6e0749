"""What one-shot compression returns: the frozen constraints and a per-layer record."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerRecord:
    """One target's outcome. Errors are relative reconstruction errors on the calibration
    inputs, ``||X (W - W0)^T||^2 / ||X W0^T||^2``: ``magnitude_error`` of the scheme's plain
    projection of the dense weight, ``error`` of the chosen solver's weight."""

    name: str
    method: str
    scheme: str
    sparsity: float | None
    shape: tuple[int, ...]
    magnitude_error: float
    error: float
    achieved_sparsity: float
    seconds: float
    iterations: int | None = None
    rho: float | None = None
    inputs: int = 0  #: calibration rows (tokens, patches) in this layer's Gram matrix

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass
class OneShotResult:
    """``constraints``: ``{param name: Frozen}``, what :func:`prunekit.freeze` returns for the
    compressed weights (so :class:`prunekit.MaskEnforcer`, retraining, ``.pkz`` and export
    work unchanged); ``layers``: one :class:`LayerRecord` per target, in the order solved;
    ``peak_rss_mb``: the process's peak resident memory when compression finished."""

    constraints: dict[str, Any]
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float | None = None

    def errors(self) -> list[float]:
        return [r.error for r in self.layers]

    def summary(self) -> dict[str, Any]:
        errs = self.errors()
        return {
            "layers": len(self.layers),
            "median_layer_error": statistics.median(errs) if errs else None,
            "worst_layer_error": max(errs) if errs else None,
            "median_magnitude_error": (statistics.median([r.magnitude_error for r in self.layers])
                                       if errs else None),
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
        }
