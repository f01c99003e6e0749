"""``get_loaders``: seeded training and test DataLoaders for a data set by name."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError
from ..factories import is_factory_spec
from .arrays import ArrayDataset
from .augment import AugmentingCollate
from .datasets import load_dataset
from .info import canonical_name, positive_int
from .user import load_user_data


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _limit(dataset: Dataset, k: int | None, what: str) -> Dataset:
    if k is None:
        return dataset
    k = positive_int(k, what)
    if isinstance(dataset, ArrayDataset):
        return dataset.head(k)
    return Subset(dataset, range(min(k, len(dataset))))


def _say_source(name: str, train_set: Dataset, test_set: Dataset) -> None:
    """One line on stderr naming the directory the files were read from, so a run never
    trains on another copy than the user thinks without saying so."""
    sources = [getattr(d, "source", None) for d in (train_set, test_set)]
    if sources[0] is None and sources[1] is None:
        return
    if sources[0] == sources[1]:
        where = str(sources[0])
    else:
        where = f"{sources[0]} (training), {sources[1]} (test)"
    print(f"prunekit: data {name}: files read from {where}", file=sys.stderr)


def get_loaders(
    name: str,
    root: str | os.PathLike | None = None,
    batch_size: int = 128,
    test_batch_size: int = 1000,
    download: bool = False,
    seed: int = 0,
    augment: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    **options: Any,
) -> tuple[DataLoader, DataLoader]:
    """Training and test loaders of data set ``name``.

    The training loader shuffles with a ``torch.Generator`` seeded with ``seed``, so the same
    seed gives the same batches in the same order; re-seeding ``loader.generator`` at each
    epoch makes a resumed run repeat an epoch exactly. ``augment`` turns on random crop + flip
    for CIFAR, drawn from the same generator (batches are built in the main process: data in
    memory needs no workers). ``limit_train``/``limit_test`` keep only the first k examples.
    The directory a built-in data set's files were read from is said on stderr (one line).
    For ``synthetic``, ``seed`` also seeds the data unless ``options`` give their own ``seed``.
    Other ``options`` go to :func:`load_dataset`. A user's ``module:function`` data set
    (see :mod:`prunekit.data.user`) that returns Datasets gets loaders like any other; one
    that returns DataLoaders keeps them (their own batch sizes and order).
    """
    name = canonical_name(name)
    batch_size = positive_int(batch_size, "batch_size")
    test_batch_size = positive_int(test_batch_size, "test_batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if augment and not name.startswith("cifar"):
        raise ConfigError(f"augment is defined for cifar10/cifar100 only, not {name!r}")
    if name == "synthetic":
        options.setdefault("seed", seed)
    if is_factory_spec(name) and load_user_data(name, **options).loaders:
        if limit_train is not None or limit_test is not None:
            raise ConfigError(f"limit_train/limit_test do not apply: data function {name!r} "
                              f"returns its own DataLoaders (return Datasets instead)")
        user = load_user_data(name, **options)
        return user.train, user.test

    train_set = _limit(
        load_dataset(name, root, True, download, **options), limit_train, "limit_train"
    )
    test_set = _limit(
        load_dataset(name, root, False, download, **options), limit_test, "limit_test"
    )
    _say_source(name, train_set, test_set)

    # One generator drives both the order and the augmentation, so reseeding
    # ``loader.generator`` (as the trainer does each epoch) reproduces an epoch exactly.
    generator = _generator(seed)
    collate = None
    if augment:
        info = train_set.info
        fill = [-m / s for m, s in zip(info.mean, info.std, strict=True)]
        collate = AugmentingCollate(fill, generator)
    train_loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate
    )
    test_loader = DataLoader(test_set, batch_size=test_batch_size, shuffle=False)
    return train_loader, test_loader
