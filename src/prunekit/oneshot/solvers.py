"""The layer-wise solvers by name, the options each takes, and what each can solve.

Every check here runs before any calibration forward pass, so a misspelt option or a
method asked for a scheme it cannot do is one :class:`~prunekit.errors.ConfigError` naming
it, not a failure half-way through a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError, TargetError
from .admm import DEFAULTS as ADMM_DEFAULTS
from .admm import admm
from .baselines import magnitude, supports, wanda
from .constraint import LayerConstraint
from .problem import DEFAULT_DAMP
from .sparsegpt import DEFAULT_BLOCK, sparsegpt

SOLVERS: dict[str, Callable] = {"magnitude": magnitude, "wanda": wanda,
                                "sparsegpt": sparsegpt, "admm": admm}

#: options each method takes, with their defaults
OPTIONS: dict[str, dict[str, Any]] = {
    "magnitude": {},
    "wanda": {},
    "sparsegpt": {"damp": DEFAULT_DAMP, "block": DEFAULT_BLOCK},
    "admm": dict(ADMM_DEFAULTS),
}

_POSITIVE = {"damp", "rho0", "rho_max", "settle"}
_FLAGS = {"dense_target"}
_COUNTS = {"block", "max_iterations", "update_every", "min_iterations", "refit_iterations"}


def check_method(method: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The method's full option dict, or a ConfigError naming the bad method or option."""
    if not isinstance(method, str) or method not in SOLVERS:
        raise ConfigError(f"unknown one-shot method {method!r}; available: "
                          f"{', '.join(sorted(SOLVERS))}")
    allowed = OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"one-shot method {method!r} got unknown option(s) {unknown}; it "
                          f"takes {sorted(allowed) or 'none'}")
    merged = {**allowed, **options}
    for key, value in options.items():
        if key in _FLAGS and not isinstance(value, bool):
            raise ConfigError(f"one-shot option {key!r} must be true or false, got {value!r}")
        if key in _COUNTS and (isinstance(value, bool) or not isinstance(value, int)
                               or value < (0 if key == "min_iterations" else 1)):
            raise ConfigError(f"one-shot option {key!r} must be a positive integer, "
                              f"got {value!r}")
        if key in _POSITIVE and (isinstance(value, bool) or not isinstance(value, (int, float))
                                 or not value >= 0 or (key != "damp" and value == 0)):
            raise ConfigError(f"one-shot option {key!r} must be a positive number, "
                              f"got {value!r}")
    return merged


def check_targets(method: str, targets: Sequence[Any]) -> list[LayerConstraint]:
    """One :class:`LayerConstraint` per target; refuses what ``method`` cannot solve."""
    out = []
    for target in targets:
        if not hasattr(target, "param") or not hasattr(target, "scheme"):
            raise TargetError(f"one-shot compression works on single-weight targets, not "
                              f"{type(target).__name__} ({getattr(target, 'name', '?')})")
        constraint = LayerConstraint(target)
        why = supports(method, constraint)
        if why is not None:
            raise TargetError(f"{target.name}: {why}")
        out.append(constraint)
    return out
