"""Hard pruning and masked retraining: once a weight is pruned it stays exactly zero.

:func:`harden` applies each target's exact projection once and returns boolean masks
(True = kept). Masked retraining then has to keep the pruned entries at zero, which a
plain ``param.mul_(mask)`` after each step does not fully achieve: momentum, Adam moments
and weight decay keep pushing on pruned entries, so a weight that is zeroed after each step
still has a nonzero update waiting in the optimizer. :class:`MaskEnforcer` closes every
path: the gradient of a pruned entry is zeroed by a hook before it reaches the optimizer,
the optimizer's per-parameter state (momentum, ``exp_avg``, ``exp_avg_sq``...) is zeroed
on pruned entries, and the weight itself is re-masked after every step.

Masks can live on the model as buffers (:func:`attach_masks`), so ``model.state_dict()``
carries them and a fresh model loads them back with :func:`load_masked_state_dict`::

    masks = harden(model, targets)
    attach_masks(model, masks)
    with MaskEnforcer(model, optimizer=optimizer) as enforcer:   # any training loop
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step(); optimizer.zero_grad()
            enforcer.after_step()
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .errors import ConfigError, DataError, TargetError
from .targets import Target

#: A mask for parameter ``weight`` is stored as buffer ``weight_mask`` on the same module.
MASK_SUFFIX = "_mask"

# Enforcers attached to each model, so remove_masks() can take their hooks off.
_ENFORCERS: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[MaskEnforcer]] = (
    weakref.WeakKeyDictionary()
)


# ------------------------------------------------------------------- helpers
def _locate(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Parameter]:
    """The module owning parameter ``name`` (as in ``model.named_parameters()``), the
    attribute name, and the parameter."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        module = None
    param = None if module is None else module._parameters.get(attr)
    if not isinstance(param, nn.Parameter):
        known = [n for n, _ in model.named_parameters()][:8]
        raise TargetError(f"the model has no parameter {name!r}; its parameters include: "
                          f"{', '.join(known)}")
    return module, attr, param


