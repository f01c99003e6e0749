"""Model names to constructors: ``get(name, **kwargs)`` and ``from_spec(spec)``.

A recipe names its model either by a zoo name (``"lenet5"``) or by a user's own factory
(``"mypackage.nets:build"``), so both paths check options up front and turn every mistake
(unknown name, unknown option, missing module) into a :class:`ConfigError` that says what
to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..factories import check_kwargs as _check_kwargs
from ..factories import import_factory
from .lenet import MNIST_SHAPE, lenet5, lenet300
from .mobilenet import mobilenetv2
from .resnet import CIFAR_SHAPE, resnet18, resnet20, resnet56
from .rnn import SEQUENCE_SHAPE, gru_classifier, lstm_classifier
from .vgg import vgg16


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its constructor and the per-sample input shape it is built for by
    default (``(C, H, W)`` for images, ``(T, F)`` for sequences)."""

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]

    @property
    def is_sequence(self) -> bool:
        return len(self.input_shape) == 2


_ZOO: dict[str, ZooEntry] = {
    "lenet5": ZooEntry(lenet5, MNIST_SHAPE),
    "lenet300": ZooEntry(lenet300, MNIST_SHAPE),
    "vgg16": ZooEntry(vgg16, CIFAR_SHAPE),
    "resnet20": ZooEntry(resnet20, CIFAR_SHAPE),
    "resnet56": ZooEntry(resnet56, CIFAR_SHAPE),
    "resnet18": ZooEntry(resnet18, CIFAR_SHAPE),
    "mobilenetv2": ZooEntry(mobilenetv2, CIFAR_SHAPE),
    "gru_classifier": ZooEntry(gru_classifier, SEQUENCE_SHAPE),
    "lstm_classifier": ZooEntry(lstm_classifier, SEQUENCE_SHAPE),
}


def available() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(_ZOO)


def _entry(name: object) -> ZooEntry:
    if not isinstance(name, str) or name not in _ZOO:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _ZOO[name]


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` with constructor options ``kwargs``.

    Every image model takes ``num_classes``, ``in_channels`` and ``input_shape=(C, H, W)``;
    the sequence models take ``input_size``, ``hidden_size``, ``num_layers``,
    ``bidirectional`` and ``num_classes``.
    """
    entry = _entry(name)
    _check_kwargs(f"model {name!r}", entry.factory, kwargs)
    return entry.factory(**kwargs)


def default_input_shape(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Per-sample input shape (no batch dim) of ``get(name, **kwargs)``.

    Images give ``(C, H, W)``, sequences ``(T, F)`` (any T works; this is the example
    length). Options that change the shape (``input_shape``, ``in_channels``,
    ``input_size``) are taken into account, so callers can build a matching dummy input.
    """
    entry = _entry(name)
    _check_kwargs(f"model {name!r}", entry.factory, kwargs)
    if kwargs.get("input_shape") is not None:
        return tuple(kwargs["input_shape"])
    shape = list(entry.input_shape)
    if entry.is_sequence and kwargs.get("input_size") is not None:
        shape[1] = kwargs["input_size"]
    if not entry.is_sequence and kwargs.get("in_channels") is not None:
        shape[0] = kwargs["in_channels"]
    return tuple(shape)


def from_spec(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a ``"package.module:function"`` factory spec.

    The factory is imported with :mod:`importlib`, called with ``kwargs`` and must return
    an ``nn.Module``.
    """
    if not isinstance(spec, str):
        raise ConfigError(
            f"model spec must be a zoo name or 'package.module:function', got {spec!r}"
        )
    if ":" not in spec:
        return get(spec, **kwargs)
    factory = import_factory(spec, "model spec")
    _check_kwargs(f"model factory {spec!r}", factory, kwargs)
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code may fail in any way; say whose code it was
        raise ConfigError(f"model factory {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build(spec: Mapping[str, Any]) -> nn.Module:
    """The model a run or a model file describes: ``{"name", "kwargs", "input_shape",
    "num_classes"}``. Zoo models learn the data's shape and classes from the spec; a
    ``module:function`` factory gets its own ``kwargs`` only."""
    kwargs = dict(spec.get("kwargs") or {})
    if ":" not in spec["name"]:
        if spec.get("num_classes") is not None:
            kwargs.setdefault("num_classes", spec["num_classes"])
        if spec.get("input_shape") is not None:
            kwargs.setdefault("input_shape", tuple(spec["input_shape"]))
    return from_spec(spec["name"], **kwargs)
