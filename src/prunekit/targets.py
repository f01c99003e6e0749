"""Which parameters get pruned, with which scheme and rate.

A user's rules (NNI-style config lists or a recipe's ``prune.targets`` section) resolve
against a model to a list of :class:`Target`; every method, the masks and the reports work
from that list and never look at the rules again.

A rule is a dict::

    {"layers": "features.*", "types": ["Conv2d"], "exclude": ["features.0"],
     "scheme": "block", "block": [8, 4], "sparsity": 0.8, "allocation": "uniform"}

- ``layers``: a glob or a list of globs over module names (``fnmatch``; default ``"*"``).
  On a model wrapped in ``DataParallel``/``DistributedDataParallel`` a glob may leave out
  the ``module.`` prefix, so one recipe fits the wrapped and the bare model.
- ``types``: layer class names (:data:`SUPPORTED_TYPES`); ``exclude``: globs to drop, or
  ``true`` to remove whatever the rule selects from the targets of earlier rules.
- ``scheme`` (default ``default_scheme``) and every key that is not a rule key: the scheme
  and its options, passed to :func:`prunekit.schemes.get` (YAML lists become tuples).
- ``sparsity``: a rate in [0, 1) for every selected layer; a dict ``{layer name or glob:
  rate}`` (only the layers the table names are pruned; an exact name beats a glob, and among
  globs the later wins); or the name of a published table in :mod:`prunekit.tables`. It
  may be left out for schemes that fix their own rate (N:M).
- ``allocation``: ``"uniform"`` (every selected layer gets the rate) or ``"global"`` (see
  :func:`allocate_global`), with optional per-layer clamps ``min_sparsity``/``max_sparsity``.

Rules apply in order and a later rule replaces an earlier one for the same layer, so a
general rule followed by specific ones gives per-layer overrides. A layer no rule selects is
not pruned. Only weights are pruned: biases and normalisation layers never are. Embedding
layers are pruned only when named exactly or selected with ``types: [Embedding]``, because
a blanket ``"*"`` rarely means the vocabulary table.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from . import schemes, tables
from .errors import ConfigError, PrunekitError, TargetError
from .schemes import Scheme, measured_sparsity


@dataclass(eq=False)
class Target:
    """One weight to compress: ``param`` (named ``name`` in ``model.named_parameters()``)
    of module ``module_name`` (type ``layer_type``), constrained by ``scheme`` at
    ``sparsity``. ``gates`` > 1 for RNN weights that stack gate matrices (LSTM 4, GRU 3)."""

    name: str
    module_name: str
    param: nn.Parameter
    scheme: Scheme
    sparsity: float | None
    layer_type: str
    gates: int = 1

    def project(self, w: Tensor | None = None) -> Tensor:
        """The scheme's exact projection of ``w`` (default: the parameter itself)."""
        return self.scheme.project(self.param if w is None else w, self.sparsity, gates=self.gates)

    def mask(self, w: Tensor | None = None) -> Tensor:
        return self.scheme.mask(self.param if w is None else w, self.sparsity, gates=self.gates)

    def group_norms(self, w: Tensor | None = None) -> Tensor:
        return self.scheme.group_norms(self.param if w is None else w, gates=self.gates)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def scheme_name(self) -> str:
        return str(getattr(self.scheme, "name", type(self.scheme).__name__))

    def achieved_sparsity(self) -> float:
        """Fraction of exact zeros in the parameter now (measured, never assumed)."""
        return measured_sparsity(self.param.detach())


#: Layer types prunekit prunes, by the class name rules use in ``types``.
SUPPORTED_TYPES: dict[str, type[nn.Module]] = {
    "Conv1d": nn.Conv1d,
    "Conv2d": nn.Conv2d,
    "Linear": nn.Linear,
    "RNN": nn.RNN,
    "LSTM": nn.LSTM,
    "GRU": nn.GRU,
    "Embedding": nn.Embedding,
}
#: Gate matrices stacked in each recurrent input/hidden weight.
RNN_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
RULE_KEYS = ("layers", "types", "exclude", "scheme", "sparsity", "allocation",
             "min_sparsity", "max_sparsity")
ALLOCATIONS = ("uniform", "global")

