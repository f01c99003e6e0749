"""Parameters, nonzeros, multiply-accumulates and storage bytes, measured on the model.

Every number here comes from the weights as they are and from the model file they are
stored in, never from the sparsity or bit width a recipe asked for: a report must say what
the model *is*, so that a scheme that rounds to whole groups, or a bug that lets pruned
weights regrow, shows up in it. The bit width of a layer is its frozen constraint's.

MACs count weight multiplications only. One forward pass with hooks finds how often each
weight is used per sample (its *positions*): the output length (Conv1d) or ``H_out*W_out``
(Conv2d), the input's spatial size for a transposed conv, the rows per sample for a Linear
(1 for ``[B, F]``, ``T`` for ``[B, T, F]``), and the sequence length ``T`` for a recurrent
module, whose ``weight_ih``/``weight_hh`` of every layer and direction are applied once per
time step. ``nn.MultiheadAttention`` counts its query tokens per sample for the q/k/v
projections and for its ``out_proj`` (exact for self-attention; with a key/value sequence
of another length the k/v projections run that many times instead). A layer's MACs are
then ``nonzeros x positions``; a grouped or depthwise conv needs no special case because
its weight is already ``[out, in/groups, kh, kw]``. Weights of modules the forward pass
does not reach through one of these types (embeddings, custom functional code) report 0
positions and so 0 MACs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..constraints import Frozen, Rounded
from ..errors import ConfigError, PrunekitError, TargetError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3}


# ----------------------------------------------------------------------------- data
@dataclass
class LayerStats:
    """One weight (a parameter with >= 2 dims, or one with a constraint) of the model.

    ``bytes`` is what the weight occupies in the model file: its ``parts`` (``values``,
    ``index``, ``scales``) for a compressed weight, its raw size for any other."""

    name: str
    module: str
    type: str
    shape: list[int]
    scheme: str
    bits: int
    params: int
    nonzeros: int
    sparsity: float
    positions: int
    macs_dense: int
    macs: int
    bytes_dense: int
    bytes: int
    #: the index encoding of the model file (``"dense"`` for a raw weight)
    storage: str = "dense"
    parts: dict[str, int] = field(default_factory=dict)


@dataclass
class Summary:
    """Per-layer rows and model totals.

    ``params_total``/``params_nonzero`` count *every* parameter (biases and norm parameters
    included), so ``compression_ratio = params_total / params_nonzero`` is the ratio of the
    whole model. ``compression_ratio_weights`` is the same ratio over the compressed weights
    only (those with a pruning or quantization constraint; every row when there are none),
    the number pruning papers usually quote. ``bytes_compressed`` is the size of the model
    file and ``bytes_parts`` its breakdown (they sum to it); ``bytes_dense`` is 4 bytes per
    parameter. A ratio is ``None`` when nothing is left nonzero.
    """

    layers: list[LayerStats]
    params_total: int
    params_nonzero: int
    weights_total: int
    weights_nonzero: int
    macs_dense: int
    macs_compressed: int
    bytes_dense: int
    bytes_compressed: int
    bytes_parts: dict[str, int] = field(default_factory=dict)
    other_params: int = 0
    compression_ratio: float | None = field(init=False)
    compression_ratio_weights: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.compression_ratio = ratio(self.params_total, self.params_nonzero)
        self.compression_ratio_weights = ratio(self.weights_total, self.weights_nonzero)

    def to_dict(self) -> dict[str, Any]:
        """Nested, JSON-ready totals (``params``, ``macs``, ``bytes``) plus ``layers``."""
        return {
            "params": {
                "total": self.params_total,
                "nonzero": self.params_nonzero,
                "weights_total": self.weights_total,
                "weights_nonzero": self.weights_nonzero,
                "other": self.other_params,
            },
            "compression_ratio": self.compression_ratio,
            "compression_ratio_weights": self.compression_ratio_weights,
            "macs": {
                "dense": self.macs_dense,
                "compressed": self.macs_compressed,
                "ratio": ratio(self.macs_dense, self.macs_compressed),
            },
            "bytes": {
                "dense": self.bytes_dense,
                "compressed": self.bytes_compressed,
                "ratio": ratio(self.bytes_dense, self.bytes_compressed),
                "parts": dict(self.bytes_parts),
                "scope": "weights only: activations stay float",
            },
            "layers": [asdict(row) for row in self.layers],
        }


def ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is 0."""
    return numerator / denominator if denominator else None


