"""Snapshot and restore of (model, optimizer, pruner) for the methods' resume tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch


def snapshot(model: torch.nn.Module, optimizer: Any, pruner: Any) -> bytes:
    """The three states as a checkpoint would hold them."""
    buffer = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": optimizer.state_dict(),
                "p": pruner.state_dict()}, buffer)
    return buffer.getvalue()


def restore(data: bytes, setup: Callable[[], tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """Fresh objects from ``setup()`` (model, pruner, optimizer), loaded with ``weights_only``."""
    saved = torch.load(io.BytesIO(data), weights_only=True)
    model, pruner, optimizer = setup()
    model.load_state_dict(saved["m"])
    optimizer.load_state_dict(saved["o"])
    pruner.load_state_dict(saved["p"])
    return model, pruner, optimizer
