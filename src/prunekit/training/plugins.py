"""The hooks a pruning method (or any user object) plugs into the trainer.

A plugin is any object with some of these methods; each is optional:

- ``penalty() -> Tensor | float``: added to the task loss at every step;
- ``after_step()``: called after every ``optimizer.step()`` (masks are re-applied here);
- ``end_epoch()``: called at the end of every epoch, before evaluation;
- ``state_dict()`` / ``load_state_dict(d)``: saved in and restored from checkpoints;
- ``progress() -> dict[str, float]``: extra fields for the progress bar and the history.

Plain functions are adapted by :class:`FunctionPlugin`, so a user who wants a callback does
not have to write a class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

HISTORY_FIELDS = (
    "stage", "epoch", "lr", "loss", "task_loss", "penalty", "train_accuracy",
    "test_loss", "test_accuracy", "seconds",
)


class FunctionPlugin:
    """Wraps plain callables (each taking no arguments) as a plugin."""

    def __init__(self, on_step: Callable[[], Any] | None = None,
                 on_epoch_end: Callable[[], Any] | None = None,
                 extra_loss: Callable[[], Tensor | float] | None = None) -> None:
        for name, fn in (("on_step", on_step), ("on_epoch_end", on_epoch_end),
                         ("extra_loss", extra_loss)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be callable, got {type(fn).__name__}")
        self._on_step = on_step
        self._on_epoch_end = on_epoch_end
        self._extra_loss = extra_loss

    def penalty(self) -> Tensor | float:
        return 0.0 if self._extra_loss is None else self._extra_loss()

    def after_step(self) -> None:
        if self._on_step is not None:
            self._on_step()

    def end_epoch(self) -> None:
        if self._on_epoch_end is not None:
            self._on_epoch_end()


def _name(plugin: Any) -> str:
    return type(plugin).__name__


class PluginSet:
    """Calls every plugin's hook in the order the plugins were given."""

    def __init__(self, plugins: Iterable[Any]) -> None:
        self.plugins = list(plugins)
        self._penalties = [p.penalty for p in self.plugins if hasattr(p, "penalty")]
        self._after_step = [p.after_step for p in self.plugins if hasattr(p, "after_step")]
        self._end_epoch = [p.end_epoch for p in self.plugins if hasattr(p, "end_epoch")]

    def penalty(self) -> Tensor | float:
        total: Tensor | float = 0.0
        for fn in self._penalties:
            total = total + fn()
        return total

    def after_step(self) -> None:
        for fn in self._after_step:
            fn()

    def end_epoch(self) -> None:
        for fn in self._end_epoch:
            fn()

    def progress(self) -> dict[str, float]:
        """Every plugin's progress fields as floats; a clash with another field is an error
        (one field silently hiding another would make the history lie)."""
        fields: dict[str, float] = {}
        for plugin in self.plugins:
            if not hasattr(plugin, "progress"):
                continue
            for key, value in dict(plugin.progress()).items():
                if key in HISTORY_FIELDS or key in fields:
                    raise ConfigError(
                        f"plugin {_name(plugin)} reports progress field {key!r}, which another "
                        f"field already uses; rename it"
                    )
                fields[key] = _as_number(plugin, key, value)
        return fields

    def state_dicts(self) -> list[dict[str, Any]]:
        return [
            {"name": _name(p), "state": p.state_dict() if hasattr(p, "state_dict") else None}
            for p in self.plugins
        ]

    def load_state_dicts(self, states: list[dict[str, Any]], source: str) -> None:
        """Restore states saved by :meth:`state_dicts`; the plugins must be the same kinds in
        the same order, otherwise resuming would silently pair a state with the wrong one."""
        saved = [s["name"] for s in states]
        current = [_name(p) for p in self.plugins]
        if saved != current:
            raise DataError(
                f"checkpoint {source} was written with plugins {saved}, but this run has "
                f"{current}; resume with the same plugins in the same order"
            )
        for plugin, entry in zip(self.plugins, states, strict=True):
            if entry["state"] is not None and hasattr(plugin, "load_state_dict"):
                plugin.load_state_dict(entry["state"])


def _as_number(plugin: Any, key: str, value: Any) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(
        f"plugin {_name(plugin)} progress field {key!r} must be a number, "
        f"got {type(value).__name__}"
    )


# Exact types: a subclass (numpy.float64 is a float, defaultdict is a dict) is pickled by
# its own class, which the weights-only loader refuses.
_LEAVES = (int, float, bool, str, type(None), torch.dtype, torch.device)
_MAPPINGS = (dict, OrderedDict)
_SEQUENCES = (list, tuple, torch.Size)


def check_plain(obj: Any, where: str) -> None:
    """Raise if ``obj`` holds anything ``torch.load(weights_only=True)`` would refuse.

    Checked before saving, because the failure would otherwise only show up when a run is
    resumed, long after the object that caused it is gone.
    """
    if isinstance(obj, Tensor) or type(obj) in _LEAVES:
        return
    if type(obj) in _MAPPINGS:
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise ConfigError(f"{where} has a key of type {type(key).__name__}; checkpoints "
                                  f"hold only str or int keys")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in _SEQUENCES:
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise ConfigError(
        f"{where} is a {type(obj).__name__}; checkpoints hold only tensors, numbers, strings, "
        f"lists and dicts"
    )