# ------------------------------------------------------------------------ positions
def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, PackedSequence):
        return obj.data
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _sequence_length(module: nn.RNNBase, x: Any) -> int:
    """Time steps per sample of a recurrent module's input."""
    if isinstance(x, PackedSequence):
        return len(x.batch_sizes)  # the longest sequence: packed inputs vary in length
    if not isinstance(x, Tensor):
        return 0
    if x.dim() == 2:  # unbatched [T, F]
        return x.shape[0]
    return x.shape[1] if module.batch_first else x.shape[0]


def _positions_of_call(module: nn.Module, args: tuple, kwargs: dict, output: Any,
                       batch: int) -> int:
    x = args[0] if args else next(iter(kwargs.values()), None)
    if isinstance(module, nn.RNNBase):
        return _sequence_length(module, x)
    if isinstance(module, nn.RNNCellBase):
        return 1
    if isinstance(module, nn.MultiheadAttention):  # query tokens per sample
        if not isinstance(x, Tensor) or x.dim() < 2:
            return 0
        return x.shape[0] if x.dim() == 2 else x.shape[1 if module.batch_first else 0]
    if isinstance(module, _CONV_T):
        if not isinstance(x, Tensor):
            return 0
        spatial = x.shape[2:] if x.dim() == module.weight.dim() else x.shape[1:]
        return math.prod(spatial)
    out = _first_tensor(output)
    if out is None:
        return 0
    if isinstance(module, _CONV):
        spatial = out.shape[2:] if out.dim() == module.weight.dim() else out.shape[1:]
        return math.prod(spatial)
    if isinstance(module, nn.Linear):
        if out.dim() <= 1:
            return 1
        rows = out.numel() // max(1, out.shape[-1])
        return max(1, round(rows / batch)) if rows else 0
    return 0


