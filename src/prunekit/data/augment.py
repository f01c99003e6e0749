"""Cheap CIFAR augmentation on whole batches: random crop with padding and horizontal flip.

Done as one gather on a batch tensor rather than per image with PIL, so it costs little next
to the forward pass. Both operations are drawn from an explicit ``torch.Generator`` so that a
seeded run sees the same augmented batches every time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate


def random_crop_flip(
    batch: torch.Tensor,
    padding: int = 4,
    fill: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` by ``padding`` pixels on each side, crop a random ``H x W`` window
    per image and mirror each image left-right with probability 1/2.

    ``fill`` gives the per-channel value of the padding (default 0). For normalised images
    pass ``-mean/std`` so the border is black, as when padding before normalisation.
    """
    b, c, h, w = batch.shape
    padded = batch.new_empty(b, c, h + 2 * padding, w + 2 * padding)
    if fill is None:
        padded.zero_()
    else:
        padded.copy_(torch.as_tensor(fill, dtype=batch.dtype).view(1, c, 1, 1).expand_as(padded))
    padded[:, :, padding : padding + h, padding : padding + w] = batch
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(h)  # [B, H]
    steps = torch.arange(w)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - steps, steps)  # [B, W]
    index = torch.arange(b)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: [B, H, W, C].
    out = padded[index, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class AugmentingCollate:
    """``collate_fn`` that stacks a batch, then applies :func:`random_crop_flip`."""

    def __init__(self, fill: Sequence[float], generator: torch.Generator, padding: int = 4):
        self.fill = tuple(fill)
        self.generator = generator
        self.padding = padding

    def __call__(self, samples: list) -> list[torch.Tensor]:
        inputs, targets = default_collate(samples)
        inputs = random_crop_flip(inputs, self.padding, self.fill, self.generator)
        return [inputs, targets]
