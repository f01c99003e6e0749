"""ResNets: He et al.'s CIFAR ResNet-20/56 and the ImageNet-form ResNet-18.

One :class:`ResNet` class builds both families; they differ only in the stem and the stage
widths. Module and parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``) so pruning rules and pretrained state dicts carry over.

Shortcuts where the shape changes come in two options (He et al., section 4.2):

- ``"A"``: parameter-free; subsample by the stride and zero-pad the new channels. This is
  the paper's CIFAR setting and the default for ``resnet20``/``resnet56`` (ResNet-20 has
  269,722 parameters, the paper's "0.27M"; ResNet-56 853,018, "0.85M").
- ``"B"``: a 1x1 conv + BatchNorm projection. This is torchvision's ResNet-18 and its default
  here; it adds prunable weights and keeps every block's output an ordinary conv output,
  which helps tools that physically remove filters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from ._common import choice, image_shape, positive_int, small_stem

CIFAR_SHAPE = (3, 32, 32)
SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel and zero-pad the extra channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


def _shortcut(in_channels: int, out_channels: int, stride: int, option: str) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    if option == "A":
        return PadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut around them."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, stages of :class:`BasicBlock` (the first block of every stage after the first
    halves the resolution), global average pool, ``fc``.

    ``stem="small"`` is a 3x3 stride-1 conv without max pool (CIFAR); ``stem="imagenet"``
    is the 7x7 stride-2 conv and 3x3 stride-2 max pool.
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int,
        input_shape: tuple[int, int, int],
        stem: str,
        shortcut: str,
    ):
        super().__init__()
        self.input_shape = input_shape
        c = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(input_shape[0], c, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(input_shape[0], c, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c, width, stride if j == 0 else 1, shortcut))
                c = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def _cifar_resnet(
    name: str,
    depth: int,
    num_classes: int,
    in_channels: int | None,
    input_shape: Sequence[int] | None,
    shortcut: str,
) -> ResNet:
    shape = image_shape(name, in_channels, input_shape, CIFAR_SHAPE)
    n = (depth - 2) // 6
    return ResNet(
        widths=(16, 32, 64),
        blocks=(n, n, n),
        num_classes=positive_int(name, "num_classes", num_classes),
        input_shape=shape,
        stem="small",
        shortcut=choice(name, "shortcut", shortcut, SHORTCUTS),
    )


def resnet20(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
    shortcut: str = "A",
) -> ResNet:
    """He et al.'s CIFAR ResNet-20 (3 stages x 3 blocks, widths 16/32/64)."""
    return _cifar_resnet("resnet20", 20, num_classes, in_channels, input_shape, shortcut)


def resnet56(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
    shortcut: str = "A",
) -> ResNet:
    """He et al.'s CIFAR ResNet-56 (3 stages x 9 blocks, widths 16/32/64)."""
    return _cifar_resnet("resnet56", 56, num_classes, in_channels, input_shape, shortcut)


def resnet18(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
    small_input: bool | None = None,
    shortcut: str = "B",
) -> ResNet:
    """ResNet-18 in ImageNet form (widths 64..512, 2 blocks a stage).

    ``small_input`` swaps the 7x7/2 stem and max pool for one 3x3/1 conv, as CIFAR
    training needs; left as ``None`` it is on for inputs up to 64x64 (the default
    ``input_shape`` is 3x32x32) and off for larger ones.
    """
    shape = image_shape("resnet18", in_channels, input_shape, CIFAR_SHAPE)
    return ResNet(
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        num_classes=positive_int("resnet18", "num_classes", num_classes),
        input_shape=shape,
        stem="small" if small_stem("resnet18", small_input, shape) else "imagenet",
        shortcut=choice("resnet18", "shortcut", shortcut, SHORTCUTS),
    )