def _run(model: nn.Module, example_input: Any) -> None:
    """One no-grad forward pass in eval mode (so BatchNorm accepts a batch of one); the
    modules' training flags are restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), None)

    def move(obj: Any) -> Any:
        if isinstance(obj, Tensor) and device is not None:
            return obj.to(device)
        if isinstance(obj, (list, tuple)):
            return type(obj)(move(o) for o in obj)
        if isinstance(obj, Mapping):
            return {k: move(v) for k, v in obj.items()}
        return obj

    inputs = move(example_input)
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(inputs, Mapping):
                model(**inputs)
            elif isinstance(inputs, (list, tuple)):
                model(*inputs)
            else:
                model(inputs)
    except PrunekitError:
        raise
    except Exception as exc:  # any torch error means the input does not fit the model
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ConfigError(
            f"example input {shape} does not run through {type(model).__name__}: {exc}"
        ) from exc
    finally:
        for module, flag in flags.items():
            module.training = flag


def layer_positions(model: nn.Module, example_input: Any, *,
                    batch_size: int | None = None) -> dict[str, int]:
    """``{module name: output positions per sample}`` from one forward pass.

    ``example_input`` is a tensor, a tuple of positional inputs, or a dict of keyword
    inputs; its first tensor's dim 0 is taken as the batch size (used only to turn a
    Linear's rows into rows per sample) unless ``batch_size`` is given. A module called
    several times (shared weights, a cell unrolled by hand) adds up its calls. Modules of
    other types, or that did not run, are absent.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    first = _first_tensor(example_input)
    if first is None:
        raise ConfigError(
            f"example input must be a tensor (or a tuple/dict of tensors), "
            f"got {type(example_input).__name__}"
        )
    batch = batch_size if batch_size is not None else (first.shape[0] if first.dim() else 1)
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch}")

    counted = (*_CONV, *_CONV_T, nn.Linear, nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)
    positions: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, counted):
            continue

        def hook(mod, args, kwargs, output, _name=name):
            calls = _positions_of_call(mod, args, kwargs, output, batch)
            # attention applies its out_proj with F.linear, so that Linear's own hook never
            # fires: it runs once per query token, like the q/k/v projections
            names = [_name, f"{_name}.out_proj" if _name else "out_proj"] \
                if isinstance(mod, nn.MultiheadAttention) else [_name]
            for key in names:
                positions[key] = positions.get(key, 0) + calls

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        _run(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return positions


# --------------------------------------------------------------------------- summary
def _layer_stats(full_name: str, module_name: str, module: nn.Module, w: Tensor,
                 positions: int, constraint: Frozen | None,
                 stored: Mapping[str, Any] | None) -> LayerStats:
    numel = w.numel()
    nnz = int((w != 0).sum().item())
    if constraint is not None and stored is not None:
        parts = {k: int(v) for k, v in stored["parts"].items()}
        size, storage = sum(parts.values()), str(stored.get("encoding", constraint.kind))
        scheme, bits = str(constraint.hints.get("scheme", constraint.kind)), constraint.bits
    else:
        parts, size, storage = {}, numel * w.element_size(), "dense"
        scheme, bits = "dense", 8 * w.element_size()
    if w.dim() < 2:  # a bias or norm scale: added, not multiplied
        positions = 0
    return LayerStats(
        name=full_name, module=module_name, type=type(module).__name__, shape=list(w.shape),
        scheme=scheme, bits=bits, params=numel, nonzeros=nnz,
        sparsity=(numel - nnz) / numel if numel else 0.0, positions=positions,
        macs_dense=numel * positions, macs=nnz * positions, bytes_dense=4 * numel, bytes=size,
        storage=storage, parts=parts,
    )


def summarize(model: nn.Module, example_input: Any,
              constraints: Mapping[str, Frozen] | None = None,
              storage: Mapping[str, Any] | None = None) -> Summary:
    """Measure ``model``: one row per weight (every parameter with >= 2 dims or a
    constraint) and the model totals.

    Bytes are those of the model file: ``storage`` is :func:`prunekit.artifacts.storage` of
    the file the model was loaded from; without it the file is packed in memory from
    ``model`` and its ``constraints`` (``{param name: Frozen}``), exactly as
    :func:`prunekit.save` would write it. MACs count one multiplication per nonzero weight
    per output position.
    """
    from .. import artifacts  # noqa: PLC0415  (the file format sits above the report)

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    constraints = dict(constraints or {})
    params = dict(model.named_parameters())
    unknown = sorted(set(constraints) - set(params))
    if unknown:
        raise TargetError(f"constraints name parameters the model does not have: {unknown}")
    positions = layer_positions(model, example_input)
    # the compressed weights: biases kept on float16 are not what a pruning ratio is about
    compressed = {n for n, c in constraints.items() if not isinstance(c, Rounded)}
    if storage is None:
        storage = artifacts.storage(artifacts.pack(model, constraints))
    stored_layers = storage.get("layers", {})

    rows: list[LayerStats] = []
    params_total = params_nonzero = other_params = 0
    weights_total = weights_nonzero = 0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if params.get(full) is not param:  # shared parameter already counted elsewhere
                continue
            w = param.detach()
            constraint = constraints.get(full)
            if constraint is None and w.dim() < 2:
                params_total += w.numel()
                params_nonzero += int((w != 0).sum().item())
                other_params += w.numel()
                continue
            row = _layer_stats(full, module_name, module, w, positions.get(module_name, 0),
                               constraint, stored_layers.get(full))
            rows.append(row)
            params_total += row.params
            params_nonzero += row.nonzeros
            if full in compressed or not compressed:
                weights_total += row.params
                weights_nonzero += row.nonzeros
    return Summary(
        layers=rows,
        params_total=params_total,
        params_nonzero=params_nonzero,
        weights_total=weights_total,
        weights_nonzero=weights_nonzero,
        macs_dense=sum(r.macs_dense for r in rows),
        macs_compressed=sum(r.macs for r in rows),
        bytes_dense=4 * params_total,
        bytes_compressed=int(storage["file"]),
        bytes_parts=dict(storage.get("parts", {})),
        other_params=other_params,
    )
