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
  globs the later wins); or the name of a published table in :mod:`prunekit.rate_tables`. It
  may be left out for schemes that fix their own rate (N:M).
- ``allocation``: ``"uniform"`` (every selected layer gets the rate) or ``"global"`` (see
  :func:`allocate_global`), with optional per-layer clamps ``min_sparsity``/``max_sparsity``.
  A scheme with one fixed rate (``nm``) cannot take allocated rates and is refused.

Everything is checked when the rules are resolved, before any weight changes: every target's
scheme against its weight's shape and its rate (:func:`check_fit`), and ``channel`` on a
grouped or depthwise conv is refused (its weight's columns are different input channels in
each group; on a depthwise conv the scheme would zero the whole layer). Errors name the rule
index and the layer. ``nn.MultiheadAttention`` is a layer type like the others: its packed
``in_proj_weight`` is three gates (q, k, v, each pruned at the rate on its own), or its
separate ``q/k/v_proj_weight``; its ``out_proj`` is a ``Linear`` of its own. The list
:func:`resolve` returns carries a ``summary`` of the weights the rules leave out, and why.

``scheme: group_filter`` is not a scheme but a target of another kind
(:class:`~prunekit.group_target.GroupTarget`): :func:`resolve` traces the model (it needs
``example``) and makes one target per coupled channel group with a selected producing
layer, spanning every parameter its channels touch (producers' rows and biases, BatchNorm
entries, readers' columns); ``sparsity`` is the fraction of each group's removable
channels removed. It takes no scheme options and no global allocation, and a weight it
touches may not be another rule's target too (an error naming both rules). Channels that
can never go (the model's output, untraceable ops) stay, and ``summary.notes`` says which
and why.

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

from . import rate_tables, schemes
from .errors import ConfigError, PrunekitError, TargetError, within
from .group_target import GROUP_FILTER, GroupTarget
from .schemes import Scheme, measured_sparsity
from .schemes.base import keep_largest, kth_smallest, shares_storage, sorted_rows


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

    # the multi-parameter view every method uses, shared with GroupTarget
    @property
    def members(self) -> list[tuple[str, nn.Parameter]]:
        """``[(name, param)]``: the one parameter this target constrains."""
        return [(self.name, self.param)]

    @property
    def names(self) -> list[str]:
        return [self.name]

    @property
    def weight_layers(self) -> list[str]:
        return [self.module_name]

    def project_members(self, values: Sequence[Tensor] | None = None,
                        keep: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """``[P(v * M) * M]`` for the one member (``[P(v)]`` without a mask ``M``)."""
        v = self.param if values is None else values[0]
        mask = None if keep is None else keep[0]
        if mask is None:
            return [self.project(v)]
        mask = mask.to(v.device)
        return [self.project(v * mask).mul_(mask)]

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
    "MultiheadAttention": nn.MultiheadAttention,
    "Embedding": nn.Embedding,
}
#: Gate matrices stacked in each recurrent input/hidden weight.
RNN_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
#: ``nn.MultiheadAttention.in_proj_weight`` stacks the q, k and v projections along dim 0.
QKV_GATES = 3
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


# ------------------------------------------------------------------------ resolve
def resolve(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    default_scheme: str = "irregular",
    example: Tensor | None = None,
) -> Targets:
    """Turn ``rules`` (see the module docstring) into targets, in model parameter order
    (coupled-group targets of ``scheme: group_filter`` rules after the others).

    Every target's scheme and rate are checked against its weight here (:func:`check_fit`),
    so any rule that cannot be met is a :class:`TargetError` naming the rule and the layer
    before a method touches a weight. The returned list's ``summary`` says which weights the
    rules leave out and why (:class:`ResolveSummary`). ``example`` (one batch of real
    shape) is needed by ``group_filter`` rules, which trace the model to find its coupled
    channels."""
    if isinstance(rules, Mapping):
        rules = [rules]
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TargetError(f"target rules must be a list of dicts, got {type(rules).__name__}")
    ctx = _Model(model, example)
    chosen: dict[str, Target | GroupTarget] = {}
    origin: dict[str, int] = {}
    for index, rule in enumerate(rules):
        with within(str(index)):
            rule_targets, remove = _resolve_rule(ctx, index, rule, default_scheme)
        for target in rule_targets:
            if remove:
                chosen.pop(target.name, None)
                for name in [n for n, t in chosen.items() if isinstance(t, GroupTarget)
                             and target.module_name in t.layers]:
                    del chosen[name]
                ctx.notes[target.module_name] = f"removed by rule {index} (exclude: true)"
            else:
                chosen[target.name] = target
                origin[target.name] = index
    found = [chosen[name] for name in ctx.param_order if name in chosen]
    groups = [t for t in chosen.values() if isinstance(t, GroupTarget)]
    _refuse_overlap(found, groups, origin)
    return Targets([*found, *groups], _summary(ctx, [*found, *groups]))


def _refuse_overlap(plain: Sequence[Target], groups: Sequence[GroupTarget],
                    origin: Mapping[str, int]) -> None:
    """A parameter is constrained by one rule: a coupled group owns its producers' rows and
    its readers' columns, so another rule on any of those layers would be a second
    constraint on the same weight (and an exact rate could not hold for both)."""
    owners: dict[str, list[GroupTarget]] = {}
    for g in groups:
        for name in g.names:
            owners.setdefault(name, []).append(g)
    for t in plain:
        found = owners.get(t.name)
        if found:  # name the group making the layer's filters, if one does
            g = next((g for g in found if t.module_name in g.layers), found[0])
            raise TargetError(
                f"rule {origin[t.name]} (scheme {t.scheme_name!r}) and rule {origin[g.name]} "
                f"(scheme {GROUP_FILTER!r}) overlap on layer {t.module_name!r} (weight "
                f"{t.name}): the coupled group of {g.name} removes its "
                f"{'filters' if t.module_name in g.layers else 'input channels'}; a layer "
                f"takes one rule, so leave it out of one of them (exclude: [{t.module_name!r}])"
            )


class _Model:
    """Names of a model's layers and parameters, computed once per :func:`resolve`."""

    def __init__(self, model: nn.Module, example: Tensor | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TargetError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.example = example
        self._structure: Any = None
        #: what group rules leave alone, and why (fixed channels, untraced layers)
        self.group_notes: list[str] = []
        self.layers = prunable_layers(model)
        self.types = {name: layer_type(m) for name, m in self.layers.items()}
        self.modules = dict(model.named_modules())
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.param_order = list(self.param_names.values())
        self.wrapped = isinstance(model, _WRAPPERS)
        #: why a layer is left out, when a rule decided so (excluded, not in a table, ...)
        self.notes: dict[str, str] = {}

    def aliases(self, name: str) -> tuple[str, ...]:
        if self.wrapped and name.startswith("module."):
            return (name, name[len("module."):])
        return (name,)

    def structure(self, index: int) -> Any:
        """The model's coupled channels, traced once per :func:`resolve`."""
        if self._structure is None:
            from .structure import build  # noqa: PLC0415  (torch.fx only for group rules)

            if self.example is None:
                raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} traces the model to "
                                  f"find its coupled channels, so it needs an example input "
                                  f"(resolve(..., example=one batch of real shape))")
            try:
                self._structure = build(self.model, self.example)
            except ConfigError as exc:
                raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} needs a model "
                                  f"torch.fx can trace: {exc}") from None
        return self._structure

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
) -> tuple[list[Target | GroupTarget], bool]:
    scheme = check_rule(rule, index, default_scheme=default_scheme)
    types = _rule_types(rule, index)
    names = _select(ctx, index, _as_list(rule.get("layers", "*"), "layers", index), types)
    remove = rule.get("exclude") is True
    if scheme is None and not remove:
        return _resolve_group_rule(ctx, index, rule, names), False
    if not remove and rule.get("exclude") not in (None, False):
        kept = _exclude(ctx, index, _as_list(rule["exclude"], "exclude", index), names)
        ctx.notes.update({n: f"excluded by rule {index}" for n in names if n not in kept})
        names = kept
    if not names:
        raise TargetError(f"rule {index} selects no layer once 'exclude' is applied")
    if remove:
        plain = scheme if scheme is not None else schemes.get("irregular")
        return _targets(ctx, index, plain, {n: 0.0 for n in names}, check=False), True
    allocation = rule.get("allocation", "uniform")
    if allocation == "global":
        _refuse_fixed_rate(index, scheme)
    _refuse_grouped_channel(ctx, index, scheme, names)
    rates = _rule_rates(ctx, index, rule, names, scheme, allocation)
    ctx.notes.update({n: f"not in the sparsity table of rule {index}"
                      for n in names if n not in rates})
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


