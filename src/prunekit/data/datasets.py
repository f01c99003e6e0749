"""``load_dataset``: a data set by name, as an in-memory, normalised torch Dataset."""

from __future__ import annotations

import os
from typing import Any

from .arrays import ArrayDataset, to_dataset
from .cifar import read_cifar
from .idx import read_idx_pair
from .info import SYNTHETIC_DEFAULTS, canonical_name, check_options, dataset_info
from .locate import locate_dataset
from .synthetic import SyntheticClassification


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    **options: Any,
) -> ArrayDataset:
    """Load one split of data set ``name`` (see :data:`prunekit.data.NAMES`).

    Files are looked up as described in :mod:`prunekit.data.locate`; ``download=True`` fetches
    them from the official source when they are missing. Options: ``coarse`` for ``cifar100``
    (20 super-classes); ``n``, ``n_test``, ``input_shape``, ``num_classes``, ``seed`` and
    ``noise`` for ``synthetic`` (``n`` sizes the training split, ``n_test`` the test split).
    """
    name = canonical_name(name)
    check_options(name, options)
    if name == "synthetic":
        opts = {**SYNTHETIC_DEFAULTS, **options}
        return SyntheticClassification(
            n=opts["n"] if train else opts["n_test"],
            input_shape=opts["input_shape"],
            num_classes=opts["num_classes"],
            seed=opts["seed"],
            train=train,
            noise=opts["noise"],
        )
    info = dataset_info(name, **options)
    directory = locate_dataset(name, root, train=train, download=download)
    if name.startswith("cifar"):
        images, labels = read_cifar(
            directory, train, coarse=bool(options.get("coarse", False)), name=name
        )
    else:
        images, labels = read_idx_pair(directory, train)
    return to_dataset(images, labels, info)
