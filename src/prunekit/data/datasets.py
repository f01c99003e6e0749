"""``load_dataset``: a data set by name, as an in-memory, normalised torch Dataset."""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset

from ..errors import ConfigError
from ..factories import is_factory_spec
from .arrays import ArrayDataset, to_dataset
from .cifar import read_cifar
from .idx import read_idx_pair
from .info import SYNTHETIC_DEFAULTS, canonical_name, check_options, dataset_info
from .locate import locate_dataset
from .synthetic import SyntheticClassification
from .user import load_user_data


def _user_split(name: str, root: Any, train: bool, download: bool,
                options: dict[str, Any]) -> Dataset:
    """One split of a user's data set (see :mod:`prunekit.data.user`)."""
    if root is not None or download:
        raise ConfigError(f"root and download do not apply to data from a function ({name}); "
                          f"pass what it needs as its options")
    data = load_user_data(name, **options)
    if data.loaders:
        raise ConfigError(f"data function {name!r} returns DataLoaders; return Datasets to "
                          f"load a split on its own")
    return data.train if train else data.test


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    **options: Any,
) -> ArrayDataset | Dataset:
    """Load one split of data set ``name`` (see :data:`prunekit.data.NAMES`, or a user's
    ``module:function``, whose ``options`` are the function's arguments).

    Files are looked up as described in :mod:`prunekit.data.locate`; ``download=True`` fetches
    them from the official source when they are missing. Options: ``coarse`` for ``cifar100``
    (20 super-classes); ``n``, ``n_test``, ``input_shape``, ``num_classes``, ``seed`` and
    ``noise`` for ``synthetic`` (``n`` sizes the training split, ``n_test`` the test split).
    """
    name = canonical_name(name)
    check_options(name, options)
    if is_factory_spec(name):
        return _user_split(name, root, train, download, options)
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
    return to_dataset(images, labels, info, directory)
