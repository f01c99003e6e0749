"""Stage artifacts of a run (format ``prunekit.stage/1``): what a finished stage hands on.

A stage checkpoint holds the model's weights, its frozen constraints (as their state dicts),
the training history so far and small facts (``meta``); it is a torch checkpoint of plain
tensors and values, written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constraints import Frozen, from_state
from ..errors import DataError
from ..files import load_checkpoint, save_checkpoint
from .versions import STAGE_FORMAT


def save_stage(path: Path, stage: str, model: nn.Module, constraints: Mapping[str, Frozen],
               history: list[dict[str, Any]], meta: Mapping[str, Any]) -> Path:
    return save_checkpoint({
        "format": STAGE_FORMAT, "stage": stage, "state_dict": model.state_dict(),
        "constraints": {n: c.state_dict() for n, c in constraints.items()},
        "history": list(history), "meta": dict(meta),
    }, path)


def load_stage(path: Path, stage: str, model: nn.Module
               ) -> tuple[dict[str, Frozen], list[dict[str, Any]], dict[str, Any]]:
    """Load the weights of stage ``stage``'s artifact into ``model``; returns its
    constraints, history and meta. A file of another stage or format is a DataError."""
    saved = load_checkpoint(path, verified=True)
    if not isinstance(saved, dict) or saved.get("format") != STAGE_FORMAT \
            or saved.get("stage") != stage:
        raise DataError(f"{path} is not the {stage!r} stage artifact of a prunekit run "
                        f"(expected format {STAGE_FORMAT}); remove it to redo the stage")
    try:  # everything is read and checked before the first weight is copied
        constraints = {n: from_state(c) for n, c in saved["constraints"].items()}
        history, meta = list(saved["history"]), dict(saved["meta"])
        check_fits(saved["state_dict"], model, str(path))
        model.load_state_dict(saved["state_dict"])
        return constraints, history, meta
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} does not fit this recipe's model: {exc}") from None


def check_fits(state: Any, model: nn.Module, source: str) -> None:
    """Raise a DataError unless ``state`` has exactly ``model``'s keys and shapes.
    ``load_state_dict`` copies every tensor that fits before it raises for one that does
    not, so checking first is what keeps a failed load from leaving the model half
    replaced."""
    own = model.state_dict()
    if not isinstance(state, Mapping):
        raise DataError(f"{source}: the weights are a {type(state).__name__}, not a mapping")
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and (
        not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)]
    problems = [f"{k} is {tuple(getattr(state[k], 'shape', ()))} in the file, "
                f"{tuple(own[k].shape)} in the model" for k in wrong[:3]]
    if missing:
        problems.append(f"the file lacks {', '.join(missing[:5])}")
    if extra:
        problems.append(f"the model has no {', '.join(extra[:5])}")
    if problems:
        raise DataError(f"{source} does not fit this model: {'; '.join(problems)}")
