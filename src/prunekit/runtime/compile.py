"""``prunekit.compile(model, example)``: a pruned model rebuilt to run faster on CPU.

Two passes, each keeping the outputs of the (masked) model:

1. **Shrink.** The model is traced (:mod:`prunekit.structure`) and every dead channel
   unit (pruned filters with their biases and BatchNorm entries, or channels no layer
   reads) is physically removed: convs, linears and norms become smaller dense layers.
   A model torch.fx cannot trace skips this pass, and so does a shrunk model that does not
   match the input model on ``example`` (a graph the tracing misread costs speed, not
   correctness); the reason is in ``plan``.
2. **Sparse kernels.** Every remaining conv, linear and GRU/LSTM whose weight still has
   zeros gets candidate implementations (gathered-dense block kernel, torch CSR; for convs
   the same behind im2col; for recurrent layers sparse gate products), each is timed on
   the input that layer receives for ``example`` (:mod:`.choose`), and the fastest
   replaces the layer; dense stays where nothing sparse is faster.

3. **Graph.** The shrunk model with plain torch layers is also traced with TorchScript and
   frozen (BatchNorm folded into the conv before it, conv+ReLU fused,
   ``torch.jit.optimize_for_inference``) and, with the ``onnx`` extra, exported to an ONNX
   Runtime session (:mod:`.ort_graph`); the fastest of the eager model of step 2 and these
   graphs, timed on ``example``, is kept. (Sparse kernels are numba calls, which cannot be
   traced or exported, so a graph holds dense layers only; for a small model at batch 1
   that can beat sparse kernels called one by one from Python.)

Finally the compiled model runs on ``example`` and must match the input model to
``rtol`` (max abs error over max abs output); otherwise :class:`CompileError` says which
layer's choice broke it. The compiled model is for inference (eval mode, no gradients).
With ``engines=()`` and ``freeze=False`` it holds plain (smaller) layers only and exports
to ONNX like any other model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, PrunekitError
from ..structure import build
from . import choose
from .banded import choose_rows, padded_work
from .modules import ENGINES, Im2colConv2d, SparseLinear, SparseRNN, sparsity
from .ort_graph import ort_graphs
from .shrink import dead_units, removable, shrink

#: below this fraction of zeros no sparse kernel is tried
MIN_SPARSITY = 0.3
#: default candidate engines (``bsr`` is measured by the benchmark only)
DEFAULT_ENGINES = ("gathered", "gathered_parallel", "csr")


class CompileError(PrunekitError):
    """The compiled model does not compute what the input model computes."""


@dataclass
class Choice:
    """What compile did to one layer: the engine and every candidate's fastest call (ms)."""

    layer: str
    kind: str
    engine: str
    sparsity: float
    times_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Plan:
    """``shrunk``: channels removed (or why shrinking was skipped); ``layers``: choices."""

    removed_channels: int = 0
    shrink_note: str = ""
    #: why channels of some layers can never be removed (from the structure's report)
    fixed: list[str] = field(default_factory=list)
    layers: list[Choice] = field(default_factory=list)
    max_rel_error: float = 0.0
    #: how the whole model runs: eager, jit_frozen, jit_optimized, onnxruntime or
    #: onnxruntime_1thread (step 3)
    graph: str = "eager"
    graph_times_ms: dict[str, float] = field(default_factory=dict)
    #: why a graph candidate was not available
    graph_notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"removed {self.removed_channels} channels" + (
            f" ({self.shrink_note})" if self.shrink_note else "")]
        lines += [f"  fixed: {why}" for why in self.fixed]
        for c in self.layers:
            times = ", ".join(f"{k} {v:.3g} ms" for k, v in c.times_ms.items())
            lines.append(f"{c.layer} ({c.kind}, {c.sparsity:.0%} zeros): {c.engine}"
                         + (f" [{times}]" if times else ""))
        times = ", ".join(f"{k} {v:.3g} ms" for k, v in self.graph_times_ms.items())
        lines.append(f"graph: {self.graph}" + (f" [{times}]" if times else ""))
        lines += [f"  not a candidate: {note}" for note in self.graph_notes]
        lines.append(f"max relative error vs the input model: {self.max_rel_error:.2e}")
        return "\n".join(lines)