_GATED_WEIGHT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?")
_PROJ_WEIGHT = re.compile(r"weight_hr_l\d+(_reverse)?")  # LSTM proj_size: one plain matrix
_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


# ------------------------------------------------------------------------ layers
def layer_type(module: nn.Module) -> str | None:
    """The supported type name of ``module`` (subclasses count), or None."""
    for name, cls in SUPPORTED_TYPES.items():
        if isinstance(module, cls):
            return name
    return None


def layer_weights(module: nn.Module) -> list[tuple[str, int]]:
    """``(attribute, gates)`` of every prunable weight of a supported layer: ``weight`` for
    conv/linear/embedding, every ``weight_ih_l*``/``weight_hh_l*`` (and ``_reverse``) for
    recurrent layers, plus LSTM projection weights ``weight_hr_l*`` (one matrix, no gates)."""
    kind = layer_type(module)
    if kind is None:
        return []
    own = module._parameters
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


# ------------------------------------------------------------------------ resolve
def resolve(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    default_scheme: str = "irregular",
) -> list[Target]:
    """Turn ``rules`` (see the module docstring) into targets, in model parameter order."""
    if isinstance(rules, Mapping):
        rules = [rules]
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TargetError(f"target rules must be a list of dicts, got {type(rules).__name__}")
    ctx = _Model(model)
    chosen: dict[str, Target] = {}
    for index, rule in enumerate(rules):
        rule_targets, remove = _resolve_rule(ctx, index, rule, default_scheme)
        for target in rule_targets:
            if remove:
                chosen.pop(target.name, None)
            else:
                chosen[target.name] = target
    return [chosen[name] for name in ctx.param_order if name in chosen]


