"""ONNX export of a compressed model (the optional ``onnx`` extra).

:func:`export_onnx` writes one ``.onnx`` file that runs in any ONNX runtime:

- the batch axis is dynamic (a file exported from one example runs a batch of any size);
  ``dynamic_batch=False`` fixes it to the example's batch, for a model whose code ties
  itself to one batch size;
- filter/channel-pruned layers are exported physically smaller: dead channels (pruned
  filters with their biases and BatchNorm entries, channels no layer reads) are removed
  by the shrink pass of :mod:`prunekit.runtime.shrink`, and the smaller model is used only
  when its outputs equal the full model's (to ``SHRINK_RTOL``) on a random input;
  ``shrink=False`` keeps every layer at full size, zeros included;
- float layers (pruned or not) keep their dense float32 weights, zeros included: ONNX has
  no sparse weight format that runtimes execute, so sparsity only shows as zeros;
- a quantized conv or linear weight (a :class:`~prunekit.constraints.Levels` constraint
  whose levels fit int8) becomes QDQ: an int8 initializer of its integer level multiples,
  a float32 scale (one per tensor, or one per output channel on axis 0: the levels' own
  step per GEMM row), an int8 zero point of zeros and a ``DequantizeLinear`` node whose
  output takes the weight's place for every consumer. Uniform levels of 2..8 bits always
  fit; power-of-two levels fit while their largest multiple ``2^(L-1)`` is at most 127
  (``bits <= 4``). A layer is only rewritten when the dequantized int8 values equal the
  model's weight exactly, so the QDQ graph computes what the PyTorch model computes;
- everything else stays float: levels that do not fit int8, weights not exactly on their
  levels (retraining not finished), and recurrent (GRU/LSTM) weights: the exporter slices
  the stacked torch gates and concatenates them in ONNX's order (z, r, h for ONNX GRU
  against torch's r, z, n), so no initializer feeds the ``GRU`` node directly and runtimes
  have no QDQ pattern for it. Biases and norms are float too.

The graph comes from torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which
needs ``onnxscript``) with ``optimize=False``. Both alternatives lose the weights that the
rewrite needs: the legacy TorchScript exporter (deprecated, to be removed) folds BatchNorm
into the preceding conv in eval mode and names the folded tensors ``onnx::Conv_<n>``, and
the dynamo exporter's optimizer folds BatchNorm too while keeping the name ``conv1.weight``
for a tensor that is no longer the quantized weight. Unoptimized, every parameter is an
initializer named after it; the rewrite still checks each value and falls back to a
search by value, so a renamed initializer is found and a changed one is never quantized.
A model with no QDQ weight is exported optimized: ONNX Runtime folds BatchNorm itself when
it loads the model, but the unoptimized graph's shape arithmetic around each BatchNorm
(Shape, Expand, CastLike) keeps it from fusing the convs (filter-pruned ResNet-20 at batch
1 ran 0.92 ms unoptimized, 0.49 ms optimized).

The file's metadata (``metadata_props``) lists the QDQ weights (``prunekit.qdq``), for
every quantized weight kept float, why (``prunekit.float``), the batch axis
(``prunekit.batch``: ``"dynamic"`` or the fixed size) and the channels removed
(``prunekit.removed_channels``), as JSON.

torch's exporter talks about its own internals while it works (deprecations inside torch,
``nn.GRU``'s flat weights, one log line per torchvision operator it skips when torchvision
is not installed); none of it is something a user can act on, so the export is silent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..constraints import Frozen, Levels
from ..errors import ConfigError
from ..files import atomic_write_bytes
from ..runtime.torch_onnx import require_onnx, torch_export
from ..schemes.levels import magnitudes, max_level

#: the first opset whose DequantizeLinear takes a per-axis scale
MIN_OPSET = 13
INT8_MAX = 127
#: the largest relative difference (max abs error over max abs output) at which the shrunk
#: model counts as computing what the full model computes
SHRINK_RTOL = 1e-5
QDQ_MODULES = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class _Quantized:
    """One weight as QDQ: ``ints`` (int8, the weight's shape) times ``scale`` (float32, one
    value or one per dim-0 row) is exactly ``weight`` (float32)."""

    name: str
    ints: np.ndarray
    scale: np.ndarray
    weight: np.ndarray


@dataclass
class OnnxExport:
    """What :func:`write_onnx` wrote: the file, whether its batch axis is dynamic, how many
    channel units the shrink pass removed and, when it removed none, why (empty when the
    model simply has no dead channel or shrinking was not asked for)."""

    path: Path
    dynamic_batch: bool
    removed_channels: int = 0
    shrink_note: str = ""

    def describe(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "fixed batch"
        if self.removed_channels:
            size = f"{self.removed_channels} dead channels removed"
        else:
            size = f"full size: {self.shrink_note}" if self.shrink_note else "full size"
        return f"wrote {self.path} ({batch}, {size}, {self.path.stat().st_size:,} bytes)"


def export_onnx(model: nn.Module, constraints: Mapping[str, Frozen] | None,
                example_input: Tensor | tuple[Tensor, ...], path: str | os.PathLike, *,
                opset: int | None = None, dynamic_batch: bool = True,
                shrink: bool = True) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the path; see
    :func:`write_onnx` for the options and for what else it reports."""
    return write_onnx(model, constraints, example_input, path, opset=opset,
                      dynamic_batch=dynamic_batch, shrink=shrink).path


