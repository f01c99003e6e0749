"""Shared pieces of the constraint, quantization and model-file tests: a tiny conv+linear
model on a small learnable problem, one target rule per scheme, a training loop, and
checks that a weight is inside its frozen constraint computed without the constraint's
own ``contains()``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.constraints import Frozen, Levels, Support, Unified
from prunekit.schemes.base import gemm_view
from prunekit.schemes.levels import magnitudes, max_level
from prunekit.targets import resolve


class TinyNet(nn.Module):
    """conv (3x3) -> [BatchNorm] -> relu -> pool -> linear, on 1x8x8 images, 4 classes."""

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def tiny_net(seed: int = 0, batchnorm: bool = False) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(batchnorm)


def blob_data(n: int = 192, seed: int = 0) -> tuple[Tensor, Tensor]:
    """8x8 images, class = the quadrant holding a bright 3x3 blob, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        dr, dc = torch.randint(0, 2, (2,), generator=g).tolist()
        x[i, 0, 4 * r + dr:4 * r + dr + 3, 4 * c + dc:4 * c + dc + 3] += 1.5
    return x, labels


def batches(x: Tensor, y: Tensor, size: int = 32, seed: int = 0) -> Iterator[tuple]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(y), size):
        idx = order[i:i + size]
        yield x[idx], y[idx]


#: one rule per scheme for both layers of TinyNet (pattern: the conv only)
SCHEMES: dict[str, dict[str, Any]] = {
    "irregular": {"sparsity": 0.7},
    "filter": {"sparsity": 0.5},
    "channel": {"sparsity": 0.5},
    "column": {"sparsity": 0.5},
    "block": {"block": [2, 4], "sparsity": 0.5},
    "pattern": {"layers": "conv"},
    "nm": {"n": 2, "m": 4},
    "unify": {"block": [1, 4], "unified": 0.4, "sparsity": 0.3},
    "quant": {"bits": 4},
    "quant-pow2": {"scheme": "quant", "bits": 4, "levels": "pow2"},
    "quant-channel": {"scheme": "quant", "bits": 3, "scale": "channel"},
    "quant-pow2-channel": {"scheme": "quant", "bits": 4, "levels": "pow2", "scale": "channel"},
    "irregular+quant": {"bits": 4, "sparsity": 0.7},
    "block+quant": {"block": [2, 4], "bits": 5, "sparsity": 0.5},
    "pattern+quant": {"layers": "conv", "bits": 4},
}
QUANT_SCHEMES = [name for name in SCHEMES if "quant" in name]


def rule(case: str, layers: Any = ("conv", "fc")) -> dict[str, Any]:
    options = dict(SCHEMES[case])
    return {"layers": list(layers) if isinstance(layers, tuple) else layers,
            "scheme": options.pop("scheme", case), **options}


def targets_for(model: nn.Module, case: str, layers: Any = ("conv", "fc")):
    return resolve(model, [rule(case, layers)])


def params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                epochs: int = 1, after_step: Callable[[], Any] | None = None,
                end_epoch: Callable[[], Any] | None = None, seed: int = 0) -> list[float]:
    """Cross-entropy training; returns the mean loss of every epoch."""
    losses = []
    for epoch in range(epochs):
        total = count = 0
        for xb, yb in batches(x, y, seed=seed + epoch):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total, count = total + loss.item(), count + 1
        if end_epoch is not None:
            end_epoch()
        losses.append(total / count)
    return losses


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=5e-4),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=3e-3, amsgrad=True),
    "adamw-wd": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01),
}


# ---------------------------------------------------------------- set membership
def level_values(constraint: Levels) -> Tensor:
    """``[rows, L + 1]`` float32 magnitudes every row may take (zero first)."""
    mags = magnitudes(constraint.bits, constraint.level_set)
    return (constraint.scale.double().cpu()[:, None] * mags[None, :]).float()


def assert_on_levels(w: Tensor, constraint: Levels) -> None:
    """Zeros outside the mask; per GEMM row at most ``2^(bits-1)`` distinct magnitudes
    (zero included), each one a level of the row's frozen step."""
    w = w.detach().cpu()
    assert not w[~constraint.mask.cpu()].any(), "a pruned weight is nonzero"
    levels = level_values(constraint)
    for r, row in enumerate(gemm_view(w)):
        mags = row.abs().unique()
        assert mags.numel() <= max_level(constraint.bits) + 1 == 2 ** (constraint.bits - 1)
        assert torch.isin(mags, levels[r]).all(), (r, mags, levels[r])


def assert_unified(w: Tensor, constraint: Unified) -> None:
    """Every unified block: one magnitude, the frozen signs; pruned blocks zero."""
    w = w.detach().cpu().double()
    ids = constraint.block_ids(constraint.shape).reshape(-1)
    flat, negative = w.reshape(-1), constraint.negative.cpu().reshape(-1)
    state = constraint.states.long()[ids]
    assert not flat[state == Unified.PRUNE].any(), "a pruned block is nonzero"
    n = constraint.states.numel()
    mags = flat.abs()
    low = torch.full((n,), torch.inf, dtype=w.dtype).scatter_reduce(0, ids, mags, "amin")
    high = torch.zeros(n, dtype=w.dtype).scatter_reduce(0, ids, mags, "amax")
    unified = constraint.states.long() == Unified.UNIFY
    assert torch.equal(low[unified], high[unified]), "a unified block has two magnitudes"
    signed = (state == Unified.UNIFY) & (flat != 0)
    assert torch.equal(flat[signed] < 0, negative[signed]), "a unified sign changed"


def assert_inside(w: Tensor, constraint: Frozen) -> None:
    """``w`` is exactly inside ``constraint`` (own checks, then ``contains()``)."""
    if isinstance(constraint, Levels):
        assert_on_levels(w, constraint)
    elif isinstance(constraint, Unified):
        assert_unified(w, constraint)
    else:
        assert isinstance(constraint, Support)
        assert not w.detach().cpu()[~constraint.mask.cpu()].any(), "a pruned weight is nonzero"
    assert constraint.contains(w)


def roundtrip(obj: Any) -> Any:
    """``obj`` through torch.save / torch.load(weights_only=True), as a checkpoint holds it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def masks_of(frozen: dict[str, Any]) -> dict[str, Tensor]:
    """``{param name: bool mask}`` (True = kept) of frozen constraints."""
    return {name: constraint.mask for name, constraint in frozen.items()}
