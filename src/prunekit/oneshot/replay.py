"""GEMM inputs of weights that no called submodule applies: recurrent gates and attention.

A ``Linear``'s inputs are its forward argument, but an ``nn.LSTM``/``nn.GRU``/``nn.RNN``
applies ``weight_ih_l{k}`` to layer ``k``'s input sequence and ``weight_hh_l{k}`` to its own
previous hidden states, and ``nn.MultiheadAttention`` applies ``in_proj_weight`` to its
query and ``out_proj.weight`` to the attention output, inside one fused call. These
functions replay the module from its forward arguments to recover those inputs, as rows of
the weight's GEMM (one row per time step and sequence, or per token):

- **Recurrent layers**: layer by layer and direction by direction, a one-layer module of the
  same kind with that layer's weights runs the layer's input; its outputs are the hidden
  states (``h_{t-1}``: the initial state, then every output but the last; reversed for the
  backward direction) and, concatenated over directions, the next layer's input.
- **Attention**: ``in_proj_weight`` reads the query (so the query, key and value must be one
  tensor: self-attention), ``q/k/v_proj_weight`` read the query, key and value; the input of
  ``out_proj`` is the module's output with ``out_proj`` set to the identity for the call.

Replays call ``forward`` directly, so no hook fires inside them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import TargetError

RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)


class ReplayError(TargetError):
    """A module's inputs cannot be replayed for weight ``part`` (the caller names it)."""

    def __init__(self, part: str | None, reason: str) -> None:
        super().__init__(reason)
        self.part, self.reason = part, reason
MHA_PARTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
             "out_proj.weight")


def rnn_parts(module: nn.RNNBase) -> list[str]:
    sides = [""] + (["_reverse"] if module.bidirectional else [])
    return [f"weight_{kind}_l{k}{side}" for k in range(module.num_layers) for side in sides
            for kind in ("ih", "hh")]


def check_part(module: nn.Module, part: str, name: str) -> None:
    """Refuse, by name, a recurrent or attention weight whose inputs cannot be replayed."""
    if isinstance(module, RNN_TYPES):
        if getattr(module, "proj_size", 0):
            raise TargetError(f"{name}: an LSTM with proj_size has projected hidden states; "
                              f"one-shot compression does not replay it")
        if part not in rnn_parts(module):
            raise TargetError(f"{name}: one-shot compression replays the gate weights "
                              f"(weight_ih_l*, weight_hh_l*) of {type(module).__name__}, "
                              f"not {part}")
    elif part not in MHA_PARTS:
        raise TargetError(f"{name}: one-shot compression replays the projection weights of "
                          f"MultiheadAttention ({', '.join(MHA_PARTS)}), not {part}")


# ------------------------------------------------------------------------ recurrent
def _single(module: nn.RNNBase, layer: int, reverse: bool) -> nn.RNNBase:
    """A one-layer, one-direction module sharing layer ``layer``'s weights."""
    size = module.input_size if layer == 0 else module.hidden_size * (
        2 if module.bidirectional else 1)
    extra = {"nonlinearity": module.nonlinearity} if isinstance(module, nn.RNN) else {}
    with torch.device("meta"):
        single = type(module)(size, module.hidden_size, 1, bias=module.bias, **extra)
    suffix = f"_l{layer}{'_reverse' if reverse else ''}"
    for name in [n for n, _ in single.named_parameters()]:
        setattr(single, name, getattr(module, name.replace("_l0", suffix)))
    return single


def rnn_rows(module: nn.RNNBase, args: tuple, kwargs: dict) -> dict[str, Tensor]:
    """Every gate weight's GEMM rows for one forward call (module docstring)."""
    x = args[0] if args else kwargs["input"]
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise ReplayError(None, "one-shot compression does not replay packed sequences: "
                                "calibrate with padded tensors")
    if x.dim() == 2:  # unbatched
        x = x.unsqueeze(1 if not module.batch_first else 0)
        hx = None if hx is None else (tuple(h.unsqueeze(1) for h in hx)
                                      if isinstance(hx, tuple) else hx.unsqueeze(1))
    if module.batch_first:
        x = x.transpose(0, 1)
    steps, batch = x.shape[:2]
    directions = 2 if module.bidirectional else 1
    zeros = x.new_zeros(module.num_layers * directions, batch, module.hidden_size)
    h0 = zeros if hx is None else (hx[0] if isinstance(hx, tuple) else hx)
    c0 = (zeros if hx is None else hx[1]) if isinstance(module, nn.LSTM) else None
    rows: dict[str, Tensor] = {}
    inputs = x
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            index = layer * directions + d
            state = h0[index:index + 1]
            hidden = (state, c0[index:index + 1]) if c0 is not None else state
            seq = inputs.flip(0) if d else inputs
            out, _ = _single(module, layer, bool(d)).forward(seq, hidden)
            previous = torch.cat([state, out[:-1]])  # h_{t-1}, in the direction's time
            if d:
                out = out.flip(0)
            suffix = f"_l{layer}{'_reverse' if d else ''}"
            rows[f"weight_ih{suffix}"] = seq.reshape(steps * batch, -1)
            rows[f"weight_hh{suffix}"] = previous.reshape(steps * batch, -1)
            outputs.append(out)
        inputs = torch.cat(outputs, dim=-1)
    return rows


# ------------------------------------------------------------------------ attention
@contextlib.contextmanager
def _identity_out_proj(module: nn.MultiheadAttention) -> Iterator[None]:
    proj = module.out_proj
    saved = (proj.weight.detach().clone(),
             None if proj.bias is None else proj.bias.detach().clone())
    try:
        with torch.no_grad():
            proj.weight.copy_(torch.eye(proj.weight.shape[0], dtype=proj.weight.dtype))
            if proj.bias is not None:
                proj.bias.zero_()
        yield
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved[0])
            if proj.bias is not None:
                proj.bias.copy_(saved[1])


def _qkv(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor]:
    names = ("query", "key", "value")
    given = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]):]]
    return given[0], given[1], given[2]


def mha_rows(module: nn.MultiheadAttention, args: tuple, kwargs: dict,
             parts: set[str]) -> dict[str, Tensor]:
    """The GEMM rows of the requested projection weights for one forward call."""
    query, key, value = _qkv(args, kwargs)
    rows: dict[str, Tensor] = {}
    if "in_proj_weight" in parts:
        if not (key is query and value is query):
            raise ReplayError("in_proj_weight", "the packed in_proj_weight projects a "
                              "different query, key and value here (cross-attention); "
                              "one-shot compression needs one input per weight")
        rows["in_proj_weight"] = query.reshape(-1, query.shape[-1])
    for part, x in (("q_proj_weight", query), ("k_proj_weight", key),
                    ("v_proj_weight", value)):
        if part in parts:
            rows[part] = x.reshape(-1, x.shape[-1])
    if "out_proj.weight" in parts:
        if len(args) > 4:  # need_weights given by position
            args, kwargs = (*args[:4], False, *args[5:]), kwargs
        else:
            kwargs = {**kwargs, "need_weights": False}
        with _identity_out_proj(module):
            out = module.forward(*args, **kwargs)
        attended = out[0] if isinstance(out, tuple) else out
        rows["out_proj.weight"] = attended.reshape(-1, attended.shape[-1])
    return rows


def replay_rows(module: nn.Module, parts: set[str], args: tuple,
                kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """The rows of ``parts`` of a recurrent or attention ``module`` for one call."""
    if isinstance(module, RNN_TYPES):
        every = rnn_rows(module, args, kwargs)
        return {p: every[p] for p in parts}
    return mha_rows(module, args, kwargs, parts)
