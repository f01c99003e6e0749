"""Knowledge distillation from the dense model: the loss a pruned student trains on.

A heavily pruned network underfits (LeNet-5 at 71x fewer weights reaches about 94% training
accuracy where the dense one reaches 97%). The dense model's softened outputs say more than
the labels about every image (which wrong classes are close), so matching them is a richer
signal for a student that cannot fit everything: the loss of Hinton et al. (2015),

    (1 - a) * cross_entropy(student, labels)
        + a * T^2 * KL(softmax(teacher / T) || softmax(student / T)),

with ``a`` the train option ``distill`` and ``T`` ``distill_temperature`` (``T^2`` keeps the
gradient's scale independent of T). The teacher only runs forward, in eval mode and without
gradients; its weights never change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def frozen_teacher(teacher: nn.Module, device: torch.device) -> nn.Module:
    """The teacher on ``device`` in eval mode (dropout off, BatchNorm on its running
    statistics); the trainer runs it under ``no_grad``, so it never gets a gradient."""
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    return teacher.to(device).eval()


def distilled_loss(hard: Tensor, student: Tensor, teacher: Tensor, weight: float,
                   temperature: float) -> Tensor:
    """Mix the task loss ``hard`` with the KL divergence of the students' softened outputs
    from the teacher's (both logits over the last dimension)."""
    if student.shape != teacher.shape:
        raise ConfigError(f"distillation needs the teacher's outputs in the student's shape: "
                          f"{tuple(teacher.shape)} vs {tuple(student.shape)}")
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=-1),
                    F.log_softmax(teacher.detach() / t, dim=-1),
                    log_target=True, reduction="batchmean") * (t * t)
    return (1.0 - weight) * hard + weight * soft
