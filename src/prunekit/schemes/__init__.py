"""Sparsity schemes by name: ``prunekit.schemes.get(name, **options)``.

Names: ``irregular``, ``filter``, ``channel``, ``column``, ``block``, ``pattern``, ``nm``,
``unify``, ``quant``; join names with ``+`` (``"filter+irregular"``) to compose projections.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Scheme, check_sparsity, count_to_prune, gemm_view, measured_sparsity
from .irregular import Irregular

_REGISTRY: dict[str, type[Scheme]] = {}


def register(cls: type[Scheme]) -> type[Scheme]:
    """Make a scheme class reachable by ``get(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options) -> Scheme:
    """The scheme called ``name`` configured with ``options``."""
    if isinstance(name, Scheme):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"scheme name must be a string, got {name!r}")
    if "+" in name:
        from .compose import compose  # noqa: PLC0415  (only composite names need it)

        return compose(name, **options)
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown scheme {name!r}; available: {', '.join(available())}"
        ) from None
    return cls(**options)


for _cls in (Irregular,):
    register(_cls)

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