def check_rule(rule: Any, index: int = 0, *,
               default_scheme: str = "irregular") -> Scheme | None:
    """Check the parts of a rule that need no model (key types, the scheme and its options,
    allocation, clamps, rate values and table names) and return its scheme. A recipe's plan
    runs it on every rule when the file is read, so a typo in the last rule is reported with
    its key (the error's ``key`` is ``(index, key)``) before a model is even built; the same
    helpers run again in :func:`resolve`, which adds what only the model can tell. A
    ``group_filter`` rule (a target spanning several parameters, not a scheme) gives None."""
    with within(str(index)):
        if not isinstance(rule, Mapping):
            raise TargetError(f"rule {index} must be a dict, got {type(rule).__name__}")
        for key in ("layers", "exclude"):
            if key in rule and not (key == "exclude" and isinstance(rule[key], bool)):
                with within(key):
                    _as_list(rule[key], key, index)
        with within("types"):
            _rule_types(rule, index)
        options = [k for k in rule if k not in RULE_KEYS]
        with within(str(options[0]) if options else "scheme"):  # a typo is an unknown option
            if rule.get("scheme", default_scheme) == GROUP_FILTER:
                scheme = None
                if options:
                    raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} takes no options "
                                      f"(it removes whole coupled channels), got "
                                      f"{sorted(map(str, options))}")
            else:
                scheme = _rule_scheme(rule, index, default_scheme)
        allocation = rule.get("allocation", "uniform")
        with within("allocation"):
            if allocation not in ALLOCATIONS:
                raise TargetError(f"rule {index}: allocation must be one of "
                                  f"{list(ALLOCATIONS)}, got {allocation!r}")
            if scheme is None and allocation != "uniform":
                raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} gives every coupled "
                                  f"group the rule's rate (allocation: uniform)")
        if scheme is None and rule.get("exclude") is not True:
            with within("sparsity"):
                given = rule.get("sparsity")
                if given is None or isinstance(given, Mapping | str):
                    raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} needs one "
                                      f"'sparsity' (the fraction of every coupled group's "
                                      f"removable channels to remove), got {given!r}")
        for key in ("min_sparsity", "max_sparsity"):
            if key in rule:
                with within(key):
                    if allocation != "global":
                        raise TargetError(f"rule {index}: {key!r} applies only with "
                                          f"allocation: global")
                    _clamp(rule, key, index, 0.0)
        with within("sparsity"):
            given = _named_table(rule.get("sparsity"), index)
            if isinstance(given, Mapping):
                for layer, rate in given.items():
                    if not isinstance(layer, str):
                        raise TargetError(f"rule {index}: sparsity table keys must be layer "
                                          f"names, got {layer!r}")
                    _check_rate(rate, f"rule {index}: sparsity of layer {layer!r}")
            elif given is not None:
                layers = rule.get("layers", "*")
                named = f"layer {layers!r}" if isinstance(layers, str) else f"layers {layers!r}"
                _check_rate(given, f"rule {index}: sparsity of {named}")
    return scheme


