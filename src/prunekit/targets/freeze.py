"""Hardening, one verb: *freeze* every target (project it once), all targets or none.

:func:`freeze` computes each target's frozen constraint from its weight (one computation
per scheme part: a support scheme's mask, a quantizer's steps, unification's block
assignment), and only when every target succeeded writes the projected weights into the
model. A bad rate or a scheme that does not fit the last layer therefore leaves the model
untouched. Entries that are already zero stay zero (an already pruned model can be pruned
further, and quantizing a pruned model keeps its mask).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..constraints import Frozen, Levels, Support, Unified
from ..errors import ConfigError, PrunekitError, TargetError
from ..schemes import Scheme
from ..schemes.base import split_gates
from .group import GROUP_FILTER, GroupTarget
from .target import Target


def _unified(part: Scheme, w: Tensor, sparsity: float | None, gates: int,
             hints: dict[str, Any]) -> Unified:
    """Unification's block assignment, computed once per gate (as the scheme projects);
    signs frozen from ``w``. Gates stack along the rows, so when a gate's rows are a whole
    number of block rows, the gates' block grids stacked are the weight's own grid."""
    rows = w.shape[0] // gates
    if gates > 1 and rows % part.block[0]:
        raise TargetError(f"scheme {part.name!r} with block {part.block} needs each of the "
                          f"{gates} gates' {rows} rows to be a multiple of {part.block[0]}")
    rate = 0.0 if sparsity is None else sparsity
    states = torch.cat([part.states(g, rate) for g in split_gates(w.detach(), gates)])
    return Unified(tuple(w.shape), part.block, states, w.detach() < 0, hints)


def freeze_weight(scheme: Scheme, w: Tensor, sparsity: float | None, *, gates: int = 1,
                  keep: Tensor | None = None, mode: str = "snap") -> Frozen:
    """The frozen constraint of ``scheme`` at ``sparsity`` for weight ``w`` (not modified).

    ``keep``: entries that may stay nonzero (default: the nonzeros of ``w``); ``mode``: how
    quantized layers retrain (see :class:`~prunekit.constraints.frozen.Levels`)."""
    keep = (w.detach() != 0) if keep is None else keep.to(torch.bool) & (w.detach() != 0)
    current = w.detach().masked_fill(~keep, 0)
    hints: dict[str, Any] = {"gates": gates} if gates > 1 else {}  # steps are per gate
    parts = scheme.parts
    for i, (part, rate) in enumerate(zip(parts, scheme.part_rates(sparsity), strict=True)):
        if part.frozen_kind != "support" and i != len(parts) - 1:
            raise ConfigError(f"scheme {scheme.name!r}: {part.name} must be the last part")
        if part.frozen_kind == "levels":
            scale = part.row_scales(current, gates=gates)
            hints = {**hints, **part.storage_hints(tuple(w.shape)), "scheme": scheme.name}
            return Levels(keep, scale, part.bits, part.level_set, mode, hints)
        if part.frozen_kind == "unified":
            frozen = _unified(part, current, rate, gates, {**hints, "scheme": scheme.name})
            if not bool((keep | ~frozen.mask).all()):  # an earlier zero must stay zero
                frozen.mask &= keep
            return frozen
        mask = part.mask(current, rate, gates=gates).to(keep.device) & keep
        keep = mask
        current = current.masked_fill(~mask, 0)
        hints = {**hints, **part.storage_hints(tuple(w.shape))}
    return Support(keep, {**hints, "scheme": scheme.name})


def freeze(model: nn.Module, targets: Iterable[Target | GroupTarget], *, mode: str = "snap",
           keep: Mapping[str, Tensor] | None = None) -> dict[str, Frozen]:
    """Harden every target: compute all frozen constraints, then write the projected
    weights. Returns ``{parameter name: frozen constraint}``; on any error nothing changed.

    ``keep`` gives extra masks of entries that may stay nonzero (a method's live masks).
    Coupled groups (:class:`GroupTarget`) give a :class:`Support` for every member
    (weights, biases, BatchNorm scales and shifts), see :func:`_group_supports`."""
    targets = list(targets)
    params = dict(model.named_parameters())
    frozen: dict[str, Frozen] = {}
    groups = [t for t in targets if isinstance(t, GroupTarget)]
    plain = [t for t in targets if not isinstance(t, GroupTarget)]
    for target in plain:
        if not isinstance(target, Target):
            raise ConfigError(f"freeze expects Target objects (from prunekit.targets.resolve), "
                              f"got {type(target).__name__}")
        if params.get(target.name) is not target.param:
            raise TargetError(f"target {target.name!r} was resolved for another model")
        extra = None if keep is None else keep.get(target.name)
        try:
            frozen[target.name] = freeze_weight(target.scheme, target.param, target.sparsity,
                                                gates=target.gates, keep=extra, mode=mode)
        except PrunekitError as exc:
            raise type(exc)(f"target {target.name!r} (scheme {target.scheme_name!r}): "
                            f"{exc}") from None
    supports = _group_supports(groups, params, frozen, keep)
    biases = _filter_biases(model, plain, frozen)
    frozen.update(biases)
    frozen.update(supports)
    with torch.no_grad():
        for target in plain:
            frozen[target.name].to(target.param.device).apply_(target.param.data)
        for name, support in {**biases, **supports}.items():
            support.to(params[name].device).apply_(params[name].data)
    return frozen


def _group_supports(groups: list[GroupTarget], params: Mapping[str, nn.Parameter],
                    frozen: Mapping[str, Frozen],
                    keep: Mapping[str, Tensor] | None) -> dict[str, Support]:
    """One :class:`Support` per parameter the coupled groups touch. Groups are projected
    in order, each inside the masks of those before it (a layer's rows belong to one
    group, its columns to another), so every group removes exactly its rate of units."""
    masks: dict[str, Tensor] = {}
    for g in groups:
        for name, param in g.members:
            if params.get(name) is not param:
                raise TargetError(f"target {g.name!r}: {name} is not a parameter of this model")
            if name in frozen:
                raise TargetError(f"{name} is constrained by target {name!r} and by the "
                                  f"coupled group {g.name!r}; a weight takes one rule")
        given = [masks.get(n, None if keep is None else keep.get(n)) for n in g.names]
        for name, mask in zip(g.names, g.masks(keep=given), strict=True):
            masks[name] = mask
    hints = {"scheme": GROUP_FILTER}
    return {name: Support(mask, hints) for name, mask in masks.items()}


def _filter_biases(model: nn.Module, targets: list[Target],
                   frozen: Mapping[str, Frozen]) -> dict[str, Support]:
    """A bias entry goes with its filter: a pruned filter whose bias stayed would still
    emit a constant, so the channel would be alive and the layer could not shrink. For
    every target whose scheme prunes whole filters, the bias of its pruned rows is frozen
    at zero too (unless another target already constrains that bias)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, Support] = {}
    for target in targets:
        if target.gates != 1 or not target.scheme.removes_rows:
            continue
        bias = getattr(model.get_submodule(target.module_name), "bias", None)
        name = names.get(id(bias))
        if not isinstance(bias, nn.Parameter) or name is None or name in frozen:
            continue
        rows = frozen[target.name].mask.reshape(target.shape[0], -1).any(1)
        if bias.shape == rows.shape and not bool(rows.all()):
            out[name] = Support(rows.to(bias.device), {"scheme": "filter"})
    return out