def _as_mask(mask: Any, param: Tensor, name: str) -> Tensor:
    """``mask`` as a bool tensor on ``param``'s device (nonzero = kept)."""
    if not isinstance(mask, Tensor):
        raise TargetError(f"mask of {name!r} must be a tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(param.shape):
        raise TargetError(f"mask of {name!r} has shape {tuple(mask.shape)}, but the parameter "
                          f"has shape {tuple(param.shape)}")
    mask = mask.detach()
    mask = mask if mask.dtype == torch.bool else mask != 0
    return mask.to(param.device)


def _on(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device)


# --------------------------------------------------------------------- harden
def harden(model: nn.Module, targets: Iterable[Target]) -> dict[str, Tensor]:
    """Project every target's weight in place and return ``{parameter name: bool mask}``.

    Entries that are already pruned (zero in the weight, or False in a mask attached with
    :func:`attach_masks`) are zeroed before the projection and stay pruned, so pruning a
    pruned model again at a higher rate never brings a weight back. An attached mask is
    updated to the new one. The achieved sparsity is whatever the weight now holds:
    measure it with :func:`prunekit.targets.sparsity_report`.
    """
    masks: dict[str, Tensor] = {}
    with torch.no_grad():
        for target in targets:
            if not isinstance(target, Target):
                raise ConfigError(f"harden expects Target objects (from prunekit.targets."
                                  f"resolve), got {type(target).__name__}")
            module, attr, param = _locate(model, target.name)
            if param is not target.param:
                raise TargetError(f"target {target.name!r} was resolved for another model")
            kept = param != 0
            attached = module._buffers.get(attr + MASK_SUFFIX)
            if attached is not None:
                kept &= _as_mask(attached, param, target.name)
            weight = param.detach().masked_fill(~kept, 0)
            projected = target.project(weight)
            mask = _on(target.mask(weight), param.device).bool() & kept
            param.copy_(projected.masked_fill(~mask, 0))
            if attached is not None:
                module._buffers[attr + MASK_SUFFIX] = mask.clone().to(attached.device)
            masks[target.name] = mask
    return masks


# ------------------------------------------------------------ masks as buffers
def attach_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Store each mask as buffer ``<param>_mask`` on the parameter's module (so it is part
    of ``model.state_dict()``) and zero the pruned weights. Returns the stored masks."""
    stored = {}
    with torch.no_grad():
        for name, mask in masks.items():
            module, attr, param = _locate(model, name)
            mask = _as_mask(mask, param, name).clone()
            param.masked_fill_(~mask, 0)
            module.register_buffer(attr + MASK_SUFFIX, mask, persistent=True)
            stored[name] = mask
    return stored


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """``{parameter name: mask buffer}`` of every mask attached to ``model``."""
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            mask = module._buffers.get(attr + MASK_SUFFIX)
            if param is not None and mask is not None and id(param) in names:
                found[names[id(param)]] = mask
    return found


def load_masked_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
) -> Any:
    """``model.load_state_dict(state_dict)`` for a checkpoint of a masked model.

    A fresh model has no ``*_mask`` buffers, so the masks in the checkpoint would be
    unexpected keys; the buffers are created first, then everything is loaded.
    """
    if not isinstance(state_dict, Mapping):
        raise DataError(f"expected a state dict (a mapping), got {type(state_dict).__name__}")
    params = dict(model.named_parameters())
    own = model.state_dict(keep_vars=True)
    for key, value in state_dict.items():
        base = key[: -len(MASK_SUFFIX)] if key.endswith(MASK_SUFFIX) else None
        if base in params and isinstance(value, Tensor):
            if tuple(value.shape) != tuple(params[base].shape):
                raise DataError(f"{key} has shape {tuple(value.shape)}, but {base} has shape "
                                f"{tuple(params[base].shape)}")
            if key in own:
                continue
            module, attr, param = _locate(model, base)
            module.register_buffer(
                attr + MASK_SUFFIX,
                torch.ones(value.shape, dtype=torch.bool, device=param.device),
                persistent=True,
            )
    try:
        return model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as exc:
        raise DataError(f"the state dict does not fit the model: {exc}") from None


def remove_masks(model: nn.Module) -> dict[str, Tensor]:
    """Take the masks off: close the model's enforcers (their hooks), zero the pruned weights
    one last time and delete the mask buffers, leaving plain (sparse-valued) tensors.
    Returns the removed masks."""
    for enforcer in list(_ENFORCERS.get(model, ())):
        enforcer.close()
    removed = {}
    with torch.no_grad():
        for name, mask in get_masks(model).items():
            module, attr, param = _locate(model, name)
            param.masked_fill_(~_as_mask(mask, param, name), 0)
            del module._buffers[attr + MASK_SUFFIX]
            removed[name] = mask
    return removed


# ------------------------------------------------------------------ enforcer
class _Entry:
    """One masked parameter: the pruned positions and the gradient hook zeroing them."""

    def __init__(self, name: str, param: nn.Parameter, mask: Tensor) -> None:
        self.name = name
        self.param = param
        self.pruned = ~mask
        # A frozen parameter gets no gradient (and accepts no hook); after_step still holds it.
        self.handle = param.register_hook(self._hook) if param.requires_grad else None

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def pruned_on(self, device: torch.device) -> Tensor:
        """The pruned positions on ``device`` (the model may move after attaching)."""
        self.pruned = _on(self.pruned, device)
        return self.pruned

    def _hook(self, grad: Tensor) -> Tensor:
        return grad.masked_fill(_on(self.pruned, grad.device), 0)


def _remove_handles(entries: list[_Entry]) -> None:
    for entry in entries:
        entry.remove()


class MaskEnforcer:
    """Keeps every pruned weight of ``model`` exactly zero during training.

    ``masks``: ``{parameter name: bool mask}`` (default: the masks attached to the model).
    The guarantee holds for SGD (with momentum, Nesterov, weight decay), Adam and AdamW,
    even if the optimizer has state from before pruning, because three things happen:

    1. a gradient hook zeroes the pruned entries of each gradient;
    2. the optimizer's per-parameter state tensors of the weight's shape (momentum buffer,
       Adam moments) are zeroed on pruned entries when the optimizer is bound and after
       every step;
    3. :meth:`after_step` re-zeroes the pruned weights, the final guarantee against any
       update that bypasses the gradient (a method editing ``.grad``, a custom optimizer).

    Use it as a trainer plugin (``after_step``, ``state_dict``, ``load_state_dict``) or
    call :meth:`after_step` after ``optimizer.step()`` in your own loop. ``optimizer`` can
    be given later with :meth:`bind`; :meth:`close` (or leaving a ``with`` block) removes
    the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        masks: Mapping[str, Tensor] | None = None,
        optimizer: Optimizer | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"MaskEnforcer needs a torch.nn.Module, got {type(model).__name__}")
        masks = get_masks(model) if masks is None else masks
        if not masks:
            raise ConfigError("MaskEnforcer has no masks: pass masks, or attach_masks(model, "
                              "masks) first")
        self.model = model
        self.optimizer: Optimizer | None = None
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _remove_handles, [])
        self.update(masks)
        for owner in (model, getattr(model, "module", None)):
            if isinstance(owner, nn.Module):
                _ENFORCERS.setdefault(owner, weakref.WeakSet()).add(self)
        if optimizer is not None:
            self.bind(optimizer)

    # -------------------------------------------------------------- setup
    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Enforce new masks (replacing those of the same parameters), zeroing the weights
        and the optimizer state they prune. Gradual pruning calls this as rates grow."""
        self._check_open()
        checked = {}
        for name, mask in masks.items():
            _, _, param = _locate(self.model, name)
            checked[name] = (param, _as_mask(mask, param, name))
        for name, (param, mask) in checked.items():
            old = self._entries.pop(name, None)
            if old is not None:
                old.remove()
            self._entries[name] = _Entry(name, param, mask)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _remove_handles, list(self._entries.values()))
        self.after_step()

    def bind(self, optimizer: Optimizer) -> MaskEnforcer:
        """Also keep ``optimizer``'s state clean; its existing state is zeroed now."""
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(f"bind expects a torch.optim.Optimizer, got "
                              f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self._zero_state()
        return self

    @property
    def masks(self) -> dict[str, Tensor]:
        """``{parameter name: bool mask}`` being enforced (True = kept)."""
        return {name: ~e.pruned for name, e in self._entries.items()}

    # -------------------------------------------------------- plugin hooks
    def after_step(self) -> None:
        """Zero the pruned weights and the optimizer state on them; call after each step."""
        if self._closed:
            return
        with torch.no_grad():
            for entry in self._entries.values():
                entry.param.masked_fill_(entry.pruned_on(entry.param.device), 0)
        self._zero_state()

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        masks = state.get("masks") if isinstance(state, Mapping) else None
        if not isinstance(masks, Mapping):
            raise DataError("MaskEnforcer state must hold a 'masks' dict")
        self.update(masks)

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        """Remove the gradient hooks; the enforcer does nothing afterwards."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        for owner in (self.model, getattr(self.model, "module", None)):
            if isinstance(owner, nn.Module) and owner in _ENFORCERS:
                _ENFORCERS[owner].discard(self)

    def __enter__(self) -> MaskEnforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- internals
    def _zero_state(self) -> None:
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
                        value.masked_fill_(entry.pruned_on(value.device), 0)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this MaskEnforcer is closed; create a new one")


# ------------------------------------------------------------ masked training
def masked_finetune(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None,
    train_loader: Iterable,
    test_loader: Iterable | None = None,
    config: Any = None,
    *,
    resume: bool = False,
    **trainer_kwargs: Any,
) -> list[dict[str, Any]]:
    """Retrain ``model`` with ``masks`` held fixed; returns the trainer's history.

    The masks are attached to the model (``masks=None`` uses those already attached), so
    the trainer's checkpoints carry them and the model leaves with them; call
    :func:`remove_masks` for plain tensors. ``config`` is a ``TrainConfig`` or a dict;
    ``trainer_kwargs`` go to :class:`prunekit.train.Trainer` (``plugins``,
    ``checkpoint_path``, ``loss_fn``, ``optimizer``...; ``stage`` defaults to "retrain").
    """
    from .train import TrainConfig, Trainer  # noqa: PLC0415  (only this helper needs it)

    if masks is not None:
        attach_masks(model, masks)
    enforcer = MaskEnforcer(model)
    plugins = [*trainer_kwargs.pop("plugins", ()), enforcer]
    trainer_kwargs.setdefault("stage", "retrain")
    try:
        trainer = Trainer(model, TrainConfig() if config is None else config, train_loader,
                          test_loader, plugins=plugins, **trainer_kwargs)
        enforcer.bind(trainer.optimizer)
        return trainer.fit(resume=resume)
    finally:
        enforcer.close()
