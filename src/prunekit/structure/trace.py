"""Trace a model with torch.fx and follow every channel from the layer that makes it to
the layers that read it.

Physical filter removal is only correct when *every* slice that touches a channel goes
with it: the filter (weight row and bias), the BatchNorm entries after it, the input
columns of every layer that reads it, and, through a residual add, the channel it is added
to. So each channel a layer produces gets an integer id, the ids flow through the traced
graph (an elementwise op keeps them, ``torch.cat`` concatenates them, ``torch.split``
slices them, a flatten repeats each id once per spatial position, a residual add unites
the ids of its two sides), and a union-find over the ids ends with one *unit* per set of
coupled channels. A unit whose channel reaches the model's output, or an op prunekit cannot
follow, is *pinned*: it can never be removed, and the reason names the op and the layer.

Only the channel dimension is tracked (dim 1 of a conv activation, the last dim of a
linear one); tensors prunekit cannot relate to channels are simply untracked, and a layer
reading an untracked tensor keeps all its inputs.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError

#: modules and functions that act on each channel alone and map 0 to 0
_ZERO_KEEPING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish,
    nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d,
    nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.Mish,
)
#: per-channel ops that do not map 0 to 0: a channel dead before them is alive after
_AFFINE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_ZERO_KEEPING_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardtanh, F.mish,
    F.dropout, F.dropout2d, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
    torch.relu, torch.tanh, torch.nn.functional.tanh,
}
_AFFINE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus}
_ZERO_KEEPING_METHODS = {"relu", "tanh", "contiguous", "clone", "detach", "float", "to"}
_AFFINE_METHODS = {"sigmoid"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                operator.imul, torch.add, torch.sub, torch.mul}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "mul", "mul_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


@dataclass
class Ids:
    """The unit ids of a tensor's channels: ``ids[i]`` is channel ``i`` along ``dim``."""

    ids: Tensor
    dim: int


@dataclass
class Traced:
    """What tracing found: the fx graph, one id per channel slot of every layer, pins.

    ``roles[module name][role]`` holds a LongTensor of ids: ``out`` (a conv/linear's output
    channels), ``in`` (its input columns: per input channel of a conv, per feature of a
    linear), ``norm`` (BatchNorm entries), ``depthwise`` (a depthwise conv's channels, in
    and out at once), ``rnn_in`` (a recurrent layer's input features)."""

    graph: fx.GraphModule
    parent: list[int]
    roles: dict[str, dict[str, Tensor]]
    pins: dict[int, str]
    affine: set[int]
    #: split/chunk nodes whose piece sizes follow the channels: node name -> piece ids
    splits: dict[str, list[Tensor]] = field(default_factory=dict)
    #: layers whose own outputs are not shrunk, and why
    notes: dict[str, str] = field(default_factory=dict)

    def find(self, i: int) -> int:
        return _find(self.parent, i)

    def roots(self, ids: Tensor) -> Tensor:
        return torch.tensor([self.find(int(i)) for i in ids.tolist()], dtype=torch.long)