class _Model:
    """Names of a model's layers and parameters, computed once per :func:`resolve`."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TargetError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = prunable_layers(model)
        self.types = {name: layer_type(m) for name, m in self.layers.items()}
        self.modules = dict(model.named_modules())
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.param_order = list(self.param_names.values())
        self.wrapped = isinstance(model, _WRAPPERS)

    def aliases(self, name: str) -> tuple[str, ...]:
        if self.wrapped and name.startswith("module."):
            return (name, name[len("module."):])
        return (name,)

    def matches(self, pattern: str, name: str) -> bool:
        return any(fnmatchcase(alias, pattern) for alias in self.aliases(name))

    def listing(self) -> str:
        if not self.layers:
            return "the model has no prunable layers"
        return "prunable layers: " + ", ".join(
            f"{n} ({t})" for n, t in self.types.items()
        )


def _is_exact(pattern: str) -> bool:
    return not any(c in pattern for c in "*?[")


def _as_list(value: Any, key: str, index: int) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise TargetError(f"rule {index}: {key!r} must be a string or a list of strings, "
                          f"got {value!r}")
    return list(items)


def _resolve_rule(
    ctx: _Model, index: int, rule: Any, default_scheme: str
) -> tuple[list[Target], bool]:
    if not isinstance(rule, Mapping):
        raise TargetError(f"rule {index} must be a dict, got {type(rule).__name__}")
    types = _rule_types(rule, index)
    names = _select(ctx, index, _as_list(rule.get("layers", "*"), "layers", index), types)
    remove = rule.get("exclude") is True
    if not remove and rule.get("exclude") not in (None, False):
        names = _exclude(ctx, index, _as_list(rule["exclude"], "exclude", index), names)
    if not names:
        raise TargetError(f"rule {index} selects no layer once 'exclude' is applied")
    scheme = _rule_scheme(rule, index, default_scheme)
    if remove:
        return _targets(ctx, index, scheme, {n: 0.0 for n in names}, check=False), True
    allocation = rule.get("allocation", "uniform")
    if allocation not in ALLOCATIONS:
        raise TargetError(f"rule {index}: allocation must be one of {list(ALLOCATIONS)}, "
                          f"got {allocation!r}")
    if allocation == "uniform":
        for key in ("min_sparsity", "max_sparsity"):
            if key in rule:
                raise TargetError(f"rule {index}: {key!r} applies only with allocation: global")
    rates = _rule_rates(ctx, index, rule, names, scheme, allocation)
    found = _targets(ctx, index, scheme, rates, check=True)
    if allocation == "global":
        allocate_global(
            found,
            rates[names[0]],
            min_sparsity=_clamp(rule, "min_sparsity", index, 0.0),
            max_sparsity=_clamp(rule, "max_sparsity", index, 1.0),
            where=f"rule {index}",
        )
    return found, False


def _rule_types(rule: Mapping[str, Any], index: int) -> list[str] | None:
    if "types" not in rule:
        return None
    canon = {k.lower(): k for k in SUPPORTED_TYPES}
    out = []
    for given in _as_list(rule["types"], "types", index):
        key = given.rsplit(".", 1)[-1].lower()  # accept "nn.Conv2d", "conv2d"
        if key not in canon:
            raise TargetError(f"rule {index}: unsupported layer type {given!r}; supported "
                              f"types: {', '.join(SUPPORTED_TYPES)}")
        out.append(canon[key])
    return out


def _select(ctx: _Model, index: int, patterns: list[str], types: list[str] | None) -> list[str]:
    """Layer names matched by ``patterns`` (union, model order), filtered by ``types``."""
    picked: set[str] = set()
    for pattern in patterns:
        hits = [
            n for n in ctx.layers
            if ctx.matches(pattern, n)
            and (ctx.types[n] != "Embedding" or _is_exact(pattern)
                 or (types is not None and "Embedding" in types))
        ]
        if not hits:
            raise TargetError(f"rule {index}: {_no_match(ctx, pattern)}")
        picked.update(hits)
    names = [n for n in ctx.layers if n in picked]
    if types is not None:
        kept = [n for n in names if ctx.types[n] in types]
        if not kept:
            found = ", ".join(f"{n} ({ctx.types[n]})" for n in names)
            raise TargetError(f"rule {index}: none of the layers {patterns} selects is of "
                              f"types {types}; they are: {found}")
        names = kept
    return names


def _no_match(ctx: _Model, pattern: str) -> str:
    """Why ``pattern`` selects nothing, and what exists instead."""
    modules = [n for n in ctx.modules if n and ctx.matches(pattern, n)]
    embeddings = [n for n in ctx.layers if ctx.types[n] == "Embedding" and ctx.matches(pattern, n)]
    supported = ", ".join(SUPPORTED_TYPES)
    if embeddings:
        return (f"{pattern!r} matches only Embedding layers ({', '.join(embeddings)}), which are "
                f"pruned only when named exactly or selected with types: [Embedding]")
    if modules and _is_exact(pattern):
        kind = type(ctx.modules[pattern]).__name__
        return (f"layer {pattern!r} is a {kind}, which cannot be pruned; supported types: "
                f"{supported}")
    if modules:
        found = ", ".join(f"{n} ({type(ctx.modules[n]).__name__})" for n in modules[:10])
        return (f"{pattern!r} matches no prunable layer, only {found}; supported types: "
                f"{supported}; {ctx.listing()}")
    params = [n for n in ctx.param_order if any(fnmatchcase(a, pattern) for a in ctx.aliases(n))]
    if params:
        return (f"{pattern!r} names parameters ({', '.join(params[:5])}); rules select layers "
                f"by module name (biases are never pruned); {ctx.listing()}")
    return f"{pattern!r} matches no layer; {ctx.listing()}"


def _exclude(ctx: _Model, index: int, patterns: list[str], names: list[str]) -> list[str]:
    for pattern in patterns:
        if not any(ctx.matches(pattern, n) for n in ctx.layers):
            raise TargetError(f"rule {index}: exclude {pattern!r} matches no layer; "
                              f"{ctx.listing()}")
    return [n for n in names if not any(ctx.matches(p, n) for p in patterns)]


def _tuples(value: Any) -> Any:
    """YAML gives lists where schemes take tuples (``block: [8, 4]``)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _rule_scheme(rule: Mapping[str, Any], index: int, default_scheme: str) -> Scheme:
    name = rule.get("scheme", default_scheme)
    options = {k: _tuples(v) for k, v in rule.items() if k not in RULE_KEYS}
    try:
        return schemes.get(name, **options)
    except ConfigError as exc:
        hint = ""
        if options:
            close = {
                k: difflib.get_close_matches(k, RULE_KEYS, n=1) for k in options
            }
            typos = "".join(f" ({k!r}: did you mean {c[0]!r}?)" for k, c in close.items() if c)
            hint = (f"; keys {sorted(options)} are neither rule keys ({', '.join(RULE_KEYS)}) "
                    f"nor accepted options of scheme {name!r}{typos}")
        raise TargetError(f"rule {index}: {exc}{hint}") from None
    except ImportError as exc:
        raise TargetError(f"rule {index}: scheme {name!r} is not available ({exc})") from None


