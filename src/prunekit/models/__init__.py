"""A small model zoo for compression experiments, and a way to name a user's own model.

``get("lenet5")`` builds a zoo model; ``from_spec("mypackage.nets:build")`` builds a model
from a user's factory, which is how recipes name models outside the zoo. The compression
core never depends on the zoo: every method works on any ``nn.Module``. Zoo models carry an
``input_shape`` attribute (per sample, no batch dim) so tools can build a matching input.
"""

from __future__ import annotations

from .lenet import LeNet5, LeNet300, lenet5, lenet300
from .mobilenet import MobileNetV2, mobilenetv2
from .registry import available, build, default_input_shape, from_spec, get
from .resnet import ResNet, resnet18, resnet20, resnet56
from .rnn import RNNClassifier, gru_classifier, lstm_classifier
from .vgg import VGG, vgg16

__all__ = [
    "VGG",
    "LeNet5",
    "LeNet300",
    "MobileNetV2",
    "RNNClassifier",
    "ResNet",
    "available",
    "build",
    "default_input_shape",
    "from_spec",
    "get",
    "gru_classifier",
    "lenet5",
    "lenet300",
    "lstm_classifier",
    "mobilenetv2",
    "resnet18",
    "resnet20",
    "resnet56",
    "vgg16",
]
