"""Which parameters get compressed, with which scheme and rate — and hardening them.

A user's rules (a recipe's ``targets`` section, NNI-style config lists) resolve against a
model to a list of targets; every method, the frozen constraints and the reports work from
that list and never look at the rules again. One module per job:

- :mod:`.target`: :class:`Target`, one weight with its scheme and rate;
- :mod:`.group`, :mod:`.coupled`: :class:`GroupTarget`, a coupled channel group spanning
  several parameters (``scheme: group_filter``), and how traced groups become targets;
- :mod:`.layers`: which module types hold prunable weights and their gates;
- :mod:`.rules`: what a rule may say, checked without a model (the rule format is
  documented there); :mod:`.rate_tables`: published per-layer rates by name;
- :mod:`.resolver`: rules against a model -> :class:`Targets` (:func:`resolve`);
- :mod:`.allocation`: global allocation (one threshold across layers);
- :mod:`.summary`: what the targets cover, and the per-target sparsity report;
- :mod:`.freeze`: hardening, the exact projection of every target into frozen constraints.
"""

from .allocation import allocate_global
from .freeze import freeze, freeze_weight
from .group import GROUP_FILTER, GroupTarget
from .layers import (
    QKV_GATES,
    RNN_GATES,
    SUPPORTED_TYPES,
    layer_type,
    layer_weights,
    prunable_layers,
)
from .resolver import resolve
from .rules import ALLOCATIONS, RULE_KEYS, check_fit, check_rule
from .summary import LeftOut, ResolveSummary, Targets, sparsity_report
from .target import Target

__all__ = [
    "ALLOCATIONS",
    "GROUP_FILTER",
    "QKV_GATES",
    "RNN_GATES",
    "RULE_KEYS",
    "SUPPORTED_TYPES",
    "GroupTarget",
    "LeftOut",
    "ResolveSummary",
    "Target",
    "Targets",
    "allocate_global",
    "check_fit",
    "check_rule",
    "freeze",
    "freeze_weight",
    "layer_type",
    "layer_weights",
    "prunable_layers",
    "resolve",
    "sparsity_report",
]