def _rule_rates(
    ctx: _Model, index: int, rule: Mapping[str, Any], names: list[str], scheme: Scheme,
    allocation: str,
) -> dict[str, float | None]:
    """``{layer name: rate}`` for the layers this rule prunes."""
    given = rule.get("sparsity")
    if given is None:
        if allocation == "global" or getattr(scheme, "natural_sparsity", None) is None:
            raise TargetError(f"rule {index}: 'sparsity' is required for scheme "
                              f"{getattr(scheme, 'name', scheme)!r}"
                              + (" with allocation: global" if allocation == "global" else ""))
        return {n: None for n in names}
    if isinstance(given, str):
        try:
            given = tables.rates(given)
        except ConfigError as exc:
            raise TargetError(f"rule {index}: {exc}") from None
    if isinstance(given, Mapping):
        if allocation == "global":
            raise TargetError(f"rule {index}: allocation: global needs one overall sparsity, "
                              f"not a per-layer table")
        rates = _table_rates(ctx, index, given, names)
    else:
        rates = {n: given for n in names}
    for name, rate in rates.items():
        _check_rate(rate, f"rule {index}: sparsity of layer {name!r}")
    return rates


def _table_rates(
    ctx: _Model, index: int, table: Mapping[Any, Any], names: list[str]
) -> dict[str, Any]:
    exact: dict[str, Any] = {}
    globbed: dict[str, Any] = {}
    for key, rate in table.items():
        if not isinstance(key, str):
            raise TargetError(f"rule {index}: sparsity table keys must be layer names, "
                              f"got {key!r}")
        hits = [n for n in names if ctx.matches(key, n)]
        if not hits:
            raise TargetError(f"rule {index}: sparsity table key {key!r} matches no selected "
                              f"layer; selected: {', '.join(names)}")
        for n in hits:
            (exact if _is_exact(key) else globbed)[n] = rate
    merged = {**globbed, **exact}
    return {n: merged[n] for n in names if n in merged}


