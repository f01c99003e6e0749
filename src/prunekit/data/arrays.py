"""A whole data set held as two tensors.

The data sets prunekit trains on fit in memory, so they are decoded and normalised once into
a float tensor ``[N, ...]`` and an int64 label tensor ``[N]``: no per-example decoding or PIL
transforms, which would dominate the time of a small model on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .info import DatasetInfo


class ArrayDataset(Dataset):
    """``inputs[i], targets[i]`` pairs with the data set's :class:`DatasetInfo` attached, and
    the directory its files were read from (``source``; None for data made in memory)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, info: DatasetInfo,
                 source: Path | None = None):
        if inputs.shape[0] != targets.shape[0]:
            raise DataError(f"{info.name}: {inputs.shape[0]} inputs but {targets.shape[0]} labels")
        if targets.dtype != torch.int64 or targets.ndim != 1:
            raise DataError(f"{info.name}: labels must be int64 [N], got {targets.dtype}")
        self.inputs = inputs
        self.targets = targets
        self.info = info
        self.source = source

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def head(self, k: int) -> ArrayDataset:
        """The first ``k`` examples (all of them when ``k`` exceeds the size); shares memory."""
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ConfigError(f"limit must be a positive integer, got {k!r}")
        return ArrayDataset(self.inputs[:k], self.targets[:k], self.info, self.source)

    def __repr__(self) -> str:
        shape = tuple(self.inputs.shape[1:])
        return f"{type(self).__name__}({self.info.name}, n={len(self)}, input_shape={shape})"


def normalize_uint8(images: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` (or ``[N, H, W]`` for one channel) -> float32, scaled to [0, 1]
    and standardised per channel with the data set's mean and std."""
    if images.ndim == 3:
        images = images[:, None]
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    channels = x.shape[1]
    if channels != len(info.mean):
        raise DataError(f"{info.name}: expected {len(info.mean)} channel(s), found {channels}")
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return x.sub_(mean).div_(std)


def to_dataset(images: np.ndarray, labels: np.ndarray, info: DatasetInfo,
               source: Path | None = None) -> ArrayDataset:
    """Check raw arrays against ``info`` and wrap them as a normalised :class:`ArrayDataset`
    (read from the directory ``source``)."""
    shape = images.shape[1:] if images.ndim == 4 else (1, *images.shape[1:])
    if tuple(shape) != info.input_shape:
        raise DataError(
            f"{info.name}: images have shape {tuple(shape)}, expected {info.input_shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataError(
            f"{info.name}: labels fall outside [0, {info.num_classes}) "
            f"(found {labels.min()}..{labels.max()})"
        )
    targets = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
    return ArrayDataset(normalize_uint8(images, info), targets, info, source)
