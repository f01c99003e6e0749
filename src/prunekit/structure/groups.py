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

from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from ..constraints import Support
from ..errors import ConfigError
from ..schemes.base import check_sparsity, groups_to_prune
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


def unit_scores(structure: Structure, model: nn.Module) -> dict[int, float]:
    """Squared L2 norm of every unit's weight slices (BatchNorm entries left out)."""
    scores: dict[int, float] = {}
    for role, _, p, dim, units in param_slices(structure, model):
        if role == "norm":
            continue
        energy = p.detach().double().pow(2)
        energy = energy.transpose(0, dim).reshape(p.shape[dim], -1).sum(1)
        for u, e in zip(units.tolist(), energy.tolist(), strict=True):
            scores[u] = scores.get(u, 0.0) + e
    return scores


# ---------------------------------------------------------------------- prune
def select(structure: Structure, model: nn.Module, sparsity: float,
           layers: str | Sequence[str] = "*") -> set[int]:
    """Units to remove: in every group with a layer matching ``layers``, the
    ``sparsity`` fraction of its removable units of smallest group norm (ties: the earlier
    unit), rounded to whole units and always keeping one."""
    sparsity = check_sparsity(sparsity)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = [g for g in structure.groups
              if any(fnmatchcase(x, p) for x in g.layers for p in patterns)]
    if not chosen:
        raise ConfigError(f"no channel group has a layer matching {patterns}; groups are made "
                          f"by: {', '.join(x for g in structure.groups for x in g.layers)}")
    scores = unit_scores(structure, model)
    removed: set[int] = set()
    for g in chosen:
        free = g.removable
        k = groups_to_prune(len(free), sparsity)
        if len(free) == len(g.units) and k == len(free):
            k -= 1
        ranked = sorted(free, key=lambda u: (scores.get(u, 0.0), u))
        removed.update(ranked[:k])
    return removed


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


@dataclass
class Pruned:
    """What :func:`prune` did: the structure, the removed units and the frozen
    constraints (every touched parameter, biases and BatchNorm included) that keep them
    zero through retraining (:class:`prunekit.MaskEnforcer` takes them as they are)."""

    structure: Structure
    removed: set[int]
    constraints: dict[str, Support]

    def report(self) -> str:
        lines = []
        for g in self.structure.groups:
            gone = sum(1 for u in g.units if u in self.removed)
            lines.append(f"{', '.join(g.layers)}: removed {gone} of {len(g.units)} channels"
                         + (f" ({len(g.pinned)} fixed)" if g.pinned else ""))
        return "\n".join(lines)


def prune(model: nn.Module, example: Tensor, sparsity: float, *,
          layers: str | Sequence[str] = "*") -> Pruned:
    """Filter-prune ``model`` by coupled groups, in place: in every selected group remove
    ``sparsity`` of its removable channels (see :func:`select`), zeroing every slice of
    them, and return the constraints that keep them removed."""
    structure = build(model, example)
    removed = select(structure, model, sparsity, layers)
    constraints = constraints_for(structure, model, removed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, c in constraints.items():
            c.apply_(params[name].data)
    return Pruned(structure, removed, constraints)
