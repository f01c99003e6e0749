"""A learnable synthetic classification task for tests and smoke runs.

Each class has a random prototype; an example is its class prototype plus Gaussian noise,
rescaled to unit variance. A linear model already separates the classes, so a pruned model
that stops learning is noticed in seconds, without any data set on disk.

Everything is drawn from numpy generators keyed on ``(seed, purpose)``: the prototypes depend
on ``seed`` alone, so the training split and the test split (different samples) describe the
same task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .arrays import ArrayDataset
from .info import SYNTHETIC_DEFAULTS, DatasetInfo, parse_shape, positive_int

_PROTOTYPES, _TRAIN, _TEST = 0, 1, 2


def _prototypes(shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """One prototype per class. For sequences ``(T, F)`` the prototype is the same feature
    vector at every step, so a recurrent model can accumulate evidence over time."""
    rng = np.random.default_rng([seed, _PROTOTYPES])
    if len(shape) == 2:
        per_step = rng.standard_normal((num_classes, 1, shape[1]))
        return np.broadcast_to(per_step, (num_classes, *shape)).copy()
    return rng.standard_normal((num_classes, *shape))


class SyntheticClassification(ArrayDataset):
    """``n`` examples of shape ``input_shape`` in ``num_classes`` balanced classes.

    Deterministic in ``seed``; ``train`` picks which of two disjoint sample streams of the
    same task is drawn, and ``noise`` is the noise standard deviation relative to the
    prototypes (larger is harder).
    """

    def __init__(
        self,
        n: int = SYNTHETIC_DEFAULTS["n"],
        input_shape: Sequence[int] = SYNTHETIC_DEFAULTS["input_shape"],
        num_classes: int = SYNTHETIC_DEFAULTS["num_classes"],
        seed: int = SYNTHETIC_DEFAULTS["seed"],
        *,
        train: bool = True,
        noise: float = SYNTHETIC_DEFAULTS["noise"],
    ):
        n = positive_int(n, "synthetic n")
        shape = parse_shape(input_shape)
        num_classes = positive_int(num_classes, "num_classes")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
            raise ConfigError(f"noise must be a non-negative number, got {noise!r}")

        protos = _prototypes(shape, num_classes, seed)
        rng = np.random.default_rng([seed, _TRAIN if train else _TEST])
        labels = rng.permutation(np.arange(n) % num_classes)
        samples = protos[labels] + noise * rng.standard_normal((n, *shape))
        samples /= math.sqrt(1.0 + noise**2)
        channels = shape[0] if len(shape) == 3 else 1
        info = DatasetInfo("synthetic", shape, num_classes, (0.0,) * channels, (1.0,) * channels)
        super().__init__(
            torch.from_numpy(samples.astype(np.float32)), torch.from_numpy(labels), info
        )
        self.seed = seed
        self.train = train
