"""LeNet-5 (20-50-500, the Caffe form used by the ADMM pruning papers) and LeNet-300-100.

Layers are named ``conv1``, ``conv2``, ``fc1``, ``fc2`` (``fc3``) because the papers' per-layer
pruning tables use those names, so a recipe can copy a table row for row. Both models fix
their fully connected input size from ``input_shape`` at construction time, so the parameter
count is known (and prunable) before any data is seen.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ._common import check_input, image_shape, positive_int

MNIST_SHAPE = (1, 28, 28)


def _lenet5_feature_side(side: int) -> int:
    """Side length after conv 5x5 (valid), pool 2, conv 5x5 (valid), pool 2."""
    return ((side - 4) // 2 - 4) // 2


class LeNet5(nn.Module):
    """conv1 C->20 5x5, max pool 2, conv2 20->50 5x5, max pool 2, fc1 ->500, ReLU, fc2.

    For 1x28x28 inputs and 10 classes this has 431,080 parameters (430,500 weights).
    A ReLU follows each pooled conv; it adds no parameters.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE):
        super().__init__()
        c, h, w = input_shape
        fh, fw = _lenet5_feature_side(h), _lenet5_feature_side(w)
        if fh < 1 or fw < 1:
            raise ConfigError(
                f"lenet5: input {h}x{w} is too small for two 5x5 convs and two 2x2 pools "
                "(need at least 16x16)"
            )
        self.input_shape = (c, h, w)
        self.conv1 = nn.Conv2d(c, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * fh * fw, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        check_input("lenet5", x, self.input_shape, "pass input_shape=(C, H, W) of your data")
        x = F.relu(self.pool1(self.conv1(x)))
        x = F.relu(self.pool2(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class LeNet300(nn.Module):
    """LeNet-300-100: fc1 (C*H*W)->300, fc2 300->100, fc3 100->classes, ReLU between.
    Takes images ``[B, C, H, W]`` or flattened ``[B, C*H*W]``.

    For 1x28x28 inputs and 10 classes this has 266,610 parameters.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE):
        super().__init__()
        c, h, w = input_shape
        self.input_shape = (c, h, w)
        self.fc1 = nn.Linear(c * h * w, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # images [B, C, H, W] or already-flattened [B, C*H*W]
        expected = (self.fc1.in_features,) if x.dim() == 2 else self.input_shape
        check_input("lenet300", x, expected, "pass input_shape=(C, H, W) of your data")
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet5(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> LeNet5:
    """LeNet-5 for ``input_shape`` (default 1x28x28; ``in_channels`` alone keeps 28x28)."""
    shape = image_shape("lenet5", in_channels, input_shape, MNIST_SHAPE)
    return LeNet5(positive_int("lenet5", "num_classes", num_classes), shape)


def lenet300(
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> LeNet300:
    """LeNet-300-100 for ``input_shape`` (default 1x28x28; ``in_channels`` alone keeps 28x28)."""
    shape = image_shape("lenet300", in_channels, input_shape, MNIST_SHAPE)
    return LeNet300(positive_int("lenet300", "num_classes", num_classes), shape)
