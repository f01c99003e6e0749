"""Published per-layer pruning rates, usable by name as a rule's ``sparsity``.

A paper's result is mostly its layer-wise rates: with them a recipe reproduces the paper's
compression ratio on the same architecture without re-deriving the allocation. Rates are the
fraction of each layer's weights pruned (the papers print the fraction *kept*; 20% kept is
0.80 here). Layer names follow the papers, which are also the names of the zoo's models
(``prunekit.models.lenet``): ``conv1``, ``conv2``, ``fc1``, ``fc2`` (``fc3``).

    {"sparsity": "lenet5-admm-71x"}          # in a rule of prune.targets
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import ConfigError


@dataclass(frozen=True)
class RateTable:
    """Per-layer pruning rates from ``source`` for ``model`` (``ratio``: the paper's
    overall weight compression ratio, for reference)."""

    name: str
    model: str
    source: str
    ratio: float
    rates: Mapping[str, float] = field(default_factory=dict)


def _table(name: str, model: str, source: str, ratio: float, rates: dict[str, float]) -> RateTable:
    return RateTable(name, model, source, ratio, MappingProxyType(dict(rates)))


_TABLES = {
    t.name: t
    for t in (
        _table(
            "lenet5-admm-71x",
            "LeNet-5 (conv1 20x1x5x5, conv2 50x20x5x5, fc1 500x800, fc2 10x500)",
            "T. Zhang et al., A Systematic DNN Weight Pruning Framework using ADMM, ECCV 2018",
            71.2,
            {"conv1": 0.80, "conv2": 0.92, "fc1": 0.991, "fc2": 0.93},
        ),
        _table(
            "lenet5-han-12x",
            "LeNet-5 (conv1 20x1x5x5, conv2 50x20x5x5, fc1 500x800, fc2 10x500)",
            "S. Han et al., Learning both Weights and Connections for Efficient Neural "
            "Networks, NeurIPS 2015 (iterative magnitude pruning baseline)",
            12.0,
            {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
        ),
        _table(
            "lenet300-han-12x",
            "LeNet-300-100 (fc1 300x784, fc2 100x300, fc3 10x100)",
            "S. Han et al., Learning both Weights and Connections for Efficient Neural "
            "Networks, NeurIPS 2015 (iterative magnitude pruning baseline)",
            12.0,
            {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
        ),
    )
}


def available() -> list[str]:
    """Names of the published tables."""
    return sorted(_TABLES)


def get(name: str) -> RateTable:
    """The table called ``name``; an unknown name lists the known ones."""
    try:
        return _TABLES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown sparsity table {name!r}; available: {', '.join(available())}"
        ) from None


def rates(name: str) -> dict[str, float]:
    """The table's ``{layer name: pruning rate}`` as a fresh dict."""
    return dict(get(name).rates)
