"""Constrained retraining: every frozen constraint holds after every optimizer step.

Re-imposing a constraint on the weight after each step is not enough by itself: momentum,
Adam moments and weight decay keep pushing on pruned entries, so a weight zeroed after each
step still has an update waiting in the optimizer. :class:`MaskEnforcer` closes every path:

1. a gradient hook zeroes the gradient wherever the constraint allows no training
   (:meth:`Frozen.grad_keep`: pruned entries, and fixed weights of progressive quantization);
2. the optimizer's per-parameter state (momentum, ``exp_avg``, ``exp_avg_sq``...) is zeroed
   on those entries when the optimizer is bound and after every step;
3. :meth:`MaskEnforcer.after_step` re-imposes each constraint (:meth:`Frozen.apply_`: zeros,
   levels, unified blocks), the final guarantee against any update that bypasses the
   gradient.

Use it in any loop::

    constraints = freeze(model, targets)
    with MaskEnforcer(model, constraints, optimizer) as enforcer:
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step(); optimizer.zero_grad()
            enforcer.after_step()
        enforcer.finish()          # straight-through / progressive layers end on their levels

or as a trainer plugin (``after_step``, ``state_dict``, ``load_state_dict``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..errors import ConfigError, DataError, TargetError
from .frozen import Frozen, Support, from_state


def locate(model: nn.Module, name: str) -> nn.Parameter:
    """Parameter ``name`` of ``model`` (as in ``model.named_parameters()``)."""
    param = dict(model.named_parameters()).get(name)
    if param is None:
        known = [n for n, _ in model.named_parameters()][:8]
        raise TargetError(f"the model has no parameter {name!r}; its parameters include: "
                          f"{', '.join(known)}")
    return param


def as_constraint(value: Any, param: Tensor, name: str) -> Frozen:
    """A frozen constraint from a :class:`Frozen` or a boolean mask (nonzero = kept)."""
    if isinstance(value, Tensor):
        value = Support(value.detach() != 0 if value.dtype != torch.bool else value)
    if not isinstance(value, Frozen):
        raise TargetError(f"constraint of {name!r} must be a frozen constraint or a mask tensor, "
                          f"got {type(value).__name__}")
    if value.shape != tuple(param.shape):
        raise TargetError(f"constraint of {name!r} has shape {value.shape}, but the parameter "
                          f"has shape {tuple(param.shape)}")
    return value.to(param.device)


class _Entry:
    """One constrained parameter and the gradient hook that keeps its frozen entries still."""

    def __init__(self, param: nn.Parameter, constraint: Frozen) -> None:
        self.param = param
        self.constraint = constraint
        # A frozen parameter gets no gradient (and accepts no hook); after_step still holds it.
        self.handle = param.register_hook(self._hook) if param.requires_grad else None

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def still(self, device: torch.device) -> Tensor:
        """Entries that must not train, on ``device``."""
        keep = self.constraint.grad_keep()
        return ~(keep if keep.device == device else keep.to(device))

    def _hook(self, grad: Tensor) -> Tensor:
        return grad.masked_fill(self.still(grad.device), 0)


def _remove_handles(entries: list[_Entry]) -> None:
    for entry in entries:
        entry.remove()


class MaskEnforcer:
    """Keeps every constrained weight of ``model`` inside its frozen constraint.

    ``constraints``: ``{parameter name: Frozen or bool mask}``. The guarantee holds for SGD
    (momentum, Nesterov, weight decay), Adam and AdamW, even with optimizer state from before
    hardening (see the module docstring). ``optimizer`` can be given later with
    :meth:`bind`; :meth:`close` (or leaving a ``with`` block) removes the hooks.
    """

    def __init__(self, model: nn.Module, constraints: Mapping[str, Any],
                 optimizer: Optimizer | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"MaskEnforcer needs a torch.nn.Module, got {type(model).__name__}")
        if not constraints:
            raise ConfigError("MaskEnforcer has no constraints: pass the result of freeze()")
        self.model = model
        self.optimizer: Optimizer | None = None
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _remove_handles, [])
        self.update(constraints)
        if optimizer is not None:
            self.bind(optimizer)

    # -------------------------------------------------------------- setup
    def update(self, constraints: Mapping[str, Any]) -> None:
        """Enforce new constraints (replacing those of the same parameters) now."""
        self._check_open()
        checked = {}
        for name, value in constraints.items():
            param = locate(self.model, name)
            checked[name] = (param, as_constraint(value, param, name))
        for name, (param, constraint) in checked.items():
            old = self._entries.pop(name, None)
            if old is not None:
                old.remove()
            self._entries[name] = _Entry(param, constraint)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _remove_handles, list(self._entries.values()))
        self.after_step()

    def bind(self, optimizer: Optimizer) -> MaskEnforcer:
        """Also keep ``optimizer``'s state clean; its existing state is cleaned now."""
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(f"bind expects a torch.optim.Optimizer, got "
                              f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self._clean_state()
        return self

    @property
    def constraints(self) -> dict[str, Frozen]:
        """``{parameter name: frozen constraint}`` being enforced."""
        return {name: e.constraint for name, e in self._entries.items()}

    @property
    def masks(self) -> dict[str, Tensor]:
        """``{parameter name: bool mask}`` (True = may be nonzero)."""
        return {name: e.constraint.mask for name, e in self._entries.items()}

    # -------------------------------------------------------- plugin hooks
    def after_step(self) -> None:
        """Re-impose every constraint and clean the optimizer state; call after each step."""
        if self._closed:
            return
        with torch.no_grad():
            for entry in self._entries.values():
                entry.constraint.apply_(entry.param.data)
        self._clean_state()

    def finish(self) -> None:
        """End retraining: every weight exactly inside its set (levels fixed, shadows
        dropped)."""
        with torch.no_grad():
            for entry in self._entries.values():
                entry.constraint.finish_(entry.param.data)
        self._clean_state()

    def state_dict(self) -> dict[str, Any]:
        return {"constraints": {name: c.state_dict() for name, c in self.constraints.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("constraints") if isinstance(state, Mapping) else None
        if not isinstance(saved, Mapping):
            raise DataError("MaskEnforcer state must hold a 'constraints' dict")
        self.update({name: from_state(s) for name, s in saved.items()})

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        """Remove the gradient hooks; the enforcer does nothing afterwards."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def __enter__(self) -> MaskEnforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- internals
    def _clean_state(self) -> None:
        if self.optimizer is None:
            return
        state = self.optimizer.state
        with torch.no_grad():
            for entry in self._entries.values():
                slots = state.get(entry.param)
                if not slots:
                    continue
                for value in slots.values():
                    if isinstance(value, Tensor) and value.shape == entry.param.shape:
                        value.masked_fill_(entry.still(value.device), 0)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this MaskEnforcer is closed; create a new one")
