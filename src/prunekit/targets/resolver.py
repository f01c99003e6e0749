"""Resolving rules against a model: every selected weight becomes a target, checked
against its scheme and rate before any weight changes (the rules are described in
:mod:`prunekit.targets.rules`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from .. import schemes
from ..errors import ConfigError, PrunekitError, TargetError, within
from ..schemes import Scheme
from ..structure import build as build_structure
from .allocation import allocate_global
from .coupled import group_targets
from .group import GROUP_FILTER, GroupTarget
from .layers import SUPPORTED_TYPES, layer_type, layer_weights, prunable_layers
from .rules import (
    _as_list,
    _check_rate,
    _clamp,
    _is_exact,
    _named_table,
    _refuse_fixed_rate,
    _rule_types,
    check_fit,
    check_rule,
)
from .summary import Targets, summarize
from .target import Target

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


# ------------------------------------------------------------------------ resolve
def resolve(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    default_scheme: str = "irregular",
    example: Tensor | None = None,
    structure: Any = None,
) -> Targets:
    """Turn ``rules`` (see the module docstring) into targets, in model parameter order
    (coupled-group targets of ``scheme: group_filter`` rules after the others).

    Every target's scheme and rate are checked against its weight here (:func:`check_fit`),
    so any rule that cannot be met is a :class:`TargetError` naming the rule and the layer
    before a method touches a weight. The returned list's ``summary`` says which weights the
    rules leave out and why (:class:`ResolveSummary`). ``example`` (one batch of real
    shape) is needed by ``group_filter`` rules, which trace the model to find its coupled
    channels; ``structure`` is a trace of this model already made (the returned list's
    ``structure``, which depends on the architecture only), so a run traces once."""
    if isinstance(rules, Mapping):
        rules = [rules]
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TargetError(f"target rules must be a list of dicts, got {type(rules).__name__}")
    ctx = _Model(model, example, structure)
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
    return Targets([*found, *groups], summarize(ctx, [*found, *groups]), ctx.traced)


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

    def __init__(self, model: nn.Module, example: Tensor | None = None,
                 structure: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TargetError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.example = example
        self._structure: Any = structure
        #: what group rules leave alone, and why (fixed channels, untraced layers)
        self.group_notes: list[str] = []
        self.layers = prunable_layers(model)
        self.types = {name: layer_type(m) for name, m in self.layers.items()}
        self.modules = dict(model.named_modules())
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.module_names = {id(m): n for n, m in self.modules.items()}
        #: layers reparametrized by torch.nn.utils.prune -> the pruned attribute's name
        self.torch_pruned = {
            n: attr[: -len("_orig")] for n, m in self.modules.items() for attr in m._parameters
            if attr.endswith("_orig") and f"{attr[: -len('_orig')]}_mask" in m._buffers}
        self.param_order = list(self.param_names.values())
        self.wrapped = isinstance(model, _WRAPPERS)
        #: why a layer is left out, when a rule decided so (excluded, not in a table, ...)
        self.notes: dict[str, str] = {}

    def aliases(self, name: str) -> tuple[str, ...]:
        if self.wrapped and name.startswith("module."):
            return (name, name[len("module."):])
        return (name,)

    @property
    def traced(self) -> Any:
        """The model's coupled channels if any rule traced them (or they were given)."""
        return self._structure

    def structure(self, index: int) -> Any:
        """The model's coupled channels, traced once per :func:`resolve`."""
        if self._structure is None:
            if self.example is None:
                raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} traces the model to "
                                  f"find its coupled channels, so it needs an example input "
                                  f"(resolve(..., example=one batch of real shape))")
            try:
                self._structure = build_structure(self.model, self.example)
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


def _resolve_rule(
    ctx: _Model, index: int, rule: Any, default_scheme: str
) -> tuple[list[Target | GroupTarget], bool]:
    rule = _with_module_names(ctx, index, rule)
    scheme = check_rule(rule, index, default_scheme=default_scheme)
    types = _rule_types(rule, index)
    patterns = _as_list(rule.get("layers", "*"), "layers", index)
    names = _select(ctx, index, patterns, types)
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
    names = _skip_grouped_channel(ctx, index, scheme, names, patterns)
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
    found, notes = group_targets(ctx.structure(index), ctx.model, set(names), excluded, rate)
    ctx.group_notes.extend(f"rule {index}: {note}" for note in notes)
    if not found:
        raise TargetError(f"rule {index}: scheme {GROUP_FILTER!r} finds no removable channel "
                          f"in the groups of {', '.join(names)}: " + "; ".join(notes))
    for target in found:
        for name, param in target.members:
            _check_values(param, f"rule {index}: {name} (coupled group {target.name})")
    return found


