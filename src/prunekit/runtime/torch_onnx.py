"""torch's ONNX exporter, wrapped once: a missing extra is one clear error, its own noise is
silenced, its failures become one line. Compiled inference runs the optimized graph in
ONNX Runtime (:mod:`.ort_graph`); the deployment export (:mod:`prunekit.artifacts.onnx_export`)
builds on the same call. The ``onnx`` extra is imported only when called."""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

MISSING_EXTRA = "ONNX export needs the onnx extra: pip install prunekit[onnx]"
#: loggers of torch's exporter: the registry warns once per torchvision op when torchvision
#: is not installed, torch.export about the guards it adds while tracing
_EXPORTER_LOGGERS = ("torch.onnx", "torch.onnx._internal.exporter._registration",
                     "torch.export", "torch._export", "torch._dynamo", "torch._guards",
                     "torch.fx.experimental.symbolic_shapes")
#: warnings torch's exporter raises about its own internals, which a user cannot act on
_EXPORTER_NOISE = (
    (r".*LeafSpec.*", FutureWarning),
    (r"The tensor attributes self\.[\w.]+\._flat_weights", UserWarning),  # nn.GRU / nn.LSTM
)


def require_onnx() -> Any:
    """The ``onnx`` module, imported only here so the core never needs it; torch's dynamo
    exporter also imports ``onnxscript``, so a missing one is the same clear error."""
    try:
        import onnx  # noqa: PLC0415
        import onnxscript  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return onnx


def optimized_graph(model: nn.Module, example_input: Tensor) -> bytes:
    """``model`` as a serialized ONNX graph for running, not for keeping: the exporter's
    optimizer on (BatchNorm folded, the shape arithmetic of the unoptimized graph folded
    away), which lets ONNX Runtime fuse convs with what follows them. No weight is
    quantized, so nothing here needs the parameters' own initializers."""
    require_onnx()
    return torch_export(model, example_input, None, optimize=True).SerializeToString()


def torch_export(model: nn.Module, example_input: Tensor | tuple[Tensor, ...],
                  opset: int | None, *, optimize: bool = False,
                  dynamic_batch: bool = False) -> Any:
    """The dynamo export as a ModelProto, unoptimized unless asked (an optimized graph
    folds what quantized weights need kept apart), in eval mode (the model's mode is
    restored afterwards). With ``dynamic_batch`` every input's first axis is one symbolic
    ``batch``; torch.export fixes an axis it sees at size 1, so an example of batch 1 is
    exported as two copies."""
    if "optimize" not in inspect.signature(torch.onnx.export).parameters:
        raise ConfigError(f"ONNX export needs a torch whose exporter takes optimize= "
                          f"(2.6 or later), this is {torch.__version__}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    options: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        args = tuple(torch.cat([a, a]) if a.shape[0] == 1 else a for a in args)
        options["dynamic_shapes"] = tuple({0: batch} for _ in args)
    was_training = model.training
    model.eval()
    try:
        with quiet_exporter():
            program = torch.onnx.export(model, args, dynamo=True, optimize=optimize,
                                        verbose=False, **options)
    except torch.onnx.OnnxExporterError as exc:
        first = _first_line(exc.__cause__ or exc)
        hint = (" (if the model's code ties it to one batch size, export a fixed batch: "
                "--static-batch, or dynamic_batch=False)" if dynamic_batch else "")
        raise ConfigError(f"torch could not export the model to ONNX: {first}{hint}") from exc
    finally:
        model.train(was_training)
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:  # torch's down-conversion may fail and keep going
        raise ConfigError(f"torch's exporter could not write opset {opset} (it wrote {got}); "
                          f"ask for {got} or leave --opset out")
    return proto


def _first_line(exc: BaseException) -> str:
    """The first line of an exporter error (and the next, when the first only announces
    it), without the colour codes torch puts in it."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence what torch's exporter says about its own internals (deprecations inside
    torch, ``nn.GRU``'s flat weights, the torchvision ops it skips when torchvision is not
    installed): nothing a user can act on. Errors still raise."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:  # torch logs a failed trace's traceback too: the error says it
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            for message, category in _EXPORTER_NOISE:
                warnings.filterwarnings("ignore", message, category)
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
