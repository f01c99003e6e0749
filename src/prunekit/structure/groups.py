"""Coupled channels as groups: what can be removed together, scored and pruned as one.

A *unit* is one set of coupled channels (see :mod:`.trace`); a *group* is every unit of
the same layers (a plain conv's filters form one group; the convs of a ResNet stage
joined by residual adds form one group). Filter pruning of a group removes whole units:
the filter rows and biases of every producing layer, the BatchNorm scale and shift after
them and the input columns of every reading layer, so the removed channel is exactly zero
everywhere and the layers can later be shrunk (:mod:`prunekit.runtime.shrink`) without
changing the model's outputs.

A unit is scored by the L2 norm of all its weight slices (producers' rows and biases,
readers' columns), the group norm of Torch-Pruning's ``GroupNormImportance``; BatchNorm
entries are not scored (their scale is not in the units of a weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..constraints import Support
from ..errors import ConfigError
from .trace import Traced, trace

#: roles whose slices produce a channel (rows of the weight, entries of the bias)
PRODUCING = ("out", "depthwise")
#: roles whose slices read a channel (columns of the weight)
READING = ("in", "rnn_in")


@dataclass
class Group:
    """Units (root ids) produced by the same ``layers``; ``pinned`` maps a unit that can
    never be removed to the reason."""

    layers: tuple[str, ...]
    units: list[int]
    pinned: dict[int, str] = field(default_factory=dict)

    @property
    def removable(self) -> list[int]:
        return [u for u in self.units if u not in self.pinned]

    def describe(self) -> str:
        head = (f"{', '.join(self.layers)}: {len(self.units)} channels, "
                f"{len(self.removable)} removable")
        reasons = sorted(set(self.pinned.values()))
        return head + "".join(f"\n    {self._count(r)} fixed: {r}" for r in reasons)

    def _count(self, reason: str) -> int:
        return sum(1 for r in self.pinned.values() if r == reason)


@dataclass
class Structure:
    """A traced model's coupled channels: ``slots[module][role]`` gives the unit (root id)
    of every position of that role (see :class:`~prunekit.structure.trace.Traced`)."""

    traced: Traced
    slots: dict[str, dict[str, Tensor]]
    groups: list[Group]
    pinned: dict[int, str]

    @property
    def graph(self):
        return self.traced.graph

    def group_of(self, layer: str) -> Group:
        for g in self.groups:
            if layer in g.layers:
                return g
        raise ConfigError(f"layer {layer!r} produces no channel group; groups are made by: "
                          f"{', '.join(x for g in self.groups for x in g.layers)}")

    def report(self) -> str:
        """One paragraph per group: its layers, how many channels can go and, for those
        that cannot, which layer or op forbids it."""
        lines = [g.describe() for g in self.groups]
        lines += [f"{name}: {why}" for name, why in self.traced.notes.items()]
        return "\n".join(lines)


def build(model: nn.Module, example: Tensor) -> Structure:
    """Trace ``model`` on ``example`` and group its coupled channels."""
    traced = trace(model, example)
    slots = {m: {r: traced.roots(ids) for r, ids in roles.items()}
             for m, roles in traced.roles.items()}
    pinned: dict[int, str] = {}
    for i, reason in traced.pins.items():
        pinned.setdefault(traced.find(i), reason)
    produced: dict[int, list[str]] = {}
    for module, roles in slots.items():
        for role in PRODUCING:
            for u in roles.get(role, torch.empty(0, dtype=torch.long)).unique().tolist():
                produced.setdefault(u, []).append(module)
    for module, roles in slots.items():
        for role in READING + ("norm",):
            for u in roles.get(role, torch.empty(0, dtype=torch.long)).unique().tolist():
                if u not in produced:
                    pinned.setdefault(u, f"no layer prunekit can shrink produces it "
                                         f"(read by {module})")
    return Structure(traced, slots, _group(produced, pinned), pinned)


def _group(produced: dict[int, list[str]], pinned: dict[int, str]) -> list[Group]:
    """Units whose producing layers overlap belong to one group (union over layers)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for layers in produced.values():
        for other in layers[1:]:
            a, b = find(layers[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    by_root: dict[str, list[int]] = {}
    for unit, layers in produced.items():
        by_root.setdefault(find(layers[0]), []).append(unit)
    groups = []
    for units in by_root.values():
        layers = tuple(dict.fromkeys(m for u in units for m in produced[u]))
        units = sorted(units)
        groups.append(Group(layers, units, {u: pinned[u] for u in units if u in pinned}))
    return groups


# --------------------------------------------------------------------- slices
def param_slices(structure: Structure,
                 model: nn.Module) -> list[tuple[str, str, Tensor, int, Tensor]]:
    """Every ``(role, parameter name, parameter, dim, unit of each index along dim)`` that
    a unit owns: weight rows and biases of producers, weight columns of readers, BatchNorm
    scales and shifts."""
    modules = dict(model.named_modules())
    out = []
    for name, roles in structure.slots.items():
        m = modules[name]
        prefix = f"{name}." if name else ""
        for role, units in roles.items():
            if role in PRODUCING or role == "norm":
                for attr in ("weight", "bias"):
                    p = getattr(m, attr, None)
                    if isinstance(p, nn.Parameter):
                        out.append((role, prefix + attr, p, 0, units))
            elif role == "in":
                out.append((role, prefix + "weight", m.weight, 1, units))
            elif role == "rnn_in":
                for attr in ("weight_ih_l0", "weight_ih_l0_reverse"):
                    p = getattr(m, attr, None)
                    if isinstance(p, nn.Parameter):
                        out.append((role, prefix + attr, p, 1, units))
    return out


def constraints_for(structure: Structure, model: nn.Module,
                    removed: set[int]) -> dict[str, Support]:
    """One :class:`Support` per parameter a removed unit touches: zero on its slices."""
    masks: dict[str, Tensor] = {}
    gone = torch.tensor(sorted(removed), dtype=torch.long)
    for _, name, p, dim, units in param_slices(structure, model):
        cut = torch.isin(units, gone)
        if not bool(cut.any()):
            continue
        mask = masks.setdefault(name, torch.ones_like(p, dtype=torch.bool))
        shape = [1] * p.dim()
        shape[dim] = -1
        mask &= ~cut.reshape(shape).expand_as(mask)
    hints = {"scheme": "filter"}
    return {name: Support(mask, hints) for name, mask in masks.items()}