def _skip_grouped_channel(ctx: _Model, index: int, scheme: Scheme, names: list[str],
                          patterns: list[str]) -> list[str]:
    """Channel pruning does not fit a grouped or depthwise conv: its weight's column ``j``
    is a different input channel in each group, so the scheme would cut position ``j`` of
    every group (of a depthwise conv: the whole layer). A wildcard rule (``channel`` over
    every Conv2d of a ResNeXt) skips such layers, with the reason in the summary; a rule
    that names one exactly, or selects nothing else, is refused naming them."""
    if not any(p.name == "channel" for p in scheme.parts):
        return names
    grouped = [n for n in names if getattr(ctx.layers[n], "groups", 1) > 1]
    named = [n for n in grouped if any(_is_exact(p) and ctx.matches(p, n) for p in patterns)]
    if grouped and not named and len(grouped) < len(names):
        for n in grouped:
            why = (f"skipped by rule {index}: scheme 'channel' does not fit a grouped or "
                   f"depthwise conv (groups={ctx.layers[n].groups})")
            ctx.notes[n] = why
            ctx.group_notes.append(f"{n}: {why}")
        return [n for n in names if n not in grouped]
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
    return names


def _with_module_names(ctx: _Model, index: int, rule: Any) -> Any:
    """``rule`` with module objects in ``layers`` / ``exclude`` replaced by their names in
    the model (``{"layers": [model.fc1], ...}``), so a rule can name layers either way."""
    if not isinstance(rule, Mapping):
        return rule
    named = dict(rule)
    for key in ("layers", "exclude"):
        value = named.get(key)
        items = list(value) if isinstance(value, list | tuple) else [value]
        if not any(isinstance(v, nn.Module) for v in items):
            continue
        names = []
        for item in items:
            if isinstance(item, nn.Module):
                name = ctx.module_names.get(id(item))
                if name is None:
                    raise TargetError(f"rule {index}: {key} holds a {type(item).__name__} "
                                      f"that is not a module of this model")
                item = name or "*"  # the model itself: all of it
            names.append(item)
        named[key] = names
    return named


def _select(ctx: _Model, index: int, patterns: list[str], types: list[str] | None) -> list[str]:
    """Layer names matched by ``patterns`` (union, model order), filtered by ``types``. A
    layer pruned with ``torch.nn.utils.prune`` (its weight recomputed from ``weight_orig``
    and ``weight_mask`` by a hook) is refused by name rather than silently left out."""
    picked: set[str] = set()
    for pattern in patterns:
        reparametrized = [n for n in ctx.torch_pruned if ctx.matches(pattern, n)]
        if reparametrized:
            raise TargetError(
                f"rule {index}: layer {reparametrized[0]!r} was pruned with "
                f"torch.nn.utils.prune (it holds {ctx.torch_pruned[reparametrized[0]]}_orig and "
                f"a mask, and a hook recomputes the weight): call "
                f"torch.nn.utils.prune.remove(module, "
                f"{ctx.torch_pruned[reparametrized[0]]!r}) first, which makes its zeros "
                f"permanent; prunekit then keeps them and prunes further")
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


def _rule_rates(
    ctx: _Model, index: int, rule: Mapping[str, Any], names: list[str], scheme: Scheme,
    allocation: str,
) -> dict[str, float | None]:
    """``{layer name: rate}`` for the layers this rule prunes."""
    given = rule.get("sparsity")
    if given is None:
        if allocation == "global" or scheme.natural_sparsity is None:
            raise TargetError(f"rule {index}: 'sparsity' is required for scheme "
                              f"{scheme.name!r}"
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
                        f"rule {index}: scheme {scheme.name!r} at sparsity {rate} does "
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
