"""MobileNetV2 (Sandler et al.) with a width multiplier and a CIFAR stride setting.

Module names follow torchvision (``features.0.0``, ``features.1.conv.0.0``, ``classifier.1``)
so pruning rules and pretrained state dicts carry over. At ``width_mult=1`` with 1000
classes and the ImageNet strides it has torchvision's 3,504,872 parameters.

For small inputs (``small_input``) the stem conv and the first 24-channel stage use stride 1
instead of 2, the usual CIFAR setting: a 32x32 image then ends as a 4x4 map instead of 1x1.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ._common import image_shape, positive_float, positive_int, small_stem

CIFAR_SHAPE = (3, 32, 32)

#: (expansion t, output channels c, repeats n, first stride s) per stage, from the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, never dropping more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` (stem, inverted residual stages, 1x1 head conv), global average pool,
    ``classifier`` (dropout, linear)."""

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        width_mult: float,
        small_input: bool,
        dropout: float,
    ):
        super().__init__()
        self.input_shape = input_shape
        c = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        stem_stride = 1 if small_input else 2
        features: list[nn.Module] = [conv_bn_relu6(input_shape[0], c, stride=stem_stride)]
        for k, (t, width, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            out = make_divisible(width * width_mult)
            first_stride = 1 if small_input and k == 1 else s
            for i in range(n):
                features.append(InvertedResidual(c, out, first_stride if i == 0 else 1, t))
                c = out
        features.append(conv_bn_relu6(c, last, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenetv2(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
    width_mult: float = 1.0,
    small_input: bool | None = None,
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 scaled by ``width_mult``; ``small_input`` (default: on for inputs up to
    64x64, and the default ``input_shape`` is 3x32x32) selects the CIFAR strides."""
    shape = image_shape("mobilenetv2", in_channels, input_shape, CIFAR_SHAPE)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"mobilenetv2: dropout must be a number in [0, 1), got {dropout!r}")
    return MobileNetV2(
        num_classes=positive_int("mobilenetv2", "num_classes", num_classes),
        input_shape=shape,
        width_mult=positive_float("mobilenetv2", "width_mult", width_mult),
        small_input=small_stem("mobilenetv2", small_input, shape),
        dropout=float(dropout),
    )