def _resolve_group_rule(ctx: _Model, index: int, rule: Mapping[str, Any],
                        names: list[str]) -> list[GroupTarget]:
    """A ``group_filter`` rule: one target per coupled group with a selected producing
    layer; a group with an excluded producer is left whole (its channels go together)."""
    excluded: set[str] = set()
    if rule.get("exclude") not in (None, False):
        patterns = _as_list(rule["exclude"], "exclude", index)
        kept = _exclude(ctx, index, patterns, names)
        ctx.notes.update({n: f"excluded by rule {index}" for n in names if n not in kept})
        names = kept
        excluded = {n for n in ctx.layers if any(ctx.matches(p, n) for p in patterns)}
    if not names:
        raise TargetError(f"rule {index} selects no layer once 'exclude' is applied")
    with within("sparsity"):
        rate = _check_rate(rule.get("sparsity"), f"rule {index}: sparsity")
    for name in names:
        for attr, _ in layer_weights(ctx.layers[name]):
            _check_values(ctx.layers[name]._parameters[attr],
                          f"rule {index}: layer {name!r} ({ctx.types[name]})")
    from .structure.rules import group_targets  # noqa: PLC0415  (torch.fx only here)

    found, notes = group_targets(ctx.structure(index), ctx.model, set(names), excluded, rate)
    ctx.group_notes.extend(f"rule {index}: {note}" for note in notes)
    if not found:
        raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} finds no removable channel "
                          f"in the groups of {', '.join(names)}: " + "; ".join(notes))
    for target in found:
        for name, param in target.members:
            _check_values(param, f"rule {index}: {name} (coupled group {target.name})")
    return found