def write_onnx(model: nn.Module, constraints: Mapping[str, Frozen] | None,
               example_input: Tensor | tuple[Tensor, ...], path: str | os.PathLike, *,
               opset: int | None = None, dynamic_batch: bool = True,
               shrink: bool = True) -> OnnxExport:
    """Write ``model`` as an ONNX file at ``path`` (atomically).

    ``constraints`` (parameter name to frozen constraint, as :func:`prunekit.artifacts.load`
    returns them) says which weights are quantized; ``example_input`` (batch included) gives
    the input shape; the batch axis is dynamic unless ``dynamic_batch=False``, and dead
    channels are removed unless ``shrink=False`` (see the module docstring). ``opset``
    defaults to the exporter's (18 with torch 2.13), and one it cannot write (it
    down-converts only so far) is a :class:`ConfigError` rather than a file of another
    opset."""
    onnx = require_onnx()
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)
                              or opset < MIN_OPSET):
        raise ConfigError(f"ONNX export needs opset {MIN_OPSET} or later (per-axis "
                          f"DequantizeLinear), got {opset!r}")
    for flag, value in (("dynamic_batch", dynamic_batch), ("shrink", shrink)):
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} must be True or False, got {value!r}")
    chosen, kept_float = _plan(model, dict(constraints or {}))
    result = OnnxExport(Path(path), dynamic_batch)
    if shrink:
        model, chosen = _shrunk(model, example_input, chosen, kept_float, result)
    proto = torch_export(model, example_input, opset, optimize=not chosen,
                          dynamic_batch=dynamic_batch)
    for q in chosen:
        reason = _replace_with_qdq(onnx, proto.graph, q)
        if reason is not None:
            kept_float[q.name] = reason
    done = [q.name for q in chosen if q.name not in kept_float]
    batch = "dynamic" if dynamic_batch else _batch_size(example_input)
    _set_metadata(onnx, proto, done, kept_float,
                  {"prunekit.batch": batch, "prunekit.removed_channels": result.removed_channels})
    onnx.checker.check_model(proto)
    result.path = atomic_write_bytes(path, proto.SerializeToString())
    return result


def _batch_size(example_input: Tensor | tuple[Tensor, ...]) -> int:
    first = example_input[0] if isinstance(example_input, tuple) else example_input
    return int(first.shape[0])


# ------------------------------------------------------------------ shrinking
def _shrunk(model: nn.Module, example_input: Tensor | tuple[Tensor, ...],
            chosen: list[_Quantized], kept_float: dict[str, str], result: OnnxExport
            ) -> tuple[nn.Module, list[_Quantized]]:
    """``model`` with its dead channels removed and the QDQ weights cut to match, when the
    smaller model gives the same outputs; else ``model`` and ``chosen`` unchanged, with the
    reason in ``result.shrink_note``."""
    from ..runtime.shrink import removable  # noqa: PLC0415  (tracing is slow to import)
    from ..runtime.shrink import shrink as shrink_units  # noqa: PLC0415
    from ..structure import build, dead_units  # noqa: PLC0415

    if isinstance(example_input, tuple):
        result.shrink_note = "not shrunk: the model takes several inputs"
        return model, chosen
    was_training = model.training
    model.eval()
    try:
        structure = build(model, example_input)
        gone = removable(structure, dead_units(structure, model))
        if not gone:
            return model, chosen
        small = shrink_units(structure, gone).eval()
        x = torch.randn(_batch_size(example_input) + 1, *example_input.shape[1:],
                        generator=torch.Generator().manual_seed(0)).to(example_input.dtype)
        with torch.no_grad():
            error = _relative_error(small(x), model(x))
    except ConfigError as exc:  # torch.fx cannot trace the model: export it at full size
        result.shrink_note = f"not shrunk: {str(exc).splitlines()[0]}"
        return model, chosen
    except Exception as exc:  # a graph the tracing misread costs size, never a wrong file
        result.shrink_note = f"not shrunk: the smaller model failed ({type(exc).__name__})"
        return model, chosen
    finally:
        model.train(was_training)
    if not error <= SHRINK_RTOL:
        result.shrink_note = (f"not shrunk: the smaller model's outputs differ by {error:.2g} "
                              f"(relative), more than {SHRINK_RTOL:g}")
        return model, chosen
    small.train(was_training)
    result.removed_channels = len(gone)
    return small, _cut(chosen, _kept_slices(structure, gone), small, kept_float)


