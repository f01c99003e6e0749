"""The layer registry: which module types hold prunable weights, and how their weights
stack gate matrices (RNN gates, attention q/k/v)."""

from __future__ import annotations

import re

from torch import nn

#: Layer types prunekit prunes, by the class name rules use in ``types``.
SUPPORTED_TYPES: dict[str, type[nn.Module]] = {
    "Conv1d": nn.Conv1d,
    "Conv2d": nn.Conv2d,
    "Linear": nn.Linear,
    "RNN": nn.RNN,
    "LSTM": nn.LSTM,
    "GRU": nn.GRU,
    "MultiheadAttention": nn.MultiheadAttention,
    "Embedding": nn.Embedding,
}
#: Gate matrices stacked in each recurrent input/hidden weight.
RNN_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
#: ``nn.MultiheadAttention.in_proj_weight`` stacks the q, k and v projections along dim 0.
QKV_GATES = 3

_GATED_WEIGHT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?")
_PROJ_WEIGHT = re.compile(r"weight_hr_l\d+(_reverse)?")  # LSTM proj_size: one plain matrix


def layer_type(module: nn.Module) -> str | None:
    """The supported type name of ``module`` (subclasses count), or None."""
    for name, cls in SUPPORTED_TYPES.items():
        if isinstance(module, cls):
            return name
    return None


def layer_weights(module: nn.Module) -> list[tuple[str, int]]:
    """``(attribute, gates)`` of every prunable weight of a supported layer: ``weight`` for
    conv/linear/embedding, every ``weight_ih_l*``/``weight_hh_l*`` (and ``_reverse``) for
    recurrent layers, plus LSTM projection weights ``weight_hr_l*`` (one matrix, no gates).

    ``nn.MultiheadAttention`` holds its q, k, v projections either stacked in
    ``in_proj_weight`` (``[3E, E]``: three gates, each pruned at the rate on its own, like
    an LSTM's) or, when ``kdim``/``vdim`` differ from the embedding size, as
    ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``. Its ``out_proj`` is a
    ``Linear`` submodule, selected (and counted) as a layer of its own."""
    kind = layer_type(module)
    if kind is None:
        return []
    own = module._parameters
    if kind == "MultiheadAttention":
        if isinstance(own.get("in_proj_weight"), nn.Parameter):
            return [("in_proj_weight", QKV_GATES)]
        return [(a, 1) for a in ("q_proj_weight", "k_proj_weight", "v_proj_weight")
                if isinstance(own.get(a), nn.Parameter)]
    if kind not in RNN_GATES:
        return [("weight", 1)] if isinstance(own.get("weight"), nn.Parameter) else []
    found = []
    for attr, param in own.items():
        if not isinstance(param, nn.Parameter):
            continue
        if _GATED_WEIGHT.fullmatch(attr):
            found.append((attr, RNN_GATES[kind]))
        elif _PROJ_WEIGHT.fullmatch(attr):
            found.append((attr, 1))
    return found


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: module}`` of every layer with a prunable weight, in model order."""
    return {name: module for name, module in model.named_modules() if layer_weights(module)}
