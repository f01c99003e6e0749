"""Parameters, nonzeros, multiply-accumulates and storage bytes, measured on the model.

Every number here comes from the weights as they are (a ``<param>_mask`` buffer, when a
module has one, is applied first), never from the sparsity a recipe asked for: a report must
say what the model *is*, so that a scheme that rounds to whole groups, or a bug that lets
pruned weights regrow, shows up in it.

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
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import ConfigError, PrunekitError, TargetError
from ..schemes import Scheme, get

#: Bit width of parameters that are not compressed weights (biases, norm scales).
DENSE_BITS = 32

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3}


# ----------------------------------------------------------------------------- data
@dataclass
class LayerStats:
    """One weight (a parameter with >= 2 dims, or one named in ``layers``) of the model."""

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
    #: how ``bytes`` is stored: ``"dense"`` or the name of the sparse scheme's format
    storage: str = "dense"


@dataclass
class Summary:
    """Per-layer rows and model totals.

    ``params_total``/``params_nonzero`` count *every* parameter (biases and norm parameters
    included), so ``compression_ratio = params_total / params_nonzero`` is the ratio of the
    whole model. ``compression_ratio_weights`` is the same ratio over the compressed weights
    only (those named in ``layers``; every row when no ``layers`` were given), which is the
    number pruning papers usually quote. A ratio is ``None`` when nothing is left nonzero.
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
    other_params: int = 0
    other_bytes: int = 0
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
                "other": self.other_bytes,
            },
            "layers": [asdict(row) for row in self.layers],
        }


@dataclass(frozen=True)
class LayerSpec:
    """How one weight is stored: its scheme, gate count (RNN) and value bit width."""

    scheme: Scheme
    gates: int = 1
    bits: int | None = None


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


# ------------------------------------------------------------------------ layer specs
def _spec(name: str, value: Any) -> LayerSpec:
    """Accept ``(scheme, gates, bits)`` (gates/bits optional or None), a Scheme, a scheme
    name, or a :class:`LayerSpec`."""
    if isinstance(value, LayerSpec):
        return value
    if isinstance(value, (Scheme, str)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise ConfigError(
            f"layers[{name!r}] must be (scheme, gates, bits), got {value!r}"
        )
    scheme, gates, bits = (*value, None, None)[:3]
    scheme = get(scheme)
    gates = 1 if gates is None else gates
    if isinstance(gates, bool) or not isinstance(gates, int) or gates < 1:
        raise ConfigError(f"layers[{name!r}]: gates must be a positive integer, got {gates!r}")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or bits < 1):
        raise ConfigError(f"layers[{name!r}]: bits must be a positive integer, got {bits!r}")
    return LayerSpec(scheme, gates, bits)


def layers_from_targets(targets: Iterable[Any], bits: int | None = None) -> dict[str, LayerSpec]:
    """The ``layers`` map for :func:`summarize` from resolved targets (anything with
    ``name``, ``scheme`` and ``gates``). A scheme that carries its own ``bits`` (a
    quantizer) wins over ``bits``."""
    out = {}
    for t in targets:
        own = getattr(t.scheme, "bits", None)
        out[t.name] = LayerSpec(get(t.scheme), int(getattr(t, "gates", 1) or 1),
                                own if isinstance(own, int) else bits)
    return out


def _normalise_layers(layers: Any) -> dict[str, LayerSpec]:
    if layers is None:
        return {}
    if isinstance(layers, Mapping):
        return {str(k): _spec(str(k), v) for k, v in layers.items()}
    if isinstance(layers, (list, tuple)):
        return layers_from_targets(layers)
    raise ConfigError(
        f"layers must be a {{param name: (scheme, gates, bits)}} map or a list of targets, "
        f"got {type(layers).__name__}"
    )


# --------------------------------------------------------------------------- summary
def effective_weight(module: nn.Module, param_name: str, param: Tensor) -> Tensor:
    """``param`` times its ``<param>_mask`` buffer when the module has one of that shape."""
    mask = getattr(module, f"{param_name}_mask", None)
    w = param.detach()
    if isinstance(mask, Tensor) and mask.shape == w.shape:
        w = w * mask.to(device=w.device, dtype=w.dtype)
    return w


