"""The measured plan of ``compile`` on disk, so a new process reuses it without measuring.

A compiled model holds numba kernels and ONNX Runtime sessions, which do not pickle, and
measuring every candidate of every layer again costs seconds at each process start. What
those measurements decide is small: per layer and input shape, which engine won (and the
whole-model graph). That is written as JSON under the cache directory, named by a key of
everything the choice depends on: the model's class and weights, the example's structure
and shapes, the engines tried, the thread count, the CPU, and the torch and numba
versions. Another model, shape or machine gets another file; nothing is ever guessed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import DataError


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _signature(example: Any) -> Any:
    if isinstance(example, Tensor):
        return ["tensor", list(example.shape), str(example.dtype)]
    if isinstance(example, dict):
        return {k: _signature(v) for k, v in sorted(example.items())}
    if isinstance(example, (tuple, list)):
        return [_signature(v) for v in example]
    return repr(example)


def model_key(model: nn.Module, example: Any, settings: dict[str, Any]) -> str:
    """A hex digest of what a plan depends on (see the module docstring)."""
    try:
        import numba  # noqa: PLC0415

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    digest = hashlib.sha256()
    header = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
              "example": _signature(example), "settings": settings,
              "threads": torch.get_num_threads(), "cpu": _cpu(), "torch": torch.__version__,
              "numba": numba_version}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                          .numpy().tobytes())
    return digest.hexdigest()


def path_for(directory: str | Path, key: str) -> Path:
    return Path(directory) / f"plan-{key[:32]}.json"


def read(path: Path) -> dict[str, Any]:
    """A plan file's contents, or an empty plan where there is none yet."""
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the compile plan {path}: {exc}; delete it to measure "
                        f"again") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), dict):
        raise DataError(f"{path} is not a compile plan; delete it to measure again")
    return payload


def write(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plan-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
