"""Quantization levels: the level sets (uniform or powers of two), and weights as signed
level codes and back. Zero is always a level, so a pruned weight stays pruned."""

from __future__ import annotations

import torch
from torch import Tensor


def max_level(bits: int) -> int:
    """``L = 2^(bits-1) - 1``: levels run from ``-L s`` to ``L s``."""
    return (1 << (bits - 1)) - 1



# ------------------------------------------------------------ level sets and scales
LEVEL_SETS = ("uniform", "pow2")
SCALES = ("layer", "channel")


def magnitudes(bits: int, level_set: str = "uniform") -> Tensor:
    """The level magnitudes in units of the step, ascending from 0 (float64).

    ``uniform``: ``0, 1, ..., L``; ``pow2``: ``0, 1, 2, 4, ..., 2^(L-1)`` (multiplications by
    a power of two are shifts). Either way ``2L + 1 = 2^bits - 1`` signed levels, so a code
    fits in ``bits`` bits, and zero is a level, so pruned weights stay pruned."""
    top = max_level(bits)
    if level_set == "uniform":
        return torch.arange(top + 1, dtype=torch.float64)
    exponents = torch.arange(top, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.pow(2.0, exponents)])


def to_codes(m: Tensor, scale: Tensor, bits: int, level_set: str = "uniform") -> Tensor:
    """Signed level index (``-L..L``, int64) of the nearest level of every entry of the 2-D
    ``m``, row ``i`` with step ``scale[i]`` (a zero step gives code 0)."""
    s = scale.to(torch.float64).reshape(-1, 1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    ratio = m.detach().to(torch.float64) / safe
    top = max_level(bits)
    if level_set == "uniform":
        q = torch.round(ratio).clamp(-top, top)
    else:
        mags = magnitudes(bits, level_set).to(ratio.device)
        mids = (mags[:-1] + mags[1:]) / 2
        q = torch.bucketize(ratio.abs(), mids, right=True).to(torch.float64) * ratio.sign()
    return torch.where(s > 0, q, torch.zeros_like(q)).to(torch.int64)


def from_codes(codes: Tensor, scale: Tensor, bits: int, level_set: str = "uniform",
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The weights of ``codes`` (float64 maths, then ``dtype``): the exact inverse of
    :func:`to_codes` on weights that are already on their levels."""
    mags = magnitudes(bits, level_set).to(codes.device)
    values = mags[codes.abs()] * codes.sign().to(torch.float64)
    return (values * scale.to(torch.float64).reshape(-1, 1).to(codes.device)).to(dtype)