def _dense_bytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def _infer_gates(module_type: str, param_name: str, shape: torch.Size) -> int:
    gates = _GATES.get(module_type, 1)
    if param_name.startswith(("weight_ih", "weight_hh")) and shape[0] % gates == 0:
        return gates
    return 1


def _layer_stats(full_name: str, module_name: str, module: nn.Module, param_name: str,
                 w: Tensor, positions: int, spec: LayerSpec | None, bits: int) -> LayerStats:
    module_type = type(module).__name__
    numel = w.numel()
    nnz = int((w != 0).sum().item())
    if spec is not None:
        value_bits = spec.bits if spec.bits is not None else bits
        gates = spec.gates
        scheme: Scheme | None = spec.scheme
        label = spec.scheme.name
        try:
            macs = int(spec.scheme.kept_macs(w, positions))
        except Exception as exc:  # a scheme that cannot read this weight is a target error
            raise TargetError(f"scheme {label!r} cannot count MACs of {full_name}: {exc}") \
                from exc
    else:
        value_bits = bits
        gates = _infer_gates(module_type, param_name, w.shape)
        scheme = get("irregular") if nnz < numel and w.dim() >= 2 else None
        label = "dense" if scheme is None else "irregular"
        macs = nnz * positions
    dense = _dense_bytes(numel, value_bits)
    stored, storage = dense, "dense"
    if scheme is not None:
        try:
            sparse = int(scheme.storage_bytes(w, bits=value_bits, gates=gates))
        except PrunekitError:
            raise
        except Exception as exc:
            raise TargetError(
                f"scheme {label!r} cannot size the storage of {full_name} "
                f"(shape {tuple(w.shape)}, gates={gates}): {exc}"
            ) from exc
        if sparse < dense:  # nobody stores a sparse format bigger than the dense tensor
            stored, storage = sparse, scheme.name
    return LayerStats(
        name=full_name, module=module_name, type=module_type, shape=list(w.shape),
        scheme=label, bits=value_bits, params=numel, nonzeros=nnz,
        sparsity=(numel - nnz) / numel if numel else 0.0, positions=positions,
        macs_dense=numel * positions, macs=macs, bytes_dense=4 * numel, bytes=stored,
        storage=storage,
    )


def summarize(model: nn.Module, example_input: Any, layers: Any = None,
              bits: int = 32) -> Summary:
    """Measure ``model``: one row per weight (every parameter with >= 2 dims, plus any
    parameter named in ``layers``) and the model totals.

    ``layers`` maps parameter names (as in ``model.named_parameters()``) to
    ``(scheme, gates, bits)``; those weights are sized with the scheme's ``storage_bytes``
    (and count MACs with its ``kept_macs``). Other weights are stored dense at ``bits`` if
    they have no zeros, else in the cheaper of dense and irregular CSR. Any other parameter
    (bias, norm scale) is dense 32-bit. Dense bytes are always 4 per parameter.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ConfigError(f"bits must be a positive integer, got {bits!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    specs = _normalise_layers(layers)
    params = dict(model.named_parameters())
    unknown = sorted(set(specs) - set(params))
    if unknown:
        raise TargetError(f"layers names parameters the model does not have: {unknown}")
    positions = layer_positions(model, example_input)

    rows: list[LayerStats] = []
    params_total = params_nonzero = other_params = other_bytes = 0
    weights_total = weights_nonzero = 0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if params.get(full) is not param:  # shared parameter already counted elsewhere
                continue
            w = effective_weight(module, param_name, param)
            spec = specs.get(full)
            if spec is None and w.dim() < 2:
                nnz = int((w != 0).sum().item())
                params_total += w.numel()
                params_nonzero += nnz
                other_params += w.numel()
                other_bytes += _dense_bytes(w.numel(), DENSE_BITS)
                continue
            row = _layer_stats(full, module_name, module, param_name, w,
                               positions.get(module_name, 0), spec, bits)
            rows.append(row)
            params_total += row.params
            params_nonzero += row.nonzeros
            if spec is not None or not specs:
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
        bytes_compressed=sum(r.bytes for r in rows) + other_bytes,
        other_params=other_params,
        other_bytes=other_bytes,
    )