def _named_table(given: Any, index: int) -> Any:
    """A rule's ``sparsity`` with a published table's name replaced by its rates."""
    if not isinstance(given, str):
        return given
    try:
        return rate_tables.rates(given)
    except ConfigError as exc:
        raise TargetError(f"rule {index}: {exc}") from None


def _scheme_name(scheme: Scheme) -> str:
    return str(getattr(scheme, "name", type(scheme).__name__))


def _rate_parts(scheme: Scheme, rate: float | None) -> list[tuple[Scheme, float | None]]:
    """``(part, the rate it is given)`` for a composite scheme, else ``[(scheme, rate)]``."""
    parts = getattr(scheme, "parts", None)
    if not parts or not hasattr(scheme, "part_rates"):
        return [(scheme, rate)]
    return list(zip(parts, scheme.part_rates(rate), strict=True))


def _refuse_fixed_rate(index: int, scheme: Scheme) -> None:
    """Global allocation hands every layer its own rate; a scheme with one fixed rate (N:M)
    can take none of them, so the combination is refused before anything is ranked."""
    marker = object()
    try:
        receiving = [p for p, r in _rate_parts(scheme, marker) if r is marker]  # type: ignore[arg-type]
    except PrunekitError:
        receiving = [scheme]
    fixed = [p for p in receiving if getattr(p, "fixed_rate", False)]
    if fixed:
        raise TargetError(
            f"rule {index}: scheme {_scheme_name(scheme)!r} cannot use allocation: global: "
            f"{_scheme_name(fixed[0])!r} has one fixed rate "
            f"({getattr(fixed[0], 'natural_sparsity', None)}), so there is no per-layer rate "
            f"to allocate; use allocation: uniform and leave 'sparsity' unset"
        )


def _refuse_grouped_channel(ctx: _Model, index: int, scheme: Scheme, names: list[str]) -> None:
    """Channel pruning of a grouped or depthwise conv is refused, naming every such layer:
    its weight's column ``j`` is a different input channel in each group, so the scheme
    would cut position ``j`` of every group (of a depthwise conv: the whole layer)."""
    if not any(_scheme_name(p) == "channel" for p, _ in _rate_parts(scheme, None)):
        return
    grouped = [n for n in names if getattr(ctx.layers[n], "groups", 1) > 1]
    if grouped:
        listed = ", ".join(f"{n} (groups={ctx.layers[n].groups})" for n in grouped)
        raise TargetError(
            f"rule {index}: scheme 'channel' does not fit grouped or depthwise convs: "
            f"{listed}. In such a conv each group reads its own input channels, so a "
            f"channel of the weight [out, in/groups, kh, kw] is a different input in every "
            f"group, and on a depthwise conv pruning it zeroes the whole layer. Prune the "
            f"filters of the layer that feeds it (scheme 'filter') or leave these layers "
            f"out with exclude: {grouped}"
        )


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
    given = _named_table(given, index)
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
                _check_values(param, f"rule {index}: layer {layer!r} ({kind}, weight {name})")
                try:
                    check_fit(scheme, tuple(param.shape), rate, gates=gates)
                except PrunekitError as exc:
                    raise TargetError(
                        f"rule {index}: scheme {_scheme_name(scheme)!r} at sparsity {rate} does "
                        f"not fit layer {layer!r} ({kind}, weight {name} of shape "
                        f"{tuple(param.shape)}): {exc}"
                    ) from None
            out.append(Target(name, layer, param, scheme,
                              None if rate is None else float(rate), kind, gates))
    return out


