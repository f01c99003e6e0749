"""Post-training compression: pretrained models compressed layer by layer from a small
calibration set, with no retraining (docs/oneshot.md).

``compress(model, batches, rules, method="admm", **options) -> OneShotResult`` is the
entry point; the solvers (``magnitude``, ``wanda``, ``sparsegpt``, ``admm``) also work on
one layer's ``(W, H)`` through :mod:`.solvers`.
"""

from __future__ import annotations

from .driver import check, compress, find_blocks
from .problem import LayerProblem
from .record import LayerRecord, OneShotResult
from .solvers import OPTIONS, SOLVERS, check_method

METHODS = tuple(sorted(SOLVERS))

__all__ = ["METHODS", "OPTIONS", "SOLVERS", "LayerProblem", "LayerRecord", "OneShotResult",
           "check", "check_method", "compress", "find_blocks"]
