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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, PrunekitError
from ..structure import build
from . import choose
from . import plan_cache as plan_cache_io
from .banded import choose_rows, padded_work
from .decode_linear import RowDispatchLinear, RowSparseLinear, layer_bytes, row_engines_for
from .modules import ENGINES, Im2colConv2d, SparseLinear, SparseRNN, sparsity
from .ort_graph import ort_graphs
from .row_kernels import MAX_ROWS
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
    #: each candidate's spread over the timing rounds (median over fastest, relative)
    spread: dict[str, float] = field(default_factory=dict)
    #: activation rows the layer saw on the example
    rows: int = 0
    #: bytes the chosen layout reads per activation row, and what dense reads
    bytes_per_row: int = 0
    dense_bytes_per_row: int = 0
    #: the chosen engine's and dense's fastest call at the decoding row count (ms)
    ms: float = 0.0
    dense_ms: float = 0.0

    def traffic(self) -> str:
        """The layer's bytes per activation row next to dense's, its time next to dense's,
        and the memory-traffic limit of its speedup (dense bytes / its bytes)."""
        limit = self.dense_bytes_per_row / self.bytes_per_row if self.bytes_per_row else 0.0
        speedup = self.dense_ms / self.ms if self.ms else 0.0
        return (f"{self.layer}: {self.bytes_per_row / 1024:.1f} KiB/row vs dense "
                f"{self.dense_bytes_per_row / 1024:.1f} KiB (traffic limit {limit:.2f}x); "
                f"{self.ms:.3g} ms vs dense {self.dense_ms:.3g} ms ({speedup:.2f}x)")


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
    #: what the user should know (train mode, skipped passes)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"removed {self.removed_channels} channels" + (
            f" ({self.shrink_note})" if self.shrink_note else "")]
        lines += [f"  fixed: {why}" for why in self.fixed]
        for c in self.layers:
            times = ", ".join(f"{k} {v:.3g} ms" for k, v in c.times_ms.items())
            lines.append(f"{c.layer} ({c.kind}, {c.sparsity:.0%} zeros): {c.engine}"
                         + (f" [{times}]" if times else ""))
        lines += [f"  notes: {note}" for note in self.notes]
        times = ", ".join(f"{k} {v:.3g} ms" for k, v in self.graph_times_ms.items())
        lines.append(f"graph: {self.graph}" + (f" [{times}]" if times else ""))
        lines += [f"  not a candidate: {note}" for note in self.graph_notes]
        lines.append(f"max relative error vs the input model: {self.max_rel_error:.2e}")
        return "\n".join(lines)