def _relative_error(got: Any, want: Any) -> float:
    """The largest absolute difference over the largest absolute output, over every output."""
    if isinstance(want, (tuple, list)):
        return max((_relative_error(g, w) for g, w in zip(got, want, strict=True)),
                   default=0.0)
    scale = float(want.abs().max()) or 1.0
    return float((got - want).abs().max()) / scale


def _kept_slices(structure: Any, gone: set[int]
                 ) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """For every layer the shrink pass cuts: the rows (dim 0) and columns (dim 1) of its
    weight that it keeps, None where it keeps them all (the same choice as
    :func:`prunekit.runtime.shrink`)."""
    removed = torch.tensor(sorted(gone), dtype=torch.long)
    out: dict[str, tuple[Tensor | None, Tensor | None]] = {}
    for name, roles in structure.slots.items():
        keep = {r: torch.nonzero(~torch.isin(u, removed)).flatten() for r, u in roles.items()}
        rows = keep.get("depthwise")
        if "out" in keep:
            rows = keep["out"] if rows is None else rows[keep["out"]]
        out[f"{name}.weight"] = (rows, keep.get("in"))
    return out


def _cut(chosen: list[_Quantized], slices: Mapping[str, tuple[Tensor | None, Tensor | None]],
         small: nn.Module, kept_float: dict[str, str]) -> list[_Quantized]:
    """The QDQ weights of the full model cut to the smaller model's layers; a weight whose
    cut is not exactly the smaller layer's weight stays float, with the reason."""
    params = {n: p.detach().cpu().float().numpy() for n, p in small.named_parameters()}
    out = []
    for q in chosen:
        ints, scale, weight = q.ints, q.scale, q.weight
        rows, cols = slices.get(q.name, (None, None))
        if rows is not None:
            ints, weight = ints[rows.numpy()], weight[rows.numpy()]
            scale = scale[rows.numpy()] if scale.ndim else scale
        if cols is not None:
            ints, weight = ints[:, cols.numpy()], weight[:, cols.numpy()]
        if q.name in params and np.array_equal(weight, params[q.name]):
            out.append(_Quantized(q.name, np.ascontiguousarray(ints),
                                  np.ascontiguousarray(scale), np.ascontiguousarray(weight)))
        else:
            kept_float[q.name] = "the shrunk layer's weight is not the cut of the full one"
    return out


# ------------------------------------------------------------------ what to quantize
def _plan(model: nn.Module, constraints: dict[str, Frozen]
          ) -> tuple[list[_Quantized], dict[str, str]]:
    """The weights to export as QDQ, and every other quantized weight with the reason it
    stays float."""
    params = dict(model.named_parameters())
    chosen: list[_Quantized] = []
    kept_float: dict[str, str] = {}
    for name, frozen in constraints.items():
        if not isinstance(frozen, Levels):
            continue
        if name not in params:
            raise ConfigError(f"constraint for {name!r}, which the model does not have")
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attr != "weight" or not isinstance(module, QDQ_MODULES):
            kept_float[name] = _not_qdq_reason(module)
            continue
        quantized = _as_int8(name, frozen, params[name].detach())
        if isinstance(quantized, str):
            kept_float[name] = quantized
        else:
            chosen.append(quantized)
    return chosen, kept_float


def _not_qdq_reason(module: nn.Module) -> str:
    if isinstance(module, nn.RNNBase):
        return (f"{type(module).__name__} weights stay float: the exporter slices the stacked "
                f"torch gates and reorders them for ONNX (GRU: z, r, h against torch's r, z, n)")
    return f"{type(module).__name__} weights stay float (only conv and linear weights are QDQ)"


