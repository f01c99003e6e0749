"""A ``group_filter`` target rule resolved on a traced model: one target per coupled group.

:func:`prunekit.targets.resolve` hands a rule's selected layers here; every channel group
(:func:`prunekit.structure.build`) with a producing layer among them becomes a
:class:`~prunekit.targets.group.GroupTarget` over its removable units. What cannot be
pruned is said, not skipped silently: channels pinned by the trace (the model's output, zero
padding, an op prunekit cannot follow) are listed per group with the reason, and a
selected layer that produces no group (a recurrent layer, whose hidden state feeds back)
gets a note too.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from ..structure.groups import Group, Structure, param_slices
from .group import GroupTarget, Slice


def _fixed(group: Group) -> tuple[str, ...]:
    """One line per reason some channels of ``group`` stay."""
    where = ", ".join(group.layers)
    lines = []
    for reason in sorted(set(group.pinned.values())):
        count = sum(1 for r in group.pinned.values() if r == reason)
        lines.append(f"{where}: {count} of {len(group.units)} channels kept: {reason}")
    return tuple(lines)


def _target(structure: Structure, model: nn.Module, group: Group,
            sparsity: float) -> GroupTarget:
    position = {u: i for i, u in enumerate(group.removable)}
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    found: dict[str, tuple[nn.Parameter, list[tuple[int, torch.Tensor]]]] = {}
    for _, name, param, dim, units in param_slices(structure, model):
        owner = torch.tensor([position.get(u, -1) for u in units.tolist()], dtype=torch.long)
        if bool((owner >= 0).any()):
            found.setdefault(name, (param, []))[1].append((dim, owner))
    names = sorted(found, key=lambda n: order.get(n, len(order)))
    members = [(n, found[n][0]) for n in names]
    slices = [Slice(i, dim, owner) for i, n in enumerate(names) for dim, owner in found[n][1]]
    return GroupTarget(", ".join(group.layers), tuple(group.layers), members, slices,
                       len(group.removable), float(sparsity), _fixed(group))


def group_targets(structure: Structure, model: nn.Module, selected: Collection[str],
                  excluded: Collection[str], sparsity: float
                  ) -> tuple[list[GroupTarget], list[str]]:
    """Targets for the groups with a producing layer in ``selected`` and none in
    ``excluded`` (a group is pruned whole or not at all), and notes on what stays: fixed
    channels, groups with nothing removable, excluded groups, selected layers that make no
    group."""
    targets: list[GroupTarget] = []
    notes: list[str] = []
    produced: set[str] = set()
    for g in structure.groups:
        produced.update(g.layers)
        if not any(layer in selected for layer in g.layers):
            continue
        where = ", ".join(g.layers)
        blocked = [layer for layer in g.layers if layer in excluded]
        if blocked:
            notes.append(f"{where}: not pruned: {', '.join(blocked)} is excluded and its "
                         f"channels are coupled with the others")
            continue
        notes.extend(_fixed(g))
        if not g.removable:
            continue
        targets.append(_target(structure, model, g, sparsity))
    for layer in selected:
        if layer not in produced:
            why = structure.traced.notes.get(layer, "it makes no channel prunekit can follow")
            notes.append(f"{layer}: no channel group of its own: {why}")
    return targets, notes


__all__ = ["group_targets"]