def _check_values(param: Tensor, what: str) -> None:
    """A weight that can be pruned at all: it has elements, and (unless it is on the meta
    device, where only shapes exist) only finite values, since NaN ranks as nothing and a
    projection of it is garbage that would look like a result."""
    if param.numel() == 0:
        raise TargetError(f"{what} is empty (shape {tuple(param.shape)}): nothing to prune")
    if param.is_meta:
        return
    values = param.detach()
    # a finite sum proves every value finite (NaN and inf propagate) at half the cost of
    # isfinite; only an overflowing sum of finite values needs the full check
    if not bool(torch.isfinite(values.sum())) and not bool(torch.isfinite(values).all()):
        raise TargetError(f"{what} holds NaN or inf values; pruning needs finite weights "
                          f"(check the checkpoint or the training that made them)")


def check_fit(scheme: Scheme, shape: tuple[int, ...], rate: float | None, *,
              gates: int = 1) -> None:
    """Raise a :class:`PrunekitError` if ``scheme`` cannot give a weight of ``shape`` the
    rate ``rate``: the shape check, then each pruning part's rate check (``check_rate``
    where a scheme has one, e.g. pattern's minimum rate or N:M's fixed one; otherwise its
    plain rate validation). Costs no projection, so :func:`resolve` runs it on every target
    and a bad rate in the last rule is an error before any weight is touched."""
    scheme.check(shape, gates=gates)
    for part, part_rate in _rate_parts(scheme, rate):
        check_rate = getattr(part, "check_rate", None)
        if check_rate is not None:
            check_rate(shape, part_rate, gates=gates)
        elif part is scheme or getattr(part, "prunes", True):
            part._rate(part_rate)


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

    Every target is a sequence of *steps* in the scheme's own units: a step prunes one group
    (a single weight for ``irregular``, a kernel for ``pattern``) and, for weights that stack
    gates (LSTM, GRU, attention q/k/v), the weakest remaining group of *every* gate at once,
    because each gate is pruned at the target's rate on its own. A step is scored by the
    root-mean-square of its weights (L2 norm over sqrt(size)), so groups of different sizes
    in different layers compete fairly. The lowest-scoring steps are taken across all targets
    until the weights they prune, plus what the schemes prune at rate 0 (pattern: all but
    ``entries`` of every kernel), are nearest to ``sparsity`` of all the weights: to the
    nearest step, so for ungated single weights exactly. Every target's rate is then ``k``
    steps out of ``n`` (mapped to weights by the scheme's ``rate_of_groups`` when it has
    one), which each gate rounds back to exactly ``k`` groups, so the plan is what the
    projection prunes. Each rate stays within ``[min_sparsity, max_sparsity]`` and always
    keeps at least one step, so no layer is cut off entirely: layers with small weights get
    high rates. When all step sizes are whole multiples of one size (``irregular``, gated or
    not) the threshold is found by one selection (``kth_smallest``) over the concatenated
    scores, not a sort.
    """
    sparsity = _check_rate(sparsity, f"{where}: sparsity")
    if min_sparsity > max_sparsity:
        raise TargetError(f"{where}: min_sparsity {min_sparsity} exceeds max_sparsity "
                          f"{max_sparsity}")
    if not targets:
        return
    on_meta = [t.name for t in targets if t.param.is_meta]
    if on_meta:
        raise TargetError(f"{where}: allocation: global ranks weights by their values, and "
                          f"{on_meta[0]} is on the meta device (shapes only, no values)")
    units = [_Unit(t, min_sparsity, max_sparsity, where) for t in targets]
    need = _budget(units, sparsity, min_sparsity, max_sparsity, where)
    copies = _step_copies(units)
    if copies is not None:
        extra = _take_equal_steps(units, need, copies)
    else:
        extra = _take_sorted_steps(units, need)
    for unit, more in zip(units, extra, strict=True):
        unit.target.sparsity = unit.rate((unit.low + more) / unit.steps)


def _budget(units: Sequence[_Unit], sparsity: float, min_sparsity: float, max_sparsity: float,
            where: str) -> float:
    """Weights the optional steps must prune, after what every target prunes anyway."""
    total = sum(u.numel for u in units)
    budget = sparsity * total
    slack = max(u.step for u in units)
    base = sum(u.base for u in units)
    forced = sum(u.base + u.low * u.step for u in units)
    ceiling = sum(u.base + u.high * u.step for u in units)
    if base > budget + slack:
        raise TargetError(f"{where}: the schemes prune {base / total:.4f} of the selected "
                          f"weights at their lowest rate, more than the requested {sparsity}")
    if forced > budget + slack:
        raise TargetError(f"{where}: min_sparsity {min_sparsity} prunes {forced / total:.4f} "
                          f"of the selected weights, more than the requested {sparsity}")
    if ceiling < budget - slack:
        raise TargetError(f"{where}: max_sparsity {max_sparsity} (and keeping one group per "
                          f"layer) allows at most {ceiling / total:.4f} of the selected "
                          f"weights to be pruned, less than the requested {sparsity}")
    return budget - forced


def _step_copies(units: Sequence[_Unit]) -> list[int] | None:
    """Steps as whole multiples of one common size: how many copies of it each unit's step
    is (a gated step prunes one weight per gate), or None when sizes are not whole numbers
    (then the candidates are sorted instead)."""
    sizes = [round(u.step) for u in units]
    if any(abs(u.step - n) > 1e-9 or n < 1 for u, n in zip(units, sizes, strict=True)):
        return None
    common = math.gcd(*sizes)
    return [n // common for n in sizes]


def _take_equal_steps(units: Sequence[_Unit], need: float, copies: Sequence[int]) -> list[int]:
    """Optional steps each unit takes when every step is a whole number of copies of one
    size: each step's score counts once per copy, and the ``k``-th lowest score of that pool
    (``k`` nearest ``need / size``, a tie taking fewer) is found by one selection, not a
    sort; every unit then takes its scores below it, and the ties at it go to the earlier
    units. The one step whose copies straddle the cut is taken when that is nearer
    ``need``. Only counts per unit are needed, so no mask of the pool is ever built."""
    size = units[0].step / copies[0]
    count = sum((u.high - u.low) * n for u, n in zip(units, copies, strict=True))
    whole = math.floor(need / size) if need > 0 else 0
    take = min(count, max(0, whole + (need / size - whole > 0.5)))
    if take == 0:
        return [0] * len(units)
    pool = torch.cat([u.candidates if n == 1 else u.candidates.repeat_interleave(n)
                      for u, n in zip(units, copies, strict=True)])
    cut = kth_smallest(pool, take, overwrite=True)
    del pool
    below = [int(torch.count_nonzero(u.candidates < cut)) * n
             for u, n in zip(units, copies, strict=True)]
    ties_left = take - sum(below)
    steps, taken, straddle = [], 0, None
    for unit, n, picked in zip(units, copies, below, strict=True):
        if ties_left > 0:
            tied = min(ties_left, int(torch.count_nonzero(unit.candidates == cut)) * n)
            picked += tied
            ties_left -= tied
        whole, rest = divmod(picked, n)
        steps.append(whole)
        taken += whole * n
        if rest:  # the step that straddles the cut (ties keep it to one): nearest wins
            straddle = len(steps) - 1
    if straddle is not None and (abs((taken + copies[straddle]) * size - need)
                                 < abs(taken * size - need)):
        steps[straddle] += 1
    return steps


def _take_sorted_steps(units: Sequence[_Unit], need: float) -> list[int]:
    """Optional steps each unit takes when step sizes differ: candidates in order of
    increasing score (ties: earlier unit and position), up to the prefix whose pruned
    weights are nearest ``need``."""
    scores = torch.cat([u.ranked() for u in units])
    owner = torch.cat([torch.full((u.high - u.low,), i) for i, u in enumerate(units)])
    sizes = torch.tensor([u.step for u in units], dtype=torch.float64)[owner]
    order = torch.argsort(scores, stable=True)
    taken = _nearest_prefix(torch.cumsum(sizes[order], 0), need)
    return torch.bincount(owner[order[:taken]], minlength=len(units)).tolist()


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
    """One target in global allocation (see :func:`allocate_global`): ``steps`` steps of
    ``step`` weights each on top of ``base`` weights pruned at rate 0; it must take the
    ``low`` weakest steps and may take up to ``high``. ``candidates`` scores the steps it
    may take, in position order, ``+inf`` for the others."""

    def __init__(self, target: Target, min_sparsity: float, max_sparsity: float,
                 where: str) -> None:
        try:
            with torch.no_grad():
                norms = target.group_norms(target.param.detach()).detach().reshape(-1)
        except NotImplementedError:
            raise TargetError(f"{where}: scheme {target.scheme_name!r} has no groups to rank, "
                              f"so it cannot use allocation: global (layer "
                              f"{target.module_name!r})") from None
        self.target = target
        self.numel = target.numel
        gates = target.gates if norms.numel() % max(1, target.gates) == 0 else 1
        self.steps = max(1, norms.numel() // gates)
        self.rate = getattr(target.scheme, "rate_of_groups", lambda fraction: fraction)
        self.base = self.rate(0.0) * self.numel
        self.step = (self.rate(1.0) * self.numel - self.base) / self.steps
        self.low = min(self.steps - 1, math.ceil(self._fraction(min_sparsity) * self.steps - 1e-9))
        self.high = max(self.low, min(self.steps - 1,
                                      math.floor(self._fraction(max_sparsity) * self.steps + 1e-9)))
        # float32 ranks float32 weights exactly (|w|) and is twice as fast to select on
        self.scores = self._step_scores(norms if norms.dtype == torch.float64 else norms.float(),
                                        gates)
        self.candidates = self._candidates()

    def _fraction(self, sparsity: float) -> float:
        """The fraction of steps that prunes ``sparsity`` of this target (clipped to [0, 1])."""
        r0, r1 = self.rate(0.0), self.rate(1.0)
        return min(1.0, max(0.0, (sparsity - r0) / (r1 - r0))) if r1 > r0 else 0.0

    def _step_scores(self, norms: Tensor, gates: int) -> Tensor:
        """RMS weight of every step. With gates, step ``j`` holds the ``j``-th weakest group
        of every gate (the scores come out sorted); otherwise one group, in position order."""
        group_size = self.numel / norms.numel() if norms.numel() else 1.0
        if gates == 1:
            return norms if group_size == 1 else norms / math.sqrt(group_size)
        weakest = sorted_rows(norms.reshape(gates, self.steps))
        return torch.sqrt((weakest * weakest).sum(dim=0) / (gates * group_size))

    def _candidates(self) -> Tensor:
        """Scores of the steps ranked ``low .. high - 1`` (stable), ``+inf`` elsewhere."""
        scores = self.scores
        if self.low == 0 and self.high == self.steps - 1:  # the default: all but the strongest
            flat = scores.reshape(-1)
            strongest = int(torch.nonzero(flat == flat.max()).max())  # of ties, the later
            if not shares_storage(flat, self.target.param):  # scores are scratch: no copy
                # ``scores`` now holds +inf at its maximum; ``ranked`` still sorts it the
                # same way (the strongest step stays last and is never taken)
                flat[strongest] = math.inf
                return flat
            return flat.index_fill(0, torch.tensor([strongest]), math.inf)
        optional = keep_largest(scores, self.low) & ~keep_largest(scores, self.high)
        return torch.where(optional, scores, math.inf)

    def ranked(self) -> Tensor:
        """The optional steps' scores in increasing order (ties: earlier position)."""
        return torch.sort(self.scores, stable=True).values[self.low:self.high]


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


