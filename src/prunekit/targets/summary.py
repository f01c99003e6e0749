"""What resolving covered: the per-target sparsity report and the summary of the weights
the rules leave out, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .group import GroupTarget
from .layers import SUPPORTED_TYPES, layer_type, layer_weights
from .target import Target


def sparsity_report(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One row per target: what was asked and what the weight holds now (measured)."""
    rows = []
    for t in targets:
        nonzeros = int(torch.count_nonzero(t.param.detach()).item())
        rows.append({
            "name": t.name,
            "layer": t.module_name,
            "type": t.layer_type,
            "shape": list(t.shape),
            "scheme": t.scheme_name,
            "requested": t.sparsity,
            "achieved": (t.numel - nonzeros) / t.numel if t.numel else 0.0,
            "nonzeros": nonzeros,
            "numel": t.numel,
        })
    return rows


@dataclass(frozen=True)
class LeftOut:
    """A weight no target covers: its parameter name, size and why it was left out."""

    name: str
    numel: int
    reason: str


@dataclass(frozen=True)
class ResolveSummary:
    """How much of a model's weights (parameters with >= 2 dims: biases and norm scales are
    never pruned) the resolved targets cover, and every weight left out with the reason, so
    a wildcard that silently misses a kind of layer shows up. Nothing is printed: call
    :meth:`describe` for a readable text."""

    weights: int
    targeted: int
    left_out: tuple[LeftOut, ...]
    #: what ``group_filter`` rules leave alone and why (fixed channels, untraced layers)
    notes: tuple[str, ...] = ()

    @property
    def left_out_params(self) -> int:
        return sum(item.numel for item in self.left_out)

    def describe(self, limit: int = 20) -> str:
        """A few lines: coverage, then the left-out weights grouped by reason."""
        share = self.targeted / self.weights if self.weights else 1.0
        lines = [f"targets cover {self.targeted:,} of {self.weights:,} weight parameters "
                 f"({share:.1%}); {self.left_out_params:,} left out"]
        by_reason: dict[str, list[LeftOut]] = {}
        for item in self.left_out:
            by_reason.setdefault(item.reason, []).append(item)
        for reason, items in by_reason.items():
            names = ", ".join(i.name for i in items[:limit])
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  {sum(i.numel for i in items):,} params ({names}{more}): {reason}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


class Targets(list):
    """What :func:`resolve` returns: the list of :class:`Target` (in model parameter order,
    then any :class:`~prunekit.group_target.GroupTarget`) with ``summary``, a
    :class:`ResolveSummary` of the weights the rules leave out, and ``structure``, the trace
    ``group_filter`` rules made (pass it to the next ``resolve`` of the same model)."""

    def __init__(self, targets: Sequence[Target | GroupTarget],
                 summary: ResolveSummary, structure: Any = None) -> None:
        super().__init__(targets)
        self.summary = summary
        #: the model's traced coupled channels when a rule needed them (else None)
        self.structure = structure


def summarize(ctx: Any, targets: Sequence[Target | GroupTarget]) -> ResolveSummary:
    covered = {n for t in targets for n, p in t.members if p.dim() >= 2}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for module_name, module in ctx.modules.items():
        for attr, param in module._parameters.items():
            name = ctx.param_names.get(id(param)) if param is not None else None
            if name is not None and name not in owners:
                owners[name] = (module_name, module, attr)
    weights = targeted = 0
    left: list[LeftOut] = []
    for name, (module_name, module, attr) in owners.items():
        param = module._parameters[attr]
        if param is None or param.dim() < 2:
            continue
        weights += param.numel()
        if name in covered:
            targeted += param.numel()
        else:
            left.append(LeftOut(name, param.numel(), _why_left_out(ctx, module_name, module,
                                                                   attr)))
    return ResolveSummary(weights, targeted, tuple(left), tuple(ctx.group_notes))


def _why_left_out(ctx: Any, module_name: str, module: nn.Module, attr: str) -> str:
    kind = layer_type(module)
    if kind is None:
        return (f"{type(module).__name__} is not a supported layer type (supported: "
                f"{', '.join(SUPPORTED_TYPES)})")
    if attr not in dict(layer_weights(module)):
        return f"{attr!r} of a {kind} is not a prunable weight"
    if module_name in ctx.notes:
        return ctx.notes[module_name]
    if kind == "Embedding":
        return ("Embedding layers are pruned only when named exactly or selected with "
                "types: [Embedding]")
    return "no rule selects this layer"
