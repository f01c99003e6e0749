"""What each data set is: its canonical name, input shape, class count and normalisation.

Models are built from this table (input shape, number of classes) before any file is read,
so it must stay cheap: no I/O here. The one exception is a user's ``module:function`` data
set (:mod:`prunekit.data.user`), which can only be described by calling the function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..factories import is_factory_spec


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set: enough to build a model and normalise its inputs."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_IDX_NAMES = ("mnist", "fashion_mnist", "kmnist")
_CIFAR_NAMES = ("cifar10", "cifar100")

_INFOS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "kmnist": DatasetInfo("kmnist", (1, 28, 28), 10, (0.1918,), (0.3483,)),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "synthetic": DatasetInfo("synthetic", (1, 28, 28), 10, (0.0,), (1.0,)),
}

# Spellings people use, compared after lower-casing and dropping "-", "_" and spaces.
_ALIASES = {
    "mnist": "mnist",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "kmnist": "kmnist",
    "kuzushijimnist": "kmnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "synthetic": "synthetic",
}

# Options each data set accepts in load_dataset / get_loaders / dataset_info.
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n": 2048,
    "n_test": 512,
    "input_shape": (1, 28, 28),
    "num_classes": 10,
    "seed": 0,
    "noise": 1.0,
}
_OPTIONS: dict[str, frozenset[str]] = {
    "mnist": frozenset(),
    "fashion_mnist": frozenset(),
    "kmnist": frozenset(),
    "cifar10": frozenset(),
    "cifar100": frozenset({"coarse"}),
    "synthetic": frozenset(SYNTHETIC_DEFAULTS),
}

NAMES: tuple[str, ...] = tuple(_INFOS)


def canonical_name(name: str) -> str:
    """``"Fashion-MNIST"`` -> ``"fashion_mnist"``; unknown names raise a ConfigError. A user's
    ``module:function`` is its own name."""
    if not isinstance(name, str):
        raise ConfigError(f"data set name must be a string, got {name!r}")
    if is_factory_spec(name):
        return name
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in _ALIASES:
        raise ConfigError(f"unknown data set {name!r}; valid names: {', '.join(NAMES)}, or "
                          f"'module:function' for your own")
    return _ALIASES[key]


def is_idx(name: str) -> bool:
    return canonical_name(name) in _IDX_NAMES


def is_synthetic(name: str) -> bool:
    return canonical_name(name) == "synthetic"


def is_cifar(name: str) -> bool:
    return canonical_name(name) in _CIFAR_NAMES


def check_options(name: str, options: dict[str, Any]) -> None:
    """Reject options a data set does not understand, naming the ones it does."""
    name = canonical_name(name)
    if is_factory_spec(name):
        return  # a user's function takes its own arguments (checked against its signature)
    unknown = sorted(set(options) - _OPTIONS[name])
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[name])) or "none"
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for data set {name!r} (accepted: {allowed})"
        )


def parse_shape(value: Any) -> tuple[int, ...]:
    """A shape from a recipe (list or tuple of positive ints) as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        shape = tuple(value)
    except TypeError:
        shape = ()
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ConfigError(f"input_shape must be a list of positive integers, got {value!r}")
    return shape


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def dataset_info(name: str, **options: Any) -> DatasetInfo:
    """Describe data set ``name``.

    ``options`` are the same as for :func:`prunekit.data.load_dataset`; only those that change
    the description matter (``input_shape``/``num_classes`` for ``synthetic``, ``coarse`` for
    ``cifar100``), so a model built from this info fits the data that will be loaded.
    """
    name = canonical_name(name)
    if is_factory_spec(name):
        from .user import load_user_data  # noqa: PLC0415  (user.py builds on this module)

        return load_user_data(name, **options).info
    check_options(name, options)
    info = _INFOS[name]
    if name == "synthetic":
        shape = parse_shape(options.get("input_shape", SYNTHETIC_DEFAULTS["input_shape"]))
        classes = positive_int(
            options.get("num_classes", SYNTHETIC_DEFAULTS["num_classes"]), "num_classes"
        )
        if classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {classes}")
        channels = shape[0] if len(shape) == 3 else 1
        return DatasetInfo(name, shape, classes, (0.0,) * channels, (1.0,) * channels)
    if name == "cifar100" and options.get("coarse", False):
        return DatasetInfo(name, info.input_shape, 20, info.mean, info.std)
    return info