def compile(model: nn.Module, example: Any, *, engines: Sequence[str] = DEFAULT_ENGINES,
            shrink_channels: bool = True, freeze: bool = True, rtol: float = 1e-4,
            decode: bool | None = None, timer: choose.Timer | None = None,
            plan_cache: str | Path | None = None) -> nn.Module:
    """The fastest correct version of ``model`` for inputs shaped like ``example`` (see
    the module docstring). ``example``: one input tensor, a tuple of positional inputs,
    or a dict of keyword inputs (a Hugging Face model's ``input_ids``, ...).
    ``engines``: sparse engines to try (``"gathered"``, ``"gathered_parallel"``,
    ``"gathered_torch"``, ``"csr"``, ``"bsr"``; ``()`` keeps dense layers only; without
    numba the gathered engines run the torch kernel). ``decode``: also measure every Linear
    at one activation row (a generated token) and the row kernels of
    :mod:`.decode_linear`, and dispatch by row count at call time; on by default for a
    tuple or dict example. ``timer``: the clock of the measurements (``timer(name, fn)``
    -> ms; see :mod:`.choose`). ``plan_cache``: a directory where the measured plan is
    kept per model, example shape and machine (:mod:`.plan_cache`); a later compile of the
    same model and shape there measures nothing. The result carries ``prunekit_plan``
    (:class:`Plan`)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, (Tensor, tuple, dict)) or (
            isinstance(example, dict) and not all(isinstance(k, str) for k in example)):
        raise ConfigError(f"compile needs an example input (one batch of the shape it will "
                          f"run on: a tensor, a tuple of inputs or a dict of keyword "
                          f"inputs), got {type(example).__name__}")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown engines {unknown}; engines: {', '.join(ENGINES)}")
    plan = Plan()
    if model.training:
        plan.notes.append("the model was in train mode; compiled in eval mode (dropout "
                          "off, BatchNorm on its running statistics)")
        warnings.warn("prunekit.compile: the model is in train mode; the compiled model "
                      "runs in eval mode", UserWarning, stacklevel=2)
    tensor = isinstance(example, Tensor)
    decode = (not tensor) if decode is None else bool(decode)
    model = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            reference = _call(model, example)
    except Exception as exc:  # a wrong example is the user's to fix, not a deep traceback
        raise ConfigError(f"the model does not run on the example {_describe(example)}: "
                          f"{type(exc).__name__}: {exc}") from None
    if shrink_channels and tensor:
        model = _shrink(model, example, plan)
    elif shrink_channels:
        plan.shrink_note = "not shrunk: the example is not one tensor"
    plain = copy.deepcopy(model) if engines and freeze and tensor else model
    stored: dict[str, Any] = {}
    if plan_cache is not None:
        settings = {"engines": list(engines), "decode": decode, "freeze": freeze,
                    "shrink": shrink_channels}
        plan_file = plan_cache_io.path_for(plan_cache, plan_cache_io.model_key(
            model, example, settings))
        stored = plan_cache_io.read(plan_file)
    with choose.stored_plan(stored.get("choices", {})) as used:
        if engines:
            _replace(model, example, tuple(engines), plan, decode, timer)
        model.eval()
        if freeze and tensor:
            model = _freeze(model, plain, example, plan, stored.get("graph"))
    if plan_cache is not None:
        if stored:
            plan.notes.append(f"plan read from {plan_file} (nothing measured)")
        else:
            plan_cache_io.write(plan_file, {"choices": used, "graph": plan.graph})
            plan.notes.append(f"plan measured and written to {plan_file}")
    with torch.no_grad():
        plan.max_rel_error = _rel_error(_call(model, example), reference)
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


def _call(model: nn.Module, example: Any) -> Any:
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def _describe(example: Any) -> str:
    if isinstance(example, Tensor):
        return f"of shape {tuple(example.shape)}"
    if isinstance(example, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in example.items()) + "}"
    if isinstance(example, tuple):
        return "(" + ", ".join(_describe(v) for v in example) + ")"
    return type(example).__name__


class Compiled(nn.Module):
    """A frozen TorchScript graph as an ordinary module (so it carries ``prunekit_plan``)."""

    def __init__(self, graph: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, *args: Any) -> Any:
        return self.graph(*args)


def _freeze(model: nn.Module, plain: nn.Module, example: Tensor, plan: Plan,
            stored: str | None = None) -> nn.Module:
    """The fastest of: ``model`` eager, and ``plain`` (the model before sparse kernels went
    in; the same module when none did) frozen and inference-optimised with TorchScript, or
    run by ONNX Runtime. Sparse kernels (numba calls) cannot be traced, and a dense graph
    of a small model can beat them at batch 1, so whole models are compared too (step 3)."""
    candidates: dict[str, nn.Module] = {"eager": model}
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(plain, example, check_trace=False).eval()
            branches = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
                        and "Python boolean" in str(w.message)]
            if branches:  # a trace keeps the branch the example took: wrong for other inputs
                plan.graph_notes.append(
                    "TorchScript: the model's forward branches on its input (a trace would "
                    "keep only the example's branch)")
            else:
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
    if stored is not None and stored.split(" ")[0] in candidates:  # a plan file's choice
        plan.graph = stored
        return candidates[stored.split(" ")[0]]
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
    """Largest relative error over the tensors of two outputs of the same structure
    (tuples, lists, dicts and Hugging Face outputs; caches and other objects skipped)."""
    got, want = _tensors(a), _tensors(b)
    if len(got) != len(want):
        raise ValueError(f"outputs hold {len(got)} and {len(want)} tensors")
    errors = [float((x.float() - y.float()).abs().max()) / (float(y.abs().max()) or 1.0)
              for x, y in zip(got, want, strict=True) if y.numel()]
    return max(errors, default=0.0)


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    if isinstance(out, dict):  # also transformers' ModelOutput
        return [t for item in out.values() for t in _tensors(item)]
    return []


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


def _inputs(model: nn.Module, example: Any, kinds: tuple[type, ...]) -> dict[str, tuple]:
    """The inputs every module of ``kinds`` receives on ``example`` (first call)."""
    seen: dict[str, tuple] = {}

    def record(name: str, args: tuple) -> None:  # a hook that returns nothing
        if name not in seen:
            seen[name] = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)

    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: record(name, args))
               for name, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            _call(model, example)
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


def _replace(model: nn.Module, example: Any, engines: tuple[str, ...], plan: Plan,
             decode: bool, timer: choose.Timer | None) -> None:
    kinds = (nn.Linear, nn.Conv2d, nn.GRU, nn.LSTM)
    inputs = _inputs(model, example, kinds)
    for name, m in list(model.named_modules()):
        if name not in inputs or not isinstance(m, kinds):
            continue
        w = _weight(m)
        zeros = sparsity(w)
        if zeros < MIN_SPARSITY:
            continue
        if isinstance(m, nn.Linear):
            replacement = _linear(name, m, inputs[name][0], engines, plan, decode, timer)
        else:
            replacement = _other(name, m, w, inputs[name], engines, plan, timer)
        if replacement is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, replacement)


class _Lazy(Mapping):
    """Candidate modules built on first access: a choice read from a plan file builds
    only the winner."""

    def __init__(self, makers: Mapping[str, Callable[[], nn.Module] | nn.Module]) -> None:
        self._makers, self._built = dict(makers), {}

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self._built:
            maker = self._makers[name]
            self._built[name] = maker if isinstance(maker, nn.Module) else maker()
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def _other(name: str, m: nn.Module, w: Tensor, x: tuple, engines: tuple[str, ...],
           plan: Plan, timer: choose.Timer | None) -> nn.Module | None:
    """A conv or recurrent layer: its sparse candidates at the example's input."""
    cands = _candidates(m, engines)
    if not cands:
        return None
    cands = _Lazy({"dense": lambda: m, **cands})
    mask = (w != 0).reshape(w.shape[0], -1) if w.dim() > 1 else (w != 0).reshape(1, -1)
    rows = choose_rows(mask)
    key = (*choose.shape_key(type(m).__name__, w, x), rows, padded_work(mask, rows))
    best, times, spread = choose.measured(key, cands, x, timer)
    plan.layers.append(Choice(name, type(m).__name__, best, sparsity(w), times, spread))
    return None if best == "dense" else cands[best]


