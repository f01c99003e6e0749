"""VGG-16 with BatchNorm in its CIFAR form (one 512->classes linear layer after the convs).

The 13 convs keep their ImageNet widths; the three 4096-wide ImageNet classifier layers are
replaced by one linear layer because a 32x32 input leaves a 1x1x512 map. Pools use
``ceil_mode`` so 28x28 inputs (MNIST shape) also reach 1x1 (28-14-7-4-2-1) while 32x32
inputs are pooled exactly as usual; a final adaptive average pool lets larger inputs work.
For 3x32x32 inputs and 10 classes this has 14,728,266 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._common import image_shape, positive_int

CIFAR_SHAPE = (3, 32, 32)

#: Output widths of the 13 convs; "M" is a 2x2 max pool.
# fmt: off
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
# fmt: on


def _features(in_channels: int, layout: Sequence[int | str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in layout:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` (conv-BN-ReLU stacks and pools), global average pool, ``classifier``."""

    def __init__(
        self,
        layout: Sequence[int | str],
        num_classes: int,
        input_shape: tuple[int, int, int],
    ):
        super().__init__()
        self.input_shape = input_shape
        self.features = _features(input_shape[0], layout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        widths = [v for v in layout if v != "M"]
        self.classifier = nn.Linear(int(widths[-1]), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> VGG:
    """VGG-16-BN for small images (default 3x32x32)."""
    shape = image_shape("vgg16", in_channels, input_shape, CIFAR_SHAPE)
    return VGG(VGG16_LAYOUT, positive_int("vgg16", "num_classes", num_classes), shape)