# ---------------------------------------------------------------------- summary
@dataclass(frozen=True)
class LeftOut:
    """A weight no target covers: its parameter name, size and why it was left out."""

    name: str
    numel: int
    reason: str


@dataclass(frozen=True)
class ResolveSummary:
    """How much of a model's weights (parameters with >= 2 dims: biases and norm scales are
    never pruned) the resolved targets cover, and every weight left out with the reason, so
    a wildcard that silently misses a kind of layer shows up. Nothing is printed: call
    :meth:`describe` for a readable text."""

    weights: int
    targeted: int
    left_out: tuple[LeftOut, ...]
    #: what ``group_filter`` rules leave alone and why (fixed channels, untraced layers)
    notes: tuple[str, ...] = ()

    @property
    def left_out_params(self) -> int:
        return sum(item.numel for item in self.left_out)

    def describe(self, limit: int = 20) -> str:
        """A few lines: coverage, then the left-out weights grouped by reason."""
        share = self.targeted / self.weights if self.weights else 1.0
        lines = [f"targets cover {self.targeted:,} of {self.weights:,} weight parameters "
                 f"({share:.1%}); {self.left_out_params:,} left out"]
        by_reason: dict[str, list[LeftOut]] = {}
        for item in self.left_out:
            by_reason.setdefault(item.reason, []).append(item)
        for reason, items in by_reason.items():
            names = ", ".join(i.name for i in items[:limit])
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  {sum(i.numel for i in items):,} params ({names}{more}): {reason}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