def compile(model: nn.Module, example: Tensor, *, engines: Sequence[str] = DEFAULT_ENGINES,
            shrink_channels: bool = True, freeze: bool = True,
            rtol: float = 1e-4) -> nn.Module:
    """The fastest correct version of ``model`` for inputs shaped like ``example`` (see
    the module docstring). ``engines``: sparse engines to try (``"gathered"``,
    ``"gathered_parallel"``, ``"gathered_torch"``, ``"csr"``, ``"bsr"``; ``()`` keeps dense
    layers only; without numba the gathered engines run the torch kernel). The
    result carries ``prunekit_plan`` (:class:`Plan`)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor):
        raise ConfigError(f"compile needs an example input tensor (one batch of the shape "
                          f"it will run on), got {type(example).__name__}")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown engines {unknown}; engines: {', '.join(ENGINES)}")
    model = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            reference = model(example)
    except Exception as exc:  # a wrong example is the user's to fix, not a deep traceback
        raise ConfigError(f"the model does not run on the example of shape "
                          f"{tuple(example.shape)}: {type(exc).__name__}: {exc}") from None
    plan = Plan()
    if shrink_channels:
        model = _shrink(model, example, plan)
    plain = copy.deepcopy(model) if engines and freeze else model
    if engines:
        _replace(model, example, tuple(engines), plan)
    model.eval()
    if freeze:
        model = _freeze(model, plain, example, plan)
    with torch.no_grad():
        plan.max_rel_error = _rel_error(model(example), reference)
    if plan.max_rel_error > rtol:
        raise CompileError(f"the compiled model differs from the input model by "
                           f"{plan.max_rel_error:.2e} (relative), more than rtol={rtol}; "
                           f"choices: {plan.describe()}")
    for p in model.parameters():
        p.requires_grad_(False)
    if isinstance(model, torch.jit.ScriptModule):
        model = Compiled(model)
    model.prunekit_plan = plan
    return model


class Compiled(nn.Module):
    """A frozen TorchScript graph as an ordinary module (so it carries ``prunekit_plan``)."""

    def __init__(self, graph: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, *args: Any) -> Any:
        return self.graph(*args)


def _freeze(model: nn.Module, plain: nn.Module, example: Tensor, plan: Plan) -> nn.Module:
    """The fastest of: ``model`` eager, and ``plain`` (the model before sparse kernels went
    in; the same module when none did) frozen and inference-optimised with TorchScript, or
    run by ONNX Runtime. Sparse kernels (numba calls) cannot be traced, and a dense graph
    of a small model can beat them at batch 1, so whole models are compared too (step 3)."""
    candidates: dict[str, nn.Module] = {"eager": model}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(plain, example, check_trace=False).eval()
            candidates["jit_frozen"] = torch.jit.freeze(traced)
            candidates["jit_optimized"] = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(plain, example, check_trace=False).eval()))
    except Exception as exc:  # not traceable: eager (or ONNX Runtime) it stays
        plan.graph_notes.append(f"TorchScript: {type(exc).__name__}")
    graphs, why_not = ort_graphs(plain, example)
    if graphs and _same_outputs(graphs["onnxruntime"], plain, example):
        candidates.update(graphs)
    else:
        plan.graph_notes.append(f"onnxruntime: {why_not or 'outputs differ'}")
    times = choose.fastest_calls_ms({name: (lambda m=m: m(example))
                                     for name, m in candidates.items()})
    plan.graph = min(times, key=times.__getitem__)
    sparse = any(isinstance(m, (SparseLinear, Im2colConv2d, SparseRNN)) for m in model.modules())
    if plan.graph != "eager" and sparse:
        plan.graph += " (dense layers: faster than the sparse kernels as a whole)"
        times["eager"] = times.pop("eager")
    plan.graph_times_ms = times
    return candidates[plan.graph.split(" ")[0]]


def _same_outputs(candidate: nn.Module, model: nn.Module, example: Tensor) -> bool:
    """Whether ``candidate`` returns what ``model`` returns on ``example`` (structure, and
    values to 1e-5 relative): an exported graph that flattened or changed the outputs is no
    candidate at all, rather than a CompileError after it won on speed."""
    with torch.no_grad():
        got, want = candidate(example), model(example)
    try:
        return _rel_error(got, want) <= 1e-5
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return False


def _rel_error(a: Any, b: Any) -> float:
    if isinstance(a, (tuple, list)):
        return max(_rel_error(x, y) for x, y in zip(a, b, strict=True))
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def _shrink(model: nn.Module, example: Tensor, plan: Plan) -> nn.Module:
    try:
        structure = build(model, example)
    except ConfigError as exc:
        plan.shrink_note = f"not shrunk: {exc}"
        return model
    plan.fixed = [f"{', '.join(g.layers[:3])}{', ...' if len(g.layers) > 3 else ''}: "
                  f"{n} channels: {why}" for g in structure.groups
                  for why, n in _reasons(g).items()]
    dead = removable(structure, dead_units(structure, model))
    if not dead:
        return model
    try:  # a graph the structure misread must cost speed, never a wrong model or a traceback
        small = shrink(structure, dead)
        same = _same_outputs(small, model, example)
        why = "outputs differ"
    except Exception as exc:
        same, why = False, f"{type(exc).__name__}: {exc}"
    if not same:
        plan.shrink_note = f"not shrunk: the smaller model failed its check ({why})"
        return model
    plan.removed_channels = len(dead)
    return small


def _reasons(group) -> dict[str, int]:
    counts: dict[str, int] = {}
    for why in group.pinned.values():
        counts[why] = counts.get(why, 0) + 1
    return counts


def _inputs(model: nn.Module, example: Tensor, kinds: tuple[type, ...]) -> dict[str, tuple]:
    """The inputs every module of ``kinds`` receives on ``example`` (first call)."""
    seen: dict[str, tuple] = {}

    def record(name: str, args: tuple) -> None:  # a hook that returns nothing
        if name not in seen:
            seen[name] = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)

    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: record(name, args))
               for name, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _candidates(m: nn.Module, engines: tuple[str, ...]) -> dict[str, nn.Module] | None:
    if isinstance(m, nn.Linear):
        return {e: SparseLinear(m.weight, m.bias, e) for e in engines}
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        return {f"im2col_{e}": Im2colConv2d(m, e) for e in engines}
    if isinstance(m, (nn.GRU, nn.LSTM)):
        if m.bidirectional or getattr(m, "proj_size", 0):
            return None
        return {e: SparseRNN(m, e) for e in engines if e != "bsr"}
    return None


def _weight(m: nn.Module) -> Tensor:
    if isinstance(m, nn.RNNBase):
        return torch.cat([getattr(m, n).detach().reshape(-1) for n, _ in m.named_parameters()
                          if n.startswith("weight_")])
    return m.weight.detach()


def _replace(model: nn.Module, example: Tensor, engines: tuple[str, ...], plan: Plan) -> None:
    kinds = (nn.Linear, nn.Conv2d, nn.GRU, nn.LSTM)
    inputs = _inputs(model, example, kinds)
    for name, m in list(model.named_modules()):
        if name not in inputs or not isinstance(m, kinds):
            continue
        w = _weight(m)
        zeros = sparsity(w)
        if zeros < MIN_SPARSITY:
            continue
        cands = _candidates(m, engines)
        if not cands:
            continue
        mask = (w != 0).reshape(w.shape[0], -1) if w.dim() > 1 else (w != 0).reshape(1, -1)
        rows = choose_rows(mask)
        key = (*choose.shape_key(type(m).__name__, w, inputs[name]), rows,
               padded_work(mask, rows))
        best, times = choose.fastest(key, {"dense": m, **cands}, inputs[name])
        plan.layers.append(Choice(name, type(m).__name__, best, zeros, times))
        if best != "dense":
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, cands[best])
