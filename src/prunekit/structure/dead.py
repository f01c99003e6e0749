"""Dead channels: units whose removal cannot change the outputs, and zeroing all of them.

A unit (see :mod:`.trace`) is *dead* when

- every slice that produces it is zero (filter rows and biases of the convs/linears that
  make it, the depthwise rows it passes through, the BatchNorm scale and shift after
  them) and nothing between maps zero to a nonzero (a sigmoid would), so the channel is
  exactly zero wherever it is read; or
- every slice that reads it is zero (the input columns of every consumer), so its value
  is never used.

Pinned units (model outputs, padding, ops prunekit cannot follow) never count as dead.

Irregular pruning leaves many such channels half-alive: an fc1 row whose fc2 column was
pruned still stores its surviving weights and its bias, and a filter whose outputs no
later weight reads still stores its kernel. :func:`drop_dead_channels` zeroes every slice
of every dead unit and tightens the frozen constraints to match, so the model file stores
none of it while the outputs stay exactly the same (the zeroed values were multiplied by
zero, or were zero already). :func:`prunekit.runtime.shrink` removes the same units
physically for inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..constraints import Frozen, Levels, Rounded, Support
from ..errors import ConfigError
from .groups import READING, Structure, build, constraints_for, param_slices


def dead_units(structure: Structure, model: nn.Module) -> set[int]:
    """Units whose removal leaves the outputs unchanged (see the module docstring)."""
    produced_zero: dict[int, bool] = {}
    read_zero: dict[int, bool] = {}
    for role, _, p, dim, units in param_slices(structure, model):
        alive = p.detach().transpose(0, dim).reshape(p.shape[dim], -1).ne(0).any(1)
        side = read_zero if role in READING else produced_zero
        for u, a in zip(units.tolist(), alive.tolist(), strict=True):
            side[u] = side.get(u, True) and not a
    affine = {structure.traced.find(i) for i in structure.traced.affine}
    dead = set()
    for g in structure.groups:
        for u in g.removable:
            by_producer = produced_zero.get(u, False) and u not in affine
            if by_producer or read_zero.get(u, True):
                dead.add(u)
        if all(u in dead for u in g.units):  # a layer keeps at least one channel
            dead.discard(g.units[0])
    return dead


def dead_channel_counts(model: nn.Module, example: Tensor) -> dict[str, int] | None:
    """Dead units per channel group (its layers joined by ", "), None where the model
    cannot be traced: what a report says of a loaded model, whose dead channels
    :func:`drop_dead_channels` left with no weight at all."""
    try:
        structure = build(model, example)
    except ConfigError:
        return None
    return _per_group(structure, dead_units(structure, model))


def _per_group(structure: Structure, units: set[int]) -> dict[str, int]:
    counts = {", ".join(g.layers): sum(1 for u in g.units if u in units)
              for g in structure.groups}
    return {k: v for k, v in counts.items() if v}


@dataclass
class Dropped:
    """What :func:`drop_dead_channels` did: ``channels`` zeroed per group (its layers
    joined by ", "), ``zeroed`` nonzero entries set to zero per parameter, or ``note``
    saying why nothing was done."""

    channels: dict[str, int] = field(default_factory=dict)
    zeroed: dict[str, int] = field(default_factory=dict)
    note: str | None = None


#: constraints that accept a zero at any entry (a tighter mask keeps them valid); a unified
#: block shares one magnitude, so zeroing some of its entries would leave its set
_ZERO_OK = (Support, Levels, Rounded)


def drop_dead_channels(model: nn.Module, constraints: dict[str, Frozen],
                       example: Tensor) -> Dropped:
    """Zero every slice of every dead unit of ``model`` (in place) and tighten
    ``constraints`` (in place: masks of :class:`Support`/:class:`Levels`) so retraining or
    a model file keeps them zero. The outputs on ``example`` and on a random input of its
    shape are checked to stay the same; if they would not, nothing is changed and the
    returned note says so. A model that cannot be traced is left as it is (note)."""
    try:
        structure = build(model, example)
    except ConfigError as exc:
        return Dropped(note=f"not traced: {exc}")
    dead = dead_units(structure, model)
    slices = param_slices(structure, model)
    for _, name, _, _, units in slices:  # keep units touching a constraint zeros would break
        c = constraints.get(name)
        if c is not None and not isinstance(c, _ZERO_OK):
            dead -= set(units.tolist())
    if not dead:
        return Dropped()
    masks = {name: s.mask for name, s in constraints_for(structure, model, dead).items()}
    params = dict(model.named_parameters())
    inputs = _probes(example)
    before = _outputs(model, inputs)
    saved = {name: params[name].detach().clone() for name in masks}
    old = {name: _masks(constraints[name]) for name in masks if name in constraints}
    zeroed = {}
    with torch.no_grad():
        for name, keep in masks.items():
            p = params[name]
            keep = keep.to(p.device)
            n = int((p.detach().ne(0) & ~keep).sum())
            p.masked_fill_(~keep, 0)
            c = constraints.get(name)
            if isinstance(c, (Support, Levels)):
                _tighten(c, keep)
            if n:
                zeroed[name] = n
    change = _difference(before, _outputs(model, inputs))
    if change > 0:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        for name, state in old.items():
            _restore(constraints[name], state)
        return Dropped(note=f"not applied: the outputs would change by {change:.3g}")
    return Dropped(_per_group(structure, dead), zeroed)


def _tighten(c: Support | Levels, keep: Tensor) -> None:
    c.mask = c.mask & keep.to(c.mask.device)
    if isinstance(c, Levels) and c.free is not None:
        c.free = c.free & c.mask


def _masks(c: Frozen) -> dict[str, Tensor | None]:
    return {"mask": c.mask, "free": getattr(c, "free", None)}


def _restore(c: Frozen, state: Mapping[str, Tensor | None]) -> None:
    c.mask = state["mask"]
    if isinstance(c, Levels):
        c.free = state["free"]


def _probes(example: Tensor) -> list[Tensor]:
    """The example, and a random input like it where the input is float (tokens are not)."""
    if not example.is_floating_point():
        return [example]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(example.shape, generator=generator, dtype=example.dtype)
    return [example, noise.to(example.device)]


def _outputs(model: nn.Module, inputs: list[Tensor]) -> list[Any]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [model(x) for x in inputs]
    finally:
        model.train(was_training)


def _difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs (tensors, or tuples of them)."""
    if isinstance(a, Tensor):
        if a.shape != b.shape:
            return float("inf")
        if a.is_floating_point():
            return float((a - b).abs().nan_to_num(nan=float("inf")).max()) if a.numel() else 0.0
        return 0.0 if torch.equal(a, b) else float("inf")
    if isinstance(a, (tuple, list)):
        return max((_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, Mapping):
        return max((_difference(a[k], b[k]) for k in a), default=0.0)
    return 0.0


__all__ = ["Dropped", "dead_channel_counts", "dead_units", "drop_dead_channels"]
