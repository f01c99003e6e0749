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
  globs the later wins); or the name of a published table in :mod:`prunekit.targets.rate_tables`. It
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
(:class:`~prunekit.targets.GroupTarget`): :func:`resolve` traces the model (it needs
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
from collections.abc import Mapping
from typing import Any

from .. import schemes, validate
from ..errors import ConfigError, PrunekitError, TargetError, within
from ..schemes import Scheme
from . import rate_tables
from .group import GROUP_FILTER
from .layers import SUPPORTED_TYPES

RULE_KEYS = ("layers", "types", "exclude", "scheme", "sparsity", "allocation",
             "min_sparsity", "max_sparsity")
ALLOCATIONS = ("uniform", "global")


def _is_exact(pattern: str) -> bool:
    return not any(c in pattern for c in "*?[")


def _as_list(value: Any, key: str, index: int) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise TargetError(f"rule {index}: {key!r} must be a string or a list of strings "
                          f"(names or globs; in Python also module objects), got {value!r}")
    return list(items)


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
        with within(_scheme_error_key(rule, options, default_scheme)):
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
            validate.choice(allocation, choices=ALLOCATIONS, subject=f"rule {index}: allocation",
                            error=TargetError)
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


def _scheme_error_key(rule: Mapping[str, Any], options: list[Any],
                      default_scheme: str) -> str:
    """The key a scheme error is about, so the message points at the right line (or the
    ``--set`` that gave it): ``scheme`` when its name is unknown; else the first option the
    scheme refuses on its own (a typo, a bad value); else the first option."""
    name = rule.get("scheme", default_scheme)
    if not options:
        return "scheme"
    known = schemes.available()
    if not isinstance(name, str) or any(part.strip() not in known
                                        for part in name.split("+")):
        return "scheme" if name != GROUP_FILTER else str(options[0])
    for key in options:
        try:
            schemes.get(name, **{key: _tuples(rule[key])})
        except ConfigError as exc:
            if str(key) in exc.message:
                return str(key)
    return str(options[0])


def _named_table(given: Any, index: int) -> Any:
    """A rule's ``sparsity`` with a published table's name replaced by its rates."""
    if not isinstance(given, str):
        return given
    try:
        return rate_tables.rates(given)
    except ConfigError as exc:
        raise TargetError(f"rule {index}: {exc}") from None


def _rate_parts(scheme: Scheme, rate: float | None) -> list[tuple[Scheme, float | None]]:
    """``(part, the rate it is given)`` for every part of ``scheme``."""
    return list(zip(scheme.parts, scheme.part_rates(rate), strict=True))


def _refuse_fixed_rate(index: int, scheme: Scheme) -> None:
    """Global allocation hands every layer its own rate; a scheme with one fixed rate (N:M)
    can take none of them, so the combination is refused before anything is ranked."""
    marker = object()
    try:
        receiving = [p for p, r in _rate_parts(scheme, marker) if r is marker]  # type: ignore[arg-type]
    except PrunekitError:
        receiving = [scheme]
    fixed = [p for p in receiving if p.fixed_rate]
    if fixed:
        raise TargetError(
            f"rule {index}: scheme {scheme.name!r} cannot use allocation: global: "
            f"{fixed[0].name!r} has one fixed rate "
            f"({fixed[0].natural_sparsity}), so there is no per-layer rate "
            f"to allocate; use allocation: uniform and leave 'sparsity' unset"
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


def _check_rate(rate: Any, what: str) -> float:
    return validate.number(rate, bounds="[0, 1)", subject=what, error=TargetError)


def _clamp(rule: Mapping[str, Any], key: str, index: int, default: float) -> float:
    return validate.number(rule.get(key, default), bounds="[0, 1]",
                           subject=f"rule {index}: {key!r}", error=TargetError)


def check_fit(scheme: Scheme, shape: tuple[int, ...], rate: float | None, *,
              gates: int = 1) -> None:
    """Raise a :class:`PrunekitError` if ``scheme`` cannot give a weight of ``shape`` the
    rate ``rate``: the shape check, then each pruning part's rate check (``check_rate``
    where a scheme has one, e.g. pattern's minimum rate or N:M's fixed one; otherwise its
    plain rate validation). Costs no projection, so :func:`resolve` runs it on every target
    and a bad rate in the last rule is an error before any weight is touched."""
    scheme.check(shape, gates=gates)
    for part, part_rate in _rate_parts(scheme, rate):
        part.check_rate(shape, part_rate, gates=gates)
