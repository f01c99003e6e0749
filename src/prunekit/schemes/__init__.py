"""Sparsity schemes by name: ``prunekit.schemes.get(name, **options)``.

Names: ``irregular``, ``filter``, ``channel``, ``column``, ``block``, ``pattern``, ``nm``,
``unify``, ``quant``; join names with ``+`` (``"filter+irregular"``) to compose projections.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Scheme, check_sparsity, count_to_prune, gemm_view, measured_sparsity

_REGISTRY: dict[str, type[Scheme]] = {}

# Built-in schemes: name -> "module:Class" inside this package, imported on first use.
_BUILTIN = {
    "irregular": "irregular:Irregular",
    "filter": "structured:Filter",
    "channel": "structured:Channel",
    "column": "structured:Column",
    "block": "block:Block",
    "nm": "nm:NM",
    "pattern": "pattern:Pattern",
    "unify": "unify:Unify",
    "quant": "quant:Quant",
}


def register(cls: type[Scheme]) -> type[Scheme]:
    """Make a scheme class reachable by ``get(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def _lookup(name: str) -> type[Scheme] | None:
    if name not in _REGISTRY and name in _BUILTIN:
        module, cls = _BUILTIN[name].split(":")
        _REGISTRY[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return _REGISTRY.get(name)


def get(name: str, **options) -> Scheme:
    """The scheme called ``name`` configured with ``options``."""
    if isinstance(name, Scheme):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"scheme name must be a string, got {name!r}")
    if "+" in name:
        from .compose import compose  # noqa: PLC0415  (only composite names need it)

        return compose(name, **options)
    cls = _lookup(name)
    if cls is None:
        raise ConfigError(f"unknown scheme {name!r}; available: {', '.join(available())}")
    return cls(**options)

__all__ = [
    "Scheme",
    "available",
    "check_sparsity",
    "count_to_prune",
    "gemm_view",
    "get",
    "measured_sparsity",
    "register",
]