def _as_int8(name: str, levels: Levels, w: Tensor) -> _Quantized | str:
    """``w`` as int8 multiples of float32 row steps, or why it cannot be (exactly)."""
    w = w.cpu().float()
    codes = levels.codes(w)
    if levels.level_set == "uniform":
        ints = codes
    else:
        top = 1 << (max_level(levels.bits) - 1)
        if top > INT8_MAX:
            return (f"{levels.bits}-bit pow2 levels reach {top} times the step, more than "
                    f"int8 holds")
        ints = magnitudes(levels.bits, "pow2").long()[codes.abs()] * codes.sign()
    scale = levels.scale.cpu()
    rows_used = (ints.reshape(ints.shape[0], -1) != 0).any(dim=1)
    # an unused row may have step 0; any step dequantizes its zeros exactly
    scale = torch.where(rows_used | (scale > 0), scale, torch.ones_like(scale))
    scale32 = scale.float()
    if not torch.equal(scale32.double(), scale) or not bool((scale32 > 0).all()):
        return "its steps are not positive float32 numbers"
    view = scale32.reshape(-1, *([1] * (w.dim() - 1)))
    if not torch.equal(ints.float() * view, w):
        return "the weight is not exactly on its levels (retraining not finished?)"
    per_tensor = bool((scale32 == scale32[0]).all())
    return _Quantized(name, ints.to(torch.int8).numpy(),
                      (scale32[:1].reshape(()) if per_tensor else scale32).numpy(), w.numpy())


def _find_initializer(onnx: Any, graph: Any, q: _Quantized) -> Any | None:
    """The initializer holding exactly ``q.weight``: the one named after the parameter when
    its value is right, else the first one of equal value."""
    from onnx import numpy_helper  # noqa: PLC0415

    def holds(init: Any) -> bool:
        return (tuple(init.dims) == q.weight.shape
                and init.data_type == onnx.TensorProto.FLOAT
                and np.array_equal(numpy_helper.to_array(init), q.weight))

    named = [init for init in graph.initializer if init.name == q.name]
    if named and holds(named[0]):
        return named[0]
    return next((init for init in graph.initializer if holds(init)), None)


def _replace_with_qdq(onnx: Any, graph: Any, q: _Quantized) -> str | None:
    """Swap the weight's initializer for int8 + scale + zero point and a DequantizeLinear
    whose output keeps the initializer's name, so every consumer reads it unchanged.
    Returns why the weight stays float, or None."""
    from onnx import helper, numpy_helper  # noqa: PLC0415

    init = _find_initializer(onnx, graph, q)
    if init is None:
        return "no initializer of the exported graph holds this weight"
    if any(i.name == init.name for i in graph.input):
        return "the exported graph takes this weight as an input"
    target = init.name
    base = _fresh_name(graph, q.name)
    zero_point = np.zeros(q.scale.shape, dtype=np.int8)
    graph.initializer.remove(init)
    graph.initializer.extend([
        numpy_helper.from_array(q.ints, f"{base}.int8"),
        numpy_helper.from_array(q.scale, f"{base}.scale"),
        numpy_helper.from_array(zero_point, f"{base}.zero_point"),
    ])
    attrs = {} if q.scale.ndim == 0 else {"axis": 0}
    node = helper.make_node("DequantizeLinear",
                            [f"{base}.int8", f"{base}.scale", f"{base}.zero_point"], [target],
                            name=f"{base}.dequantize", **attrs)
    graph.node.insert(0, node)
    return None


def _fresh_name(graph: Any, name: str) -> str:
    """``name`` with a suffix no tensor or node of ``graph`` uses yet (with its suffixes)."""
    used = {i.name for i in graph.initializer} | {n.name for n in graph.node}
    used |= {out for n in graph.node for out in n.output}
    base, k = f"{name}.q", 0
    while any(f"{base}.{part}" in used for part in ("int8", "scale", "zero_point", "dequantize")):
        k += 1
        base = f"{name}.q{k}"
    return base


def _set_metadata(onnx: Any, proto: Any, done: list[str], kept_float: dict[str, str],
                  facts: Mapping[str, Any]) -> None:
    """Record which weights are QDQ, why the other quantized ones are float, and ``facts``
    (the batch axis, the channels removed)."""
    entries = {"prunekit.qdq": json.dumps(done), "prunekit.float": json.dumps(kept_float),
               **{k: json.dumps(v) for k, v in facts.items()}}
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        **entries})
