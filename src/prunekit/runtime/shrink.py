"""Physically smaller layers: remove dead channel units from a traced model.

Which units are dead (removing them cannot change the model's outputs) is decided by
:func:`prunekit.structure.dead_units`. Shrinking copies the traced graph, replaces each
touched layer by a smaller one holding only the kept slices, and rewrites the piece sizes
of ``torch.split``/``chunk`` calls whose pieces lost channels; every other op in the graph
is shape-agnostic along channels.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx, nn

from ..structure import Structure, dead_units


def _keep(units: Tensor, removed: Tensor) -> Tensor:
    return torch.nonzero(~torch.isin(units, removed)).flatten()


def _conv(m: nn.Module, keep_out: Tensor | None, keep_in: Tensor | None,
          depthwise: Tensor | None) -> nn.Module:
    w = m.weight.detach()
    b = None if m.bias is None else m.bias.detach()
    groups = m.groups
    if depthwise is not None:
        w, b, groups = w[depthwise], None if b is None else b[depthwise], len(depthwise)
    if keep_out is not None:
        w, b = w[keep_out], None if b is None else b[keep_out]
    if keep_in is not None:
        w = w[:, keep_in]
    in_channels = w.shape[1] * groups
    new = type(m)(in_channels, w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,
                  groups, b is not None, m.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _linear(m: nn.Linear, keep_out: Tensor | None, keep_in: Tensor | None) -> nn.Linear:
    w = m.weight.detach()
    b = None if m.bias is None else m.bias.detach()
    if keep_out is not None:
        w, b = w[keep_out], None if b is None else b[keep_out]
    if keep_in is not None:
        w = w[:, keep_in]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _norm(m: nn.Module, keep: Tensor) -> nn.Module:
    new = copy.deepcopy(m)
    new.num_features = len(keep)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, attr, None)
        if t is None:
            continue
        value = t.detach()[keep].clone()
        if isinstance(t, nn.Parameter):
            setattr(new, attr, nn.Parameter(value, requires_grad=t.requires_grad))
        else:
            new.register_buffer(attr, value)
    return new


def _rnn(m: nn.RNNBase, keep_in: Tensor) -> nn.RNNBase:
    new = copy.deepcopy(m)
    new.input_size = len(keep_in)
    for attr in ("weight_ih_l0", "weight_ih_l0_reverse"):
        if hasattr(m, attr):
            setattr(new, attr, nn.Parameter(getattr(m, attr).detach()[:, keep_in].clone()))
    new._init_flat_weights()
    return new


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def removable(structure: Structure, removed: set[int]) -> set[int]:
    """``removed`` less one unit wherever it would empty a layer's outputs or inputs:
    torch turns a conv with no input channels into one with no *output* channels (not its
    bias), and an empty tensor breaks the ops after it. Keeping a dead unit never changes
    the outputs; the layer only keeps one zero channel more."""
    removed = set(removed)
    for roles in structure.slots.values():
        for units in roles.values():
            present = units.unique().tolist()
            if present and all(u in removed for u in present):
                removed.discard(min(present))
    return removed


def shrink(structure: Structure, removed: set[int]) -> fx.GraphModule:
    """A copy of the traced model with the ``removed`` units taken out of every layer
    (all but one where a layer would lose all its channels, see :func:`removable`)."""
    gm = copy.deepcopy(structure.graph)
    gone = torch.tensor(sorted(removable(structure, removed)), dtype=torch.long)
    modules = dict(gm.named_modules())
    for name, roles in structure.slots.items():
        m = modules[name]
        keep = {r: _keep(u, gone) for r, u in roles.items()}
        if not any(len(k) < len(roles[r]) for r, k in keep.items()):
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            new = _conv(m, keep.get("out"), keep.get("in"), keep.get("depthwise"))
        elif isinstance(m, nn.Linear):
            new = _linear(m, keep.get("out"), keep.get("in"))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = _norm(m, keep["norm"])
        elif isinstance(m, nn.RNNBase):
            new = _rnn(m, keep["rnn_in"])
        else:
            continue
        new.train(m.training)
        _set(gm, name, new)
    _resize_splits(gm, structure, gone)
    gm.recompile()
    return gm


def _resize_splits(gm: fx.GraphModule, structure: Structure, gone: Tensor) -> None:
    """``torch.split``/``chunk`` along channels get the kept size of every piece."""
    for node in gm.graph.nodes:
        pieces = structure.traced.splits.get(node.name)
        if pieces is None:
            continue
        sizes = [int((~torch.isin(structure.traced.roots(p), gone)).sum()) for p in pieces]
        source = node.args[0]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(torch.split, (source, sizes), {"dim": dim})
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


__all__ = ["dead_units", "removable", "shrink"]
