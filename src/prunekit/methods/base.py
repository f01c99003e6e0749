"""What every pruning method shares: the plugin protocol, counters, masks and state.

A method drives training toward each target's constraint set and plugs into any loop::

    loss = criterion(model(x), y) + pruner.penalty()
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    pruner.after_step()          # once per optimizer step
    ...
    pruner.end_epoch()           # once per epoch
    frozen = pruner.freeze()     # exact projection: the requested rates are met exactly

The base class keeps the parts that are the same for all of them: the checked target list,
the step/epoch counters, the ``history`` of updates, the hardening (always through
:func:`prunekit.targets.freeze`, so there is one definition of "hard prune"), the masks that
are live (enforced after every step) and the state a resumed run needs. A method never
creates an optimizer: it only adds a penalty to the user's loss and edits weights in place,
so the user's optimizer, loss and loop stay in charge.

After :meth:`PruningMethod.freeze` a method is finished: its penalty is zero and
``after_step`` keeps the hardened masks enforced, so the same object can stay plugged in
during masked retraining.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import validate
from ..constraints import Frozen, MaskEnforcer, from_state
from ..errors import ConfigError, TargetError
from ..targets import GroupTarget, Target, freeze

UNITS = ("epoch", "step")


# ------------------------------------------------------------------ options
@dataclass
class MethodOptions:
    """A method's options: one dataclass per method holds their defaults and checks their
    values in ``__post_init__``, so the Python API (``ADMM(model, targets, rho=0.01)``) and a
    recipe (whose plan builds the options when the file is read, before any model exists)
    check them once, in one place. What only the resolved targets can tell (a layer named
    in a per-layer value, a scheme the method cannot take) is :meth:`check_targets`, which
    the method's constructor and the pipeline's plan check both run, without building a
    method. Every error carries the option as its key, so a recipe reports its line.

    Dataclasses and not pydantic: prunekit's core depends on torch, numpy and PyYAML only,
    and the checks are a few lines each with :mod:`prunekit.validate`'s primitives."""

    @classmethod
    def build(cls, given: Mapping[str, Any], *, where: str, noun: str = "option"
              ) -> MethodOptions:
        """The options from a mapping; an unknown name is an error with its nearest
        spelling (``where``: what the options belong to, for the message)."""
        validate.known_keys(given, [f.name for f in fields(cls)], where=where, noun=noun)
        return cls(**given)

    def check_targets(self, targets: Sequence[Target | GroupTarget]) -> None:
        """Checks that need the resolved targets (none by default)."""

    def _check(self, check: Callable[..., Any], name: str, **how: Any) -> None:
        """Check the field ``name`` with a :mod:`prunekit.validate` function and keep what
        it returns (numbers as floats)."""
        setattr(self, name, check(getattr(self, name), name, subject=name, **how))


def per_layer(value: Any, what: str, bounds: str = "> 0", key: str | None = None
              ) -> float | dict[str, float]:
    """A number, or ``{layer: number}``, each inside ``bounds`` (floats); errors name
    ``what`` and carry ``key`` (default: ``what``)."""
    key = key or what
    if not isinstance(value, Mapping):
        return validate.number(value, key, bounds=bounds, subject=what)
    out = {}
    for layer, number in value.items():
        validate.kind(layer, str, "a layer name", key, subject=f"a key of {what}")
        out[layer] = validate.number(number, key, bounds=bounds, subject=f"{what}[{layer!r}]")
    return out


def per_target(value: Any, targets: Sequence[Target | GroupTarget], what: str,
               key: str | None = None) -> list[Any]:
    """One value per target from a single value or ``{layer: value}`` (values checked by
    :func:`per_layer`).

    A layer is named by its parameter name (``"fc1.weight"``) or its module name (``"fc1"``);
    a ``"default"`` entry covers the layers not named. An unknown name is an error, because
    a typo would otherwise silently leave a layer at the default.
    """
    if not isinstance(value, Mapping):
        return [value] * len(targets)
    known = {t.name for t in targets} | {t.module_name for t in targets}
    unknown = sorted(str(k) for k in value if k != "default" and k not in known)
    if unknown:
        validate.fail(f"{what} names unknown layers {unknown}; the targets are "
                      f"{sorted(t.name for t in targets)}", key)
    out = []
    for t in targets:
        name = t.name if t.name in value else t.module_name if t.module_name in value else \
            "default"
        if name not in value:
            validate.fail(f"{what} has no value for layer {t.name!r} and no 'default' entry",
                          key)
        out.append(value[name])
    return out


