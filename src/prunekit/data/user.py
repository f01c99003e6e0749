"""A user's own data set, named in a recipe as ``data.name: package.module:function``.

The function is called with ``data.options`` as keyword arguments and returns the training
and test sets, preferably as torch Datasets (prunekit then builds the loaders, so batching,
``limit_*``, seeding and a distributed sampler all apply), or as ready DataLoaders::

    def load(root="data/", n=None):
        ...
        return {"train": train_set, "test": test_set, "num_classes": 10}   # or (train, test)

Each example is ``(input tensor, class index)``. The input shape is read from the first
training example and the class count from, in order: a ``num_classes`` entry of the returned
mapping, the training set's ``num_classes`` attribute, ``len(dataset.classes)`` (the
torchvision convention), or the label tensor of a ``TensorDataset``/prunekit ``ArrayDataset``.
Whatever cannot be discovered is one error saying what to return.

The function is called once per process and options (its result is kept), so describing the
data before building the model and building the loaders afterwards read it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import ConfigError, DataError
from ..factories import check_kwargs, import_factory
from .info import DatasetInfo


@dataclass(frozen=True)
class UserData:
    """What a user's function returned, checked: both splits and their description.
    ``loaders`` says the splits are DataLoaders the user built (used as they are)."""

    info: DatasetInfo
    train: Dataset | DataLoader
    test: Dataset | DataLoader
    loaders: bool


_CACHE: dict[str, tuple[Any, UserData]] = {}


def load_user_data(spec: str, **options: Any) -> UserData:
    """Call the user's function ``spec`` with ``options`` and check what it returns."""
    key = repr((spec, sorted(options.items(), key=lambda kv: kv[0])))
    cached = _CACHE.get(spec)
    if cached is not None and cached[0] == key:
        return cached[1]
    function = import_factory(spec, "data function")
    check_kwargs(f"data function {spec!r}", function, options)
    try:
        result = function(**options)
    except Exception as exc:  # the user's code may fail in any way; say whose code it was
        raise DataError(f"data function {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    data = _check(spec, result)
    _CACHE.clear()  # one data set at a time: a second one would double the memory held
    _CACHE[spec] = (key, data)
    return data


def _splits(spec: str, result: Any) -> tuple[Any, Any, Mapping[str, Any]]:
    if isinstance(result, Mapping):
        missing = [k for k in ("train", "test") if k not in result]
        unknown = sorted(set(result) - {"train", "test", "num_classes", "input_shape"})
        if missing or unknown:
            raise ConfigError(
                f"data function {spec!r} returned a mapping with keys {sorted(result)}; it "
                f"needs 'train' and 'test' and may add 'num_classes' and 'input_shape'")
        return result["train"], result["test"], result
    if isinstance(result, tuple | list) and len(result) == 2:
        return result[0], result[1], {}
    raise ConfigError(
        f"data function {spec!r} returned {type(result).__name__}; return (train, test) or "
        f"{{'train': ..., 'test': ..., 'num_classes': ...}} of torch Datasets or DataLoaders")


def _check(spec: str, result: Any) -> UserData:
    train, test, extra = _splits(spec, result)
    kinds = {isinstance(s, DataLoader) for s in (train, test)}
    if len(kinds) != 1:
        raise ConfigError(f"data function {spec!r}: return two Datasets or two DataLoaders, "
                          f"not one of each")
    loaders = kinds.pop()
    for split, part in (("train", train), ("test", test)):
        dataset = part.dataset if loaders else part
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ConfigError(f"data function {spec!r}: the {split} split is a "
                              f"{type(part).__name__}, not a Dataset (anything with len and "
                              f"indexing) or a DataLoader")
        try:
            size = len(dataset)
        except TypeError:
            raise ConfigError(f"data function {spec!r}: the {split} set has no length (an "
                              f"IterableDataset cannot be sized or sharded)") from None
        if size == 0:
            raise ConfigError(f"data function {spec!r}: the {split} set is empty")
    shapes = [_input_shape(spec, split, part.dataset if loaders else part)
              for split, part in (("train", train), ("test", test))]
    shape = extra.get("input_shape") or shapes[0]
    if tuple(shape) != shapes[0] or shapes[0] != shapes[1]:
        raise ConfigError(f"data function {spec!r}: input shapes differ: train {shapes[0]}, "
                          f"test {shapes[1]}, declared {tuple(shape)}")
    classes = _num_classes(spec, train.dataset if loaders else train, extra)
    info = DatasetInfo(spec, tuple(int(d) for d in shape), classes, (), ())
    return UserData(info, train, test, loaders)


def _input_shape(spec: str, split: str, dataset: Dataset) -> tuple[int, ...]:
    try:
        example = dataset[0]
    except Exception as exc:
        raise DataError(f"data function {spec!r}: reading the first {split} example failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(example, tuple | list) or len(example) != 2 \
            or not isinstance(example[0], torch.Tensor):
        raise ConfigError(f"data function {spec!r}: a {split} example must be (input tensor, "
                          f"class index), got {type(example).__name__}")
    label = example[1]
    if not (isinstance(label, int) and not isinstance(label, bool)
            or isinstance(label, torch.Tensor) and label.numel() == 1
            and not label.is_floating_point()):
        raise ConfigError(f"data function {spec!r}: a {split} label must be a class index "
                          f"(an int), got {label!r}")
    if not example[0].is_floating_point() or example[0].dim() == 0:
        raise ConfigError(f"data function {spec!r}: {split} inputs must be float tensors with "
                          f"at least one dim, got {example[0].dtype} {tuple(example[0].shape)}")
    return tuple(example[0].shape)


def _num_classes(spec: str, dataset: Dataset, extra: Mapping[str, Any]) -> int:
    found = extra.get("num_classes", getattr(dataset, "num_classes", None))
    if found is None and getattr(dataset, "classes", None) is not None:
        found = len(dataset.classes)
    if found is None:
        labels = getattr(dataset, "targets", None)
        if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            labels = dataset.tensors[1]
        if isinstance(labels, torch.Tensor) and labels.numel():
            found = int(labels.max()) + 1
    if found is None:
        raise ConfigError(f"data function {spec!r}: cannot tell how many classes the data has; "
                          f"return {{'train': ..., 'test': ..., 'num_classes': K}}")
    if isinstance(found, bool) or not isinstance(found, int) or found < 2:
        raise ConfigError(f"data function {spec!r}: num_classes must be an integer >= 2, got "
                          f"{found!r}")
    return found
