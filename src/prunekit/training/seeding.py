"""Seeding that makes every epoch reproducible on its own.

The trainer reseeds all random sources at the start of each epoch from ``(seed, epoch)``
instead of saving and restoring generator states. Epoch ``e`` then draws the same shuffling
order, dropout masks and augmentations whether the run went straight through or was resumed
from a checkpoint, and a checkpoint needs no RNG state at all.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``epoch`` of a run seeded with ``seed``.

    Hashing (rather than ``seed + epoch``) keeps runs with neighbouring seeds from sharing
    epochs: seed 1 epoch 0 and seed 0 epoch 1 draw unrelated streams.
    """
    digest = hashlib.sha256(f"prunekit:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_epoch(seed: int, epoch: int, loader: Any) -> None:
    """Reseed the global generators and ``loader``'s own ones for ``epoch``.

    A shuffling ``DataLoader`` built with ``generator=g`` draws its order (and worker seeds)
    from ``g``, not from the global generator, so ``g`` is reseeded too; so is a sampler's
    separate generator. Samplers with ``set_epoch`` (``DistributedSampler``) are told the
    epoch, which is how they change their order from one epoch to the next.
    """
    s = epoch_seed(seed, epoch)
    set_seed(s)
    samplers = _samplers(loader)
    seeded: list[torch.Generator] = []
    for owner in (loader, *samplers):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in seeded):
            g.manual_seed(s)
            seeded.append(g)
    for sampler in samplers:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _samplers(loader: Any) -> list[Any]:
    """The loader's sampler and, for a custom ``batch_sampler``, the sampler inside it."""
    found: list[Any] = []
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    for sampler in (getattr(loader, "sampler", None), inner):
        if sampler is not None and all(sampler is not s for s in found):
            found.append(sampler)
    return found