def _find(parent: list[int], i: int) -> int:
    """Root of ``i`` in the union-find ``parent`` (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


class _Tracer:
    """One pass over the graph in topological order (fx keeps it so)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.parent: list[int] = []
        self.roles: dict[str, dict[str, Tensor]] = {}
        self.pins: dict[int, str] = {}
        self.affine: set[int] = set()
        self.splits: dict[str, list[Tensor]] = {}
        self.notes: dict[str, str] = {}
        self.env: dict[str, Any] = {}

    # ------------------------------------------------------------ union-find
    def fresh(self, n: int) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, i: int) -> int:
        return _find(self.parent, i)

    def union(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, value: Any, reason: str) -> None:
        for ids in _all_ids(value):
            for i in ids.ids.tolist():
                self.pins.setdefault(i, reason)

    def bind(self, module: str, role: str, ids: Tensor) -> Tensor:
        """Record ``ids`` as ``role`` of ``module``; a module called twice has one set of
        filters, so the second call's channels unite with the first's."""
        slots = self.roles.setdefault(module, {})
        if role in slots:
            if slots[role].numel() == ids.numel():
                self.union(slots[role], ids)
            else:
                self.pin(Ids(ids, 0), f"{module} is called on tensors of different widths")
            return slots[role]
        slots[role] = ids
        return ids

    # ------------------------------------------------------------------ pass
    def run(self) -> Traced:
        for node in self.gm.graph.nodes:
            self.env[node.name] = self.visit(node)
        return Traced(self.gm, self.parent, self.roles, self.pins, self.affine, self.splits,
                      self.notes)

    def arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env.get(a.name)
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        return a

    def visit(self, node: fx.Node) -> Any:
        if node.op in ("placeholder", "get_attr"):
            return None
        args = [self.arg(a) for a in node.args]
        if node.op == "output":
            self.pin(args, "the channel reaches the model's output")
            return None
        if node.op == "call_module":
            return self.module(node, self.modules[str(node.target)], args)
        if node.op == "call_function":
            return self.function(node, node.target, args, node.kwargs)
        return self.method(node, str(node.target), args, node.kwargs)

    def unknown(self, node: fx.Node, args: Any, what: str) -> None:
        if not node.users:  # a check whose result nothing reads
            return
        self.pin(args, f"it feeds {what} at {_where(node)}, which prunekit cannot follow")

    # ------------------------------------------------------------- modules
    def module(self, node: fx.Node, m: nn.Module, args: list[Any]) -> Any:
        name = str(node.target)
        x = args[0] if args else None
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):  # transposed convs are another class
            return self.conv(node, name, m, x)
        if isinstance(m, nn.Linear):
            if isinstance(x, Ids) and x.dim == _ndim(node.args[0]) - 1:
                self.bind(name, "in", x.ids)
            else:
                self.pin(x, f"{name} reads it along a dimension other than its features")
            return Ids(self.bind(name, "out", self.fresh(m.out_features)), _ndim(node) - 1)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if isinstance(x, Ids) and x.dim == 1:
                self.bind(name, "norm", x.ids)
                return x
            self.pin(x, f"{name} normalises it along another dimension")
            return None
        if isinstance(m, (nn.RNN, nn.GRU, nn.LSTM)):
            if isinstance(x, Ids) and x.dim == _ndim(node.args[0]) - 1:
                self.bind(name, "rnn_in", x.ids)
            else:
                self.pin(x, f"{name} reads it along a dimension other than its features")
            self.notes[name] = ("its hidden units are not shrunk: the hidden state feeds back "
                                "into every gate (compile runs it with sparse gate kernels)")
            return None
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim)
        if isinstance(m, _ZERO_KEEPING_MODULES + _AFFINE_MODULES):
            if isinstance(m, _AFFINE_MODULES) and isinstance(x, Ids):
                self.affine.update(x.ids.tolist())
            return x
        self.unknown(node, args, f"module {name} ({type(m).__name__})")
        self.notes[name] = f"{type(m).__name__} is not a layer prunekit can follow channels through"
        return None

    def conv(self, node: fx.Node, name: str, m: nn.Module, x: Any) -> Any:
        depthwise = m.groups == m.in_channels == m.out_channels
        if m.groups == 1:
            if isinstance(x, Ids) and x.dim == 1:
                self.bind(name, "in", x.ids)
            return Ids(self.bind(name, "out", self.fresh(m.out_channels)), 1)
        if depthwise and isinstance(x, Ids) and x.dim == 1:
            return Ids(self.bind(name, "depthwise", x.ids), 1)
        reason = (f"{name} is a grouped conv (groups={m.groups}, {m.in_channels} -> "
                  f"{m.out_channels} channels), whose channels couple group by group")
        if depthwise:
            reason = f"{name} is a depthwise conv whose input channels prunekit cannot follow"
        self.pin(x, reason)
        out = self.bind(name, "depthwise" if depthwise else "out", self.fresh(m.out_channels))
        self.pin(Ids(out, 1), reason)
        return Ids(out, 1)

    # ----------------------------------------------------------- functions
    def function(self, node: fx.Node, fn: Any, args: list[Any], kwargs: dict) -> Any:
        if fn is getattr:
            return None
        if fn is operator.getitem:
            return self.getitem(node, args[0], node.args[1])
        if fn in _ELEMENTWISE:
            return self.elementwise(node, args)
        if fn in _ZERO_KEEPING_FUNCTIONS or fn in _AFFINE_FUNCTIONS:
            x = args[0]
            if fn in _AFFINE_FUNCTIONS and isinstance(x, Ids):
                self.affine.update(x.ids.tolist())
            return x
        if fn is torch.flatten:
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(node, args[0], start, end)
        if fn is torch.cat:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return self.cat(node, list(args[0]), dim)
        if fn in (torch.split, torch.chunk):
            return self.split(node, args[0], args[2] if len(args) > 2 else kwargs.get("dim", 0))
        if fn is F.pad:
            return self.pad(node, args[0], args[1])
        if fn in (torch.mean, torch.sum, torch.amax):
            return self.reduce(node, args[0], args[1] if len(args) > 1 else kwargs.get("dim"),
                               kwargs.get("keepdim", False))
        self.unknown(node, args, f"function {getattr(fn, '__name__', fn)}")
        return None

    def method(self, node: fx.Node, name: str, args: list[Any], kwargs: dict) -> Any:
        x = args[0] if args else None
        if name in ("size", "dim"):
            return None
        if name in _ELEMENTWISE_METHODS:
            return self.elementwise(node, args)
        if name in _ZERO_KEEPING_METHODS or name in _AFFINE_METHODS:
            if name in _AFFINE_METHODS and isinstance(x, Ids):
                self.affine.update(x.ids.tolist())
            return x
        if name == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end)
        if name in ("view", "reshape"):
            return self.reshape(node, x)
        if name in ("split", "chunk"):
            return self.split(node, x, args[2] if len(args) > 2 else kwargs.get("dim", 0))
        if name in ("mean", "sum", "amax"):
            return self.reduce(node, x, args[1] if len(args) > 1 else kwargs.get("dim"),
                               kwargs.get("keepdim", False))
        self.unknown(node, args, f"method .{name}()")
        return None

    # ---------------------------------------------------------------- ops
    def elementwise(self, node: fx.Node, args: list[Any]) -> Any:
        tracked = [a for a in args[:2] if isinstance(a, Ids)]
        if not tracked:
            return None
        first = tracked[0]
        for other in tracked[1:]:
            if other.dim != first.dim or other.ids.numel() != first.ids.numel():
                self.pin(tracked, f"{_where(node)} combines tensors of different channel layouts")
                return None
            self.union(first.ids, other.ids)
        for n in node.args[:2]:
            untracked = isinstance(n, fx.Node) and self.env.get(n.name) is None
            if untracked and _channels(n, first.dim) > 1:
                self.pin(tracked, f"{_where(node)} adds or scales it by a per-channel "
                                  f"tensor prunekit cannot follow")
                return None
        if node.target in (operator.add, operator.iadd, torch.add, "add", "add_") and any(
            not isinstance(n, fx.Node) and n != 0 for n in node.args[:2]
        ):
            self.affine.update(first.ids.tolist())
        return first

    def getitem(self, node: fx.Node, x: Any, index: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return x[index] if isinstance(index, int) and index < len(x) else None
        if not isinstance(x, Ids):
            return None
        items = index if isinstance(index, tuple) else (index,)
        if all(isinstance(i, slice) for i in items):
            if len(items) <= x.dim or items[x.dim] == slice(None):
                return x
        self.unknown(node, [x], "an indexing op")
        return None

    def flatten(self, node: fx.Node, x: Any, start: int, end: int) -> Any:
        if not isinstance(x, Ids):
            return None
        shape = _shape(node.args[0])
        ndim = len(shape)
        start, end = start % ndim, end % ndim
        if end < x.dim:
            return Ids(x.ids, x.dim - (end - start))
        if start > x.dim:
            return x
        if start == x.dim:
            return Ids(x.ids.repeat_interleave(math.prod(shape[x.dim + 1:end + 1])), x.dim)
        self.unknown(node, [x], "a flatten that merges the channels with earlier dims")
        return None

    def reshape(self, node: fx.Node, x: Any) -> Any:
        """``x.view(n, -1)`` after a conv is a flatten; anything else is not followed."""
        if not isinstance(x, Ids):
            return None
        before, after = _shape(node.args[0]), _shape(node)
        literal = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
        if (x.dim == 1 and len(after) == 2 and after[0] == before[0]
                and not (isinstance(literal[-1], int) and literal[-1] != -1)):
            return Ids(x.ids.repeat_interleave(math.prod(before[2:])), 1)
        self.unknown(node, [x], f"a reshape to {list(after)}")
        return None

    def cat(self, node: fx.Node, parts: list[Any], dim: int) -> Any:
        shapes = [_shape(n) for n in node.args[0]]
        dim = dim % len(shapes[0])
        if not all(isinstance(p, Ids) and p.dim == dim for p in parts):
            if any(isinstance(p, Ids) and p.dim == dim for p in parts):
                # untracked members of a channel cat: their slots are fixed
                filled = [p.ids if isinstance(p, Ids) else self.fresh(s[dim])
                          for p, s in zip(parts, shapes, strict=True)]
                for p, ids in zip(parts, filled, strict=True):
                    if not isinstance(p, Ids):
                        self.pin(Ids(ids, dim), f"{_where(node)} concatenates it with "
                                                f"channels prunekit cannot follow")
                return Ids(torch.cat(filled), dim)
            tracked = [p for p in parts if isinstance(p, Ids)]
            if tracked:
                for p in tracked[1:]:
                    self.union(tracked[0].ids, p.ids)
                return tracked[0]
            return None
        return Ids(torch.cat([p.ids for p in parts]), dim)

    def split(self, node: fx.Node, x: Any, dim: int) -> Any:
        if not isinstance(x, Ids):
            return None
        sizes = [s[dim % len(s)] for s in _shapes(node)]
        if dim % len(_shape(node.args[0])) != x.dim:
            return tuple(x for _ in sizes)
        pieces = list(x.ids.split(sizes))
        self.splits[node.name] = pieces
        return tuple(Ids(p, x.dim) for p in pieces)

    def pad(self, node: fx.Node, x: Any, pad: Any) -> Any:
        if not isinstance(x, Ids):
            return None
        ndim = _ndim(node.args[0])
        at = 2 * (ndim - 1 - x.dim)
        if len(pad) <= at or (pad[at] == 0 and pad[at + 1] == 0):
            return x
        before, after = self.fresh(pad[at]), self.fresh(pad[at + 1])
        reason = f"it is zero padding added by {_where(node)}, whose pad sizes are fixed"
        self.pin(Ids(torch.cat([before, after]), x.dim), reason)
        return Ids(torch.cat([before, x.ids, after]), x.dim)

    def reduce(self, node: fx.Node, x: Any, dims: Any, keepdim: bool) -> Any:
        if not isinstance(x, Ids):
            return None
        ndim = _ndim(node.args[0])
        dims = [dims] if isinstance(dims, int) else (list(dims) if dims is not None else None)
        if dims is None or x.dim in [d % ndim for d in dims]:
            self.unknown(node, [x], "a reduction over channels")
            return None
        shift = 0 if keepdim else sum(1 for d in dims if d % ndim < x.dim)
        return Ids(x.ids, x.dim - shift)


# ------------------------------------------------------------------ helpers
def _all_ids(value: Any) -> list[Ids]:
    if isinstance(value, Ids):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _all_ids(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _all_ids(v)]
    return []


def _where(node: fx.Node) -> str:
    """The op and the module it sits in, for messages: ``F.pad in layer2.0.downsample``."""
    stack = node.meta.get("nn_module_stack") or {}
    inside = next(reversed(stack), None) if stack else None
    what = getattr(node.target, "__name__", str(node.target))
    return f"{what} in {inside}" if inside else f"{what} ({node.name})"


def _shapes(node: Any) -> list[tuple[int, ...]]:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if meta is None:
        return []
    if hasattr(meta, "shape"):
        return [tuple(meta.shape)]
    return [tuple(m.shape) for m in meta if hasattr(m, "shape")]


def _shape(node: Any) -> tuple[int, ...]:
    shapes = _shapes(node)
    return shapes[0] if shapes else ()


def _ndim(node: Any) -> int:
    return len(_shape(node))


def _channels(node: fx.Node, dim: int) -> int:
    shape = _shape(node)
    return shape[dim] if len(shape) > dim else 1


def trace(model: nn.Module, example: Tensor) -> Traced:
    """Trace ``model`` on ``example`` (one batch of real shape) and follow its channels.

    Raises :class:`ConfigError` naming the reason when torch.fx cannot trace the model's
    ``forward`` (data-dependent control flow, for example); callers that can do without
    the structure catch it and report it."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        tracer = _GuardTracer()
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many kinds; all mean "not traceable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{type(model).__name__}.forward cannot be traced by torch.fx "
                          f"({first}), so its layers cannot be shrunk") from None
    was_training = model.training
    model.eval()
    gm.eval()
    try:
        with torch.no_grad():
            try:
                want = model(example)
            except Exception as exc:
                raise ConfigError(f"running {type(model).__name__} on an example of shape "
                                  f"{tuple(example.shape)} failed: {exc}") from None
            try:
                ShapeProp(gm).propagate(example)
                same = _same(gm(example), want)
            except Exception:
                same = False
    finally:
        model.train(was_training)
        gm.train(was_training)
    if not same:
        raise ConfigError(f"{type(model).__name__}.forward branches on its input in a way "
                          f"torch.fx cannot follow (the traced graph does not compute what "
                          f"the model computes on the example), so its layers cannot be "
                          f"shrunk")
    return _Tracer(gm).run()


class _GuardTracer(fx.Tracer):
    """A tracer that gets past input checks: every ``if`` on a traced value takes the
    false branch (checks that raise on bad input are written that way), and prunekit's own
    input check is one opaque call. :func:`trace` then runs the graph and the model on the
    example and refuses the graph unless both compute the same."""

    def __init__(self) -> None:
        from ..models._common import check_input  # noqa: PLC0415  (zoo guard, kept opaque)

        super().__init__(autowrap_functions=(check_input,))

    def to_bool(self, obj: fx.Proxy) -> bool:
        return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b)
