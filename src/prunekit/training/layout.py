"""The memory layout of conv weights while a stage trains.

oneDNN's CPU convolutions run much faster on channels-last (NHWC) tensors than on the
default NCHW ones: LeNet-5 and MobileNetV2 training steps run 1.5-1.8x faster, ResNet-20
1.1x, VGG-16 the same or 1.2x (``bench/training_layout.py``). ``memory_format: auto``
therefore trains a model that has 2-D convolutions in channels-last on the CPU, and gives the
weights back in the default layout when the stage ends: everything outside the training loop
(hardening, the model file, ONNX export, a user's own code) sees ordinary contiguous tensors.
Only the strides change, never a value's meaning: the methods' projections and masks work on
any layout. DDP keeps the default layout (its gradient buckets assume it), and so does a CUDA
device unless asked, where cuDNN chooses for itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from . import distributed

#: the values of the train option ``memory_format``
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def chosen_format(model: nn.Module, option: str, device: torch.device) -> torch.memory_format:
    """The layout a stage trains ``model`` in for the option ``memory_format``."""
    if option == "channels_last":
        return torch.channels_last
    if option == "auto" and device.type == "cpu" and not distributed.active() and any(
            isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


@contextmanager
def training_layout(model: nn.Module | None, option: str,
                    device: torch.device) -> Iterator[None]:
    """Train inside this block in the chosen layout; the default layout is back afterwards
    (also when training fails), with the same parameter objects, so optimizers and plugins
    that hold them keep working. ``None`` (no teacher, say) does nothing."""
    layout = (torch.contiguous_format if model is None
              else chosen_format(model, option, device))
    if layout is torch.contiguous_format:
        yield
        return
    model.to(memory_format=layout)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)