def _linear(name: str, m: nn.Linear, x: Tensor, engines: tuple[str, ...], plan: Plan,
            decode: bool, timer: choose.Timer | None) -> nn.Module | None:
    """A Linear: the candidates for the rows it saw on the example (the row kernels among
    them at up to :data:`MAX_ROWS` rows) and, with ``decode`` and more rows than that, the
    row kernels at one row too (a generated token) behind a :class:`RowDispatchLinear`, so
    every call runs what was measured fastest for its row count."""
    w = m.weight.detach()
    x2 = x.reshape(-1, m.in_features)
    rows = x2.shape[0]
    mask = w != 0
    band = choose_rows(mask)
    base_key = (tuple(w.shape), int(mask.sum()), band, padded_work(mask, band))

    def measure(at: Tensor, with_rows: bool) -> tuple[str, dict, dict, nn.Module]:
        makers: dict[str, Callable[[], nn.Module]] = {"dense": lambda: m}
        makers.update({e: partial(SparseLinear, w, m.bias, e) for e in engines})
        if with_rows:
            makers.update({e: partial(RowSparseLinear, w, m.bias, e)
                           for e in row_engines_for(w)})
        key = ("Linear", *base_key, tuple(at.shape), with_rows)
        cands = _Lazy(makers)  # built only when measured, or the one a plan file chose
        best, times, spread = choose.measured(key, cands, at, timer)
        return best, times, spread, cands[best]

    def rows_safe(chosen: nn.Module) -> nn.Module:  # a row kernel never meets a prefill
        if isinstance(chosen, RowSparseLinear):
            return RowDispatchLinear(chosen, m, MAX_ROWS, m.in_features, m.out_features)
        return chosen

    dense_b = m.weight.numel() * m.weight.element_size()
    if rows <= MAX_ROWS:
        best, times, spread, chosen = measure(x2, True)
        plan.layers.append(Choice(name, "Linear", best, sparsity(w), times, spread, rows,
                                  layer_bytes(chosen), dense_b, times[best], times["dense"]))
        return None if chosen is m else rows_safe(chosen)
    wide, wide_times, wide_spread, large = measure(x2, False)
    if not decode:
        plan.layers.append(Choice(name, "Linear", wide, sparsity(w), wide_times, wide_spread,
                                  rows, layer_bytes(large), dense_b, wide_times[wide],
                                  wide_times["dense"]))
        return None if large is m else large
    one, one_times, one_spread, small = measure(x2[-1:].clone(), True)

    def both(one_row: dict, wide_rows: dict) -> dict:
        return {**{f"{k} (1 row)": v for k, v in one_row.items()},
                **{f"{k} ({rows} rows)": v for k, v in wide_rows.items()}}

    plan.layers.append(Choice(name, "Linear", f"{one} at 1 row, {wide} at {rows} rows",
                              sparsity(w), both(one_times, wide_times),
                              both(one_spread, wide_spread), rows, layer_bytes(small),
                              dense_b, one_times[one], one_times["dense"]))
    if small is m and large is m:
        return None
    return RowDispatchLinear(small, large, MAX_ROWS, m.in_features, m.out_features)