def _check_rate(rate: Any, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise TargetError(f"{what} must be a number in [0, 1), got {rate!r}")
    return float(rate)


def _clamp(rule: Mapping[str, Any], key: str, index: int, default: float) -> float:
    value = rule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise TargetError(f"rule {index}: {key!r} must be a number in [0, 1], got {value!r}")
    return float(value)


def _targets(
    ctx: _Model, index: int, scheme: Scheme, rates: Mapping[str, float | None], *, check: bool
) -> list[Target]:
    out = []
    for layer, rate in rates.items():
        module = ctx.layers[layer]
        kind = ctx.types[layer]
        for attr, gates in layer_weights(module):
            param = module._parameters[attr]
            name = ctx.param_names[id(param)]
            if check:
                try:
                    scheme.check(tuple(param.shape), gates=gates)
                except PrunekitError as exc:
                    raise TargetError(
                        f"rule {index}: scheme {getattr(scheme, 'name', scheme)!r} does not fit "
                        f"layer {layer!r} ({kind}, weight {name} of shape "
                        f"{tuple(param.shape)}): {exc}"
                    ) from None
            out.append(Target(name, layer, param, scheme,
                              None if rate is None else float(rate), kind, gates))
    return out


# ------------------------------------------------------------------ allocation
def allocate_global(
    targets: Sequence[Target],
    sparsity: float,
    *,
    min_sparsity: float = 0.0,
    max_sparsity: float = 1.0,
    where: str = "global allocation",
) -> None:
    """Set every target's rate from one threshold over all their groups (in place).

    Every target's groups (single weights for ``irregular``) are scored by their L2 norm
    divided by sqrt(group size), so a group is compared by its root-mean-square weight and
    schemes whose groups differ in size across layers compete fairly. The lowest-scoring
    groups are pruned across all targets until the pruned weights make up ``sparsity`` of
    all their weights (to the nearest group; for single weights exactly). Each target's
    rate stays within ``[min_sparsity, max_sparsity]`` and always keeps at least one group,
    so no layer is cut off entirely. Layers with small weights thus get high rates. For
    recurrent weights the resulting rate is then applied to each gate alike.
    """
    sparsity = _check_rate(sparsity, f"{where}: sparsity")
    if min_sparsity > max_sparsity:
        raise TargetError(f"{where}: min_sparsity {min_sparsity} exceeds max_sparsity "
                          f"{max_sparsity}")
    if not targets:
        return
    units = [_Unit(t, min_sparsity, max_sparsity) for t in targets]
    total = sum(u.numel for u in units)
    budget = sparsity * total
    forced = sum(u.low * u.size for u in units)
    ceiling = sum(u.high * u.size for u in units)
    if forced > budget + max(u.size for u in units):
        raise TargetError(f"{where}: min_sparsity {min_sparsity} prunes {forced / total:.4f} "
                          f"of the selected weights, more than the requested {sparsity}")
    if ceiling < budget - max(u.size for u in units):
        raise TargetError(f"{where}: max_sparsity {max_sparsity} (and keeping one group per "
                          f"layer) allows at most {ceiling / total:.4f} of the selected "
                          f"weights to be pruned, less than the requested {sparsity}")
    scores = torch.cat([u.candidates for u in units])
    owner = torch.cat([torch.full((len(u.candidates),), i) for i, u in enumerate(units)])
    sizes = torch.tensor([u.size for u in units], dtype=torch.float64)[owner]
    order = torch.argsort(scores, stable=True)
    taken = _nearest_prefix(torch.cumsum(sizes[order], 0), budget - forced)
    extra = torch.bincount(owner[order[:taken]], minlength=len(units))
    for unit, more in zip(units, extra.tolist(), strict=True):
        unit.target.sparsity = (unit.low + more) / unit.groups


def _nearest_prefix(cumulative: Tensor, need: float) -> int:
    """Length of the prefix whose cumulative size is nearest to ``need``."""
    if need <= 0 or cumulative.numel() == 0:
        return 0
    at = int(torch.searchsorted(cumulative, torch.tensor([need], dtype=cumulative.dtype)))
    if at >= cumulative.numel():
        return cumulative.numel()
    below = float(cumulative[at - 1]) if at > 0 else 0.0
    return at if need - below <= float(cumulative[at]) - need else at + 1


class _Unit:
    """One target's groups in global allocation: those it must prune (``low``), may prune
    (``candidates``, ascending score) and the most it may prune (``high``)."""

    def __init__(self, target: Target, min_sparsity: float, max_sparsity: float) -> None:
        try:
            with torch.no_grad():
                norms = target.group_norms(target.param.detach()).detach().double().reshape(-1)
        except NotImplementedError:
            raise TargetError(f"scheme {target.scheme_name!r} has no groups to rank, so it "
                              f"cannot use allocation: global (layer {target.module_name!r})"
                              ) from None
        self.target = target
        self.groups = max(1, norms.numel())
        self.numel = target.numel
        self.size = self.numel / self.groups
        self.low = min(self.groups - 1, math.ceil(min_sparsity * self.groups - 1e-9))
        self.high = max(self.low, min(self.groups - 1, math.floor(max_sparsity * self.groups
                                                                  + 1e-9)))
        scores = torch.sort(norms / math.sqrt(self.size)).values
        self.candidates = scores[self.low:self.high]


# ----------------------------------------------------------------------- report
def sparsity_report(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One row per target: what was asked and what the weight holds now (measured)."""
    rows = []
    for t in targets:
        nonzeros = int(torch.count_nonzero(t.param.detach()).item())
        rows.append({
            "name": t.name,
            "layer": t.module_name,
            "type": t.layer_type,
            "shape": list(t.shape),
            "scheme": t.scheme_name,
            "requested": t.sparsity,
            "achieved": (t.numel - nonzeros) / t.numel if t.numel else 0.0,
            "nonzeros": nonzeros,
            "numel": t.numel,
        })
    return rows


__all__ = [
    "ALLOCATIONS",
    "RNN_GATES",
    "RULE_KEYS",
    "SUPPORTED_TYPES",
    "Target",
    "allocate_global",
    "layer_type",
    "layer_weights",
    "prunable_layers",
    "resolve",
    "sparsity_report",
]
