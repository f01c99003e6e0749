"""A small model with every coupling a channel trace follows (residual add, BatchNorm,
depthwise conv, ``torch.cat``, flatten), for the ``group_filter`` tests; a recipe builds it
as ``group_models:build``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResNetLet(nn.Module):
    """stem conv+BN, one residual block (conv+BN, conv+BN, add), a depthwise conv+BN, a
    cat with a 1x1 branch, flatten, linear: every kind of coupling the trace follows."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(6)
        self.a = nn.Conv2d(6, 5, 3, padding=1)
        self.bna = nn.BatchNorm2d(5)
        self.b = nn.Conv2d(5, 6, 3, padding=1, bias=False)
        self.bnb = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.bnd = nn.BatchNorm2d(6)
        self.side = nn.Conv2d(6, 3, 1)
        self.fc = nn.Linear(9 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.stem(x)))
        z = F.relu(self.bna(self.a(y)))
        y = F.relu(y + self.bnb(self.b(z)))
        d = F.relu(self.bnd(self.dw(y)))
        y = torch.cat([d, self.side(y)], dim=1)
        return self.fc(F.max_pool2d(y, 2).flatten(1))


def build() -> ResNetLet:
    """The factory a recipe names (``module:build``)."""
    torch.manual_seed(0)
    return _trained_looking(ResNetLet())


def _trained_looking(model: nn.Module) -> nn.Module:
    """BatchNorm scales, shifts and statistics away from their defaults, so a removed
    channel stays dead only if its BatchNorm entries go with it."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def group_prune(model: nn.Module, x: torch.Tensor, sparsity: float,
                layers: str = "*") -> tuple[dict, int]:
    """Filter-prune ``model`` by coupled groups in place (a ``group_filter`` rule, frozen at
    once); returns the frozen constraints and how many channels the rule removes."""
    import prunekit  # noqa: PLC0415

    targets = prunekit.resolve(model, [{"layers": layers, "scheme": "group_filter",
                                        "sparsity": sparsity}], example=x)
    return prunekit.freeze(model, targets), sum(t.to_remove for t in targets)