def check_targets(model: nn.Module, targets: Iterable[Target | GroupTarget]
                  ) -> list[Target | GroupTarget]:
    """The targets as a list, each a parameter of ``model`` (a coupled group: each of its
    members), no parameter twice; coupled groups may share parameters with each other (a
    layer's rows in one group, its columns in another), never with a plain target."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(targets, (Target, GroupTarget)):
        targets = [targets]
    try:
        found = list(targets)
    except TypeError:
        raise ConfigError(
            f"targets must be a list of prunekit Target, got {type(targets).__name__}"
        ) from None
    if not found:
        raise ConfigError("targets is empty: nothing to prune (check the target rules)")
    params = dict(model.named_parameters())
    seen: set[str] = set()
    in_groups: dict[str, str] = {}
    for t in found:
        if not isinstance(t, (Target, GroupTarget)):
            raise ConfigError(f"targets must be prunekit Target objects, got {type(t).__name__}")
        for name, param in t.members:
            if params.get(name) is not param:
                raise TargetError(f"target {t.name!r} is not a parameter of this model"
                                  if isinstance(t, Target) else
                                  f"{name} of coupled group {t.name!r} is not a parameter of "
                                  f"this model")
            if param.is_meta:  # a method starts from the weights' values
                raise TargetError(f"target {name!r} is on the meta device, which holds shapes "
                                  f"but no values; build or load real weights first")
        if t.name in seen:
            raise TargetError(f"target {t.name!r} is listed twice")
        seen.add(t.name)
        if isinstance(t, GroupTarget):
            in_groups.update({n: t.name for n in t.names})
    for t in found:
        if isinstance(t, Target) and t.name in in_groups:
            raise TargetError(f"target {t.name!r} is also a member of the coupled group "
                              f"{in_groups[t.name]!r}; a weight takes one rule")
    return found


def at_rate(target: Target, sparsity: float | None) -> Target:
    """The same target at another rate (progressive and gradual schedules)."""
    return replace(target, sparsity=sparsity)


def explicit_rate(target: Target, method: str) -> float:
    """The target's requested rate; schedules need a number, not a scheme's natural rate."""
    if target.sparsity is None:
        raise ConfigError(
            f"{method} needs an explicit sparsity for target {target.name!r} "
            f"(scheme {target.scheme.name!r} gives none)"
        )
    return float(target.sparsity)


def existing_keep(model: nn.Module, target: Target) -> Tensor | None:
    """Where an already pruned weight may stay nonzero, or None if nothing is pruned yet.

    Hardening leaves pruned weights at exactly 0, so the weight's own zeros say what was
    pruned, and pruning an already sparse model further never revives a weight.
    """
    with torch.no_grad():
        keep = target.param.detach() != 0
    return None if bool(keep.all()) else keep


def existing_keeps(model: nn.Module, target: Target | GroupTarget) -> dict[str, Tensor]:
    """:func:`existing_keep` of every member with a zero. A coupled group reads only its
    weights (two or more dims): a bias or a BatchNorm shift is often zero from its
    initialisation, which says nothing about what was pruned."""
    if isinstance(target, Target):
        keep = existing_keep(model, target)
        return {} if keep is None else {target.name: keep}
    out = {}
    with torch.no_grad():
        for name, param in target.members:
            keep = param.detach() != 0
            if param.dim() >= 2 and not bool(keep.all()):
                out[name] = keep
    return out


def member_params(targets: Iterable[Target | GroupTarget]) -> list[Tensor]:
    """Every parameter the targets constrain, once each."""
    seen: dict[int, Tensor] = {}
    for t in targets:
        for _, p in t.members:
            seen.setdefault(id(p), p)
    return list(seen.values())


def zero_fraction(tensors: Iterable[Tensor]) -> float:
    """Fraction of exact zeros over all ``tensors`` together."""
    zeros = total = 0
    with torch.no_grad():
        for t in tensors:
            zeros += int((t == 0).sum().item())
            total += t.numel()
    return zeros / total if total else 0.0


# ------------------------------------------------------------------- the base
class PruningMethod:
    """Shared base: counters, history, live masks, hardening and state (module docstring)."""

    name = "method"
    #: the method's options (:class:`MethodOptions`: this one has none)
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, model: nn.Module, targets: Iterable[Target | GroupTarget],
                 options: MethodOptions | None = None, **given: Any) -> None:
        """``options`` built already (a recipe's plan builds them), or given by name."""
        self.model = model
        self.options = self.configure(options, given)
        self.targets: list[Target | GroupTarget] = check_targets(model, targets)
        self.options.check_targets(self.targets)
        self.epoch = 0  # completed epochs (end_epoch calls)
        self.step = 0  # completed optimizer steps (after_step calls)
        self.history: list[dict[str, Any]] = []
        self.hardened = False
        self.masks: dict[str, Tensor] | None = None  # masks enforced after every step
        #: the frozen constraints of :meth:`freeze` (None until hardened)
        self.constraints: dict[str, Any] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._enforcer: Any = None

    @classmethod
    def configure(cls, options: MethodOptions | None, given: Mapping[str, Any]
                  ) -> MethodOptions:
        """``options``, or the options ``given`` by name (not both)."""
        if options is None:
            return cls.Options.build(given, where=f"method {cls.name!r}")
        if given or not isinstance(options, cls.Options):
            raise ConfigError(f"method {cls.name!r} takes one {cls.Options.__name__} or its "
                              f"options by name")
        return options

    # ------------------------------------------------------------ the protocol
    def penalty(self) -> Tensor:
        """Term to add to the loss: 0-dim, differentiable; zero once hardened."""
        if self.hardened:
            return self._zero()
        return self._penalty()

    def after_step(self) -> None:
        """Call after every ``optimizer.step()``: live masks are enforced, then the method
        does its per-step work."""
        self.step += 1
        if self._enforcer is not None:
            self._enforcer.after_step()
        if not self.hardened:
            self._after_step()

    def end_epoch(self) -> None:
        """Call at the end of every epoch."""
        self.epoch += 1
        if not self.hardened:
            self._end_epoch()

    def freeze(self, mode: str = "snap") -> dict[str, Any]:
        """Project every target exactly onto its constraint set (in place, keeping earlier
        zeros), enforce the result from now on, and return ``{param name: Frozen}`` (see
        :mod:`prunekit.constraints`; ``mode`` is how quantized layers retrain)."""
        constraints = freeze(self.model, self.freeze_targets(), mode=mode, keep=self.masks)
        self.hardened = True
        self.set_masks(constraints)
        return constraints

    def freeze_targets(self) -> list[Target | GroupTarget]:
        """The targets (with the rates) :meth:`freeze` projects onto."""
        return self.targets

    def bind(self, optimizer: torch.optim.Optimizer) -> PruningMethod:
        """Let mask enforcement also clear the optimizer's buffers (momentum, Adam moments)
        of pruned weights, so they cannot push a pruned weight back."""
        self.optimizer = optimizer
        if self._enforcer is not None:
            self._enforcer.bind(optimizer)
        return self

    def close(self) -> None:
        """Stop enforcing the live masks and take their gradient hooks off the weights (for
        when another enforcer, e.g. masked retraining's, takes over). The weights keep
        their zeros; :attr:`masks` stays readable."""
        if self._enforcer is not None:
            self._enforcer.close()
            self._enforcer = None

    def progress(self) -> dict[str, float]:
        """Numbers for a progress bar: here the fraction of exact zeros in the targets."""
        return {"sparsity": zero_fraction(member_params(self.targets))}

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; tensors and plain values only, so it loads with
        ``torch.load(weights_only=True)``."""
        return {
            "method": self.name,
            "targets": [t.name for t in self.targets],
            "epoch": self.epoch,
            "step": self.step,
            "hardened": self.hardened,
            "history": copy.deepcopy(self.history),
            "masks": None if self.masks is None else {k: v.clone() for k, v in self.masks.items()},
            "constraints": None if self.constraints is None else
            {k: c.state_dict() for k, c in self.constraints.items()},
            **self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the method and targets must be the same."""
        if not isinstance(state, Mapping) or state.get("method") != self.name:
            got = state.get("method") if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(f"state is for method {got!r}, not {self.name!r}")
        names = [t.name for t in self.targets]
        if list(state.get("targets", [])) != names:
            raise ConfigError(
                f"state was saved for targets {list(state.get('targets', []))}, "
                f"but this {self.name} prunes {names}"
            )
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.hardened = bool(state["hardened"])
        self.history = copy.deepcopy(list(state["history"]))
        masks = state["masks"]
        if state.get("constraints") is not None:
            masks = {k: from_state(v) for k, v in state["constraints"].items()}
        elif masks is not None:
            masks = {k: self._on_device(k, v) for k, v in masks.items()}
        self.set_masks(masks)
        self._load_extra_state(state)

    # ---------------------------------------------------------------- helpers
    def set_masks(self, masks: Mapping[str, Any] | None) -> None:
        """Make ``masks`` (bool masks, or frozen constraints once hardened) live: enforced on
        the weights (and the bound optimizer's buffers) after every step. ``None`` stops
        enforcement."""
        if self._enforcer is not None:
            self._enforcer.close()  # its gradient hooks would otherwise stay on the weights
        if not masks:
            self.masks, self.constraints, self._enforcer = None, None, None
            return
        self._enforcer = MaskEnforcer(self.model, masks, self.optimizer)
        frozen = all(isinstance(v, Frozen) for v in masks.values())
        self.constraints = self._enforcer.constraints if frozen else None
        self.masks = self._enforcer.masks

    def _freeze_round(self, targets: list[Target | GroupTarget]) -> dict[str, Tensor]:
        """Hard-prune ``targets`` inside the live masks; returns the masks (rounds of
        progressive and gradual schedules, which go on pruning afterwards)."""
        return {n: c.mask for n, c in freeze(self.model, targets, keep=self.masks).items()}

    def _zero(self) -> Tensor:
        p = self.targets[0].param
        return torch.zeros((), device=p.device, dtype=p.dtype)

    def _on_device(self, name: str, tensor: Tensor) -> Tensor:
        param = dict(self.model.named_parameters()).get(name)
        return tensor if param is None else tensor.to(param.device)

    # ----------------------------------------------------------- subclass hooks
    def _penalty(self) -> Tensor:
        return self._zero()

    def _after_step(self) -> None:
        pass

    def _end_epoch(self) -> None:
        pass

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.targets)} targets)"
