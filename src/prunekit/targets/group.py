"""A coupled channel group as one pruning target spanning several parameters.

Filter pruning of a layer is only physically removable when every slice that touches the
channel goes with it (see :mod:`prunekit.structure`): the filter rows and biases of every
layer that produces it (both sides of a residual add, a depthwise conv passing it on), the
BatchNorm scale and shift after them and the input columns of every layer that reads it.
A :class:`GroupTarget` is such a group of *units* (one unit = one set of coupled channels)
with a rate: the fraction of its removable units to remove. The methods, hardening and the
enforcer treat it like any other target, except that its constraint spans all its member
parameters at once.

The constraint set is "at most ``n - k`` of the ``n`` removable units hold any nonzero",
with ``k = groups_to_prune(n, rate)`` (the rate of :func:`prunekit.structure.select`). Its
exact Euclidean projection keeps the ``n - k`` units with the largest L2 norm over *all*
their slices, BatchNorm entries included: the error of removing a unit is the energy of
every entry that removal zeros, so a score that left some of them out would not be the
projection. This is exact when no entry belongs to two units of the same group, which holds
unless one layer both reads and produces the same coupled channels (``x + conv(x)``
inside a group); there the projection is the same top-``n - k`` rule, applied to the
overlapping energies.

This module is tensor maths over the member slices only; tracing a model into groups is
:func:`prunekit.targets.coupled.group_targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..schemes.base import groups_to_prune, keep_largest

#: the scheme name a target rule uses for coupled-group filter pruning
GROUP_FILTER = "group_filter"


@dataclass(frozen=True)
class Slice:
    """The part of member ``member`` that units own along ``dim``: ``units[i]`` is the
    position (in the group's removable units) owning index ``i``, or -1 for an index that
    belongs to no removable unit of this group."""

    member: int
    dim: int
    units: Tensor


@dataclass(eq=False)
class GroupTarget:
    """Removable units of one coupled channel group (module docstring), at ``sparsity``.

    ``members``: ``(parameter name, parameter)`` of every parameter a unit touches, in
    model order; ``slices``: which indices of which member each unit owns; ``layers``: the
    layers producing the group's channels; ``fixed``: one line per reason some of the
    group's channels can never be removed (they are left alone)."""

    name: str
    layers: tuple[str, ...]
    members: list[tuple[str, nn.Parameter]]
    slices: list[Slice]
    units: int
    sparsity: float
    fixed: tuple[str, ...] = field(default=())

    scheme_name = GROUP_FILTER
    layer_type = "group"
    gates = 1

    # ------------------------------------------------------------ as a target
    @property
    def module_name(self) -> str:
        """The first producing layer: per-layer method options (``rho: {conv1: ...}``)
        name the group by it."""
        return self.layers[0]

    @property
    def param(self) -> nn.Parameter:
        """The first member (for the device and dtype of a penalty)."""
        return self.members[0][1]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.members]

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.members)

    @property
    def weight_layers(self) -> list[str]:
        """Modules owning a member of two or more dims (convs, linears): the layers whose
        weights this target changes."""
        return list(dict.fromkeys(n.rpartition(".")[0] for n, p in self.members if p.dim() >= 2))

    @property
    def to_remove(self) -> int:
        """How many units the rate removes: nearest whole unit, always keeping one."""
        return groups_to_prune(self.units, self.sparsity)

    def _values(self, values: Sequence[Tensor] | None) -> list[Tensor]:
        return [p for _, p in self.members] if values is None else list(values)

    # ---------------------------------------------------------------- maths
    def _rows(self, v: Tensor, s: Slice) -> Tensor:
        """``v`` as ``[index along s.dim, everything else]``."""
        return v.transpose(0, s.dim).reshape(v.shape[s.dim], -1)

    def energy(self, values: Sequence[Tensor] | None = None,
               keep: Sequence[Tensor | None] | None = None) -> Tensor:
        """Squared L2 norm of every unit over all its slices (float64, no gradient); with
        ``keep``, of the kept entries only."""
        vals = self._values(values)
        out = torch.zeros(self.units, dtype=torch.float64)
        for s in self.slices:
            v = vals[s.member].detach()
            k = None if keep is None else keep[s.member]
            if k is not None:
                v = v * k.to(v.device)
            rows = self._rows(v.double().pow(2), s).sum(1).cpu()
            ok = s.units >= 0
            out.index_add_(0, s.units[ok], rows[ok])
        return out

    def alive(self, keep: Sequence[Tensor | None] | None = None) -> Tensor:
        """Units with at least one entry ``keep`` allows (all of them without ``keep``)."""
        if keep is None or all(k is None for k in keep):
            return torch.ones(self.units, dtype=torch.bool)
        counts = torch.zeros(self.units, dtype=torch.long)
        for s in self.slices:
            k = keep[s.member]
            ok = s.units >= 0
            kept = (torch.ones(s.units.shape, dtype=torch.long) if k is None
                    else self._rows(k, s).any(1).cpu().long())
            counts.index_add_(0, s.units[ok], kept[ok])
        return counts > 0

    def removed(self, values: Sequence[Tensor] | None = None,
                keep: Sequence[Tensor | None] | None = None) -> Tensor:
        """Bool per unit: the :attr:`to_remove` units of smallest norm (ties: the earlier
        unit). Units ``keep`` already removes entirely come first, so pruning again inside
        earlier masks never revives one to remove another."""
        scores = self.energy(values, keep)
        scores[~self.alive(keep)] = -1.0
        return ~keep_largest(scores, self.to_remove)

    def masks(self, values: Sequence[Tensor] | None = None,
              keep: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """Per member, where it may stay nonzero (True = kept) once :meth:`removed` units
        are gone, within ``keep``."""
        vals = self._values(values)
        return self.masks_for(self.removed(vals, keep), vals, keep)

    def masks_for(self, removed: Tensor, values: Sequence[Tensor] | None = None,
                  keep: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """Per member, the mask that zeros every slice of the ``removed`` units."""
        vals = self._values(values)
        out = []
        for i, v in enumerate(vals):
            k = None if keep is None else keep[i]
            out.append(torch.ones(v.shape, dtype=torch.bool, device=v.device) if k is None
                       else k.to(device=v.device, dtype=torch.bool).clone())
        for s in self.slices:
            cut = torch.zeros(s.units.shape, dtype=torch.bool)
            ok = s.units >= 0
            cut[ok] = removed[s.units[ok]]
            shape = [1] * vals[s.member].dim()
            shape[s.dim] = -1
            m = out[s.member]
            m &= ~cut.to(m.device).reshape(shape).expand_as(m)
        return out

    def project_members(self, values: Sequence[Tensor] | None = None,
                        keep: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """The exact projection of ``values`` (default: the members) onto the set, within
        ``keep``: new tensors, one per member."""
        vals = self._values(values)
        with torch.no_grad():
            return [v.detach().masked_fill(~m, 0)
                    for v, m in zip(vals, self.masks(vals, keep), strict=True)]

    def group_norms(self, values: Sequence[Tensor] | None = None) -> Tensor:
        """L2 norm of every unit, differentiable in the members (reweighted and group
        lasso penalise these); a unit at zero has a zero gradient, not NaN."""
        vals = self._values(values)
        device = vals[0].device
        dtype = vals[0].dtype if vals[0].is_floating_point() else torch.float32
        energy = torch.zeros(self.units, dtype=dtype, device=device)
        for s in self.slices:
            rows = self._rows(vals[s.member].pow(2), s).sum(1).to(device, dtype)
            ok = s.units >= 0
            idx = s.units[ok].to(device)
            energy = energy.index_add(0, idx, rows[ok.to(device)])
        tiny = torch.finfo(dtype).tiny
        return torch.where(energy > 0, energy.clamp_min(tiny).sqrt(), energy.new_zeros(()))

    def removed_now(self) -> Tensor:
        """Bool per unit: every slice of it is exactly zero in the members now (measured)."""
        return self.energy() == 0

    def achieved_sparsity(self) -> float:
        """Fraction of the removable units that are entirely zero now."""
        return float(self.removed_now().sum()) / self.units if self.units else 0.0


__all__ = ["GROUP_FILTER", "GroupTarget", "Slice"]