class Targets(list):
    """What :func:`resolve` returns: the list of :class:`Target` (in model parameter order,
    then any :class:`~prunekit.group_target.GroupTarget`) with ``summary``, a
    :class:`ResolveSummary` of the weights the rules leave out."""

    def __init__(self, targets: Sequence[Target | GroupTarget],
                 summary: ResolveSummary) -> None:
        super().__init__(targets)
        self.summary = summary


def _summary(ctx: _Model, targets: Sequence[Target | GroupTarget]) -> ResolveSummary:
    covered = {n for t in targets for n, p in t.members if p.dim() >= 2}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for module_name, module in ctx.modules.items():
        for attr, param in module._parameters.items():
            name = ctx.param_names.get(id(param)) if param is not None else None
            if name is not None and name not in owners:
                owners[name] = (module_name, module, attr)
    weights = targeted = 0
    left: list[LeftOut] = []
    for name, (module_name, module, attr) in owners.items():
        param = module._parameters[attr]
        if param is None or param.dim() < 2:
            continue
        weights += param.numel()
        if name in covered:
            targeted += param.numel()
        else:
            left.append(LeftOut(name, param.numel(), _why_left_out(ctx, module_name, module,
                                                                   attr)))
    return ResolveSummary(weights, targeted, tuple(left), tuple(ctx.group_notes))


def _why_left_out(ctx: _Model, module_name: str, module: nn.Module, attr: str) -> str:
    kind = layer_type(module)
    if kind is None:
        return (f"{type(module).__name__} is not a supported layer type (supported: "
                f"{', '.join(SUPPORTED_TYPES)})")
    if attr not in dict(layer_weights(module)):
        return f"{attr!r} of a {kind} is not a prunable weight"
    if module_name in ctx.notes:
        return ctx.notes[module_name]
    if kind == "Embedding":
        return ("Embedding layers are pruned only when named exactly or selected with "
                "types: [Embedding]")
    return "no rule selects this layer"


__all__ = [
    "ALLOCATIONS",
    "GROUP_FILTER",
    "QKV_GATES",
    "RNN_GATES",
    "RULE_KEYS",
    "SUPPORTED_TYPES",
    "LeftOut",
    "GroupTarget",
    "ResolveSummary",
    "Target",
    "Targets",
    "allocate_global",
    "check_fit",
    "check_rule",
    "layer_type",
    "layer_weights",
    "prunable_layers",
    "resolve",
    "sparsity_report",
]
