"""Data sets for training and evaluating compressed models.

MNIST, Fashion-MNIST, KMNIST (IDX files), CIFAR-10/100 (python pickles) and a learnable
synthetic task, each returned as an in-memory, normalised torch Dataset::

    train_loader, test_loader = prunekit.data.get_loaders("fashion_mnist", batch_size=128)
    info = prunekit.data.dataset_info("fashion_mnist")   # input_shape, num_classes, mean, std

Files are looked up in ``root``, ``$PRUNEKIT_DATA``, ``~/.cache/prunekit`` and system
locations (see :mod:`prunekit.data.locate`); ``download=True`` fetches missing files.
"""

from .arrays import ArrayDataset
from .augment import random_crop_flip
from .cifar import read_cifar
from .datasets import load_dataset
from .idx import read_idx
from .info import NAMES, DatasetInfo, canonical_name, dataset_info, is_synthetic
from .loaders import get_loaders
from .locate import download_dataset, locate_dataset
from .synthetic import SyntheticClassification

__all__ = [
    "NAMES",
    "ArrayDataset",
    "DatasetInfo",
    "SyntheticClassification",
    "canonical_name",
    "dataset_info",
    "download_dataset",
    "get_loaders",
    "is_synthetic",
    "load_dataset",
    "locate_dataset",
    "random_crop_flip",
    "read_cifar",
    "read_idx",
]
