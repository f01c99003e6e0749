"""A whole plain model run by ONNX Runtime: one more graph candidate for ``compile``.

A small model at batch 1 (LeNet-5, a filter-pruned ResNet-20) spends most of its time
between ops, not in them: TorchScript still dispatches every op through the torch
runtime (tens of microseconds each), while ONNX Runtime runs a pre-planned graph with
fused kernels and a few microseconds per op. It only sees dense layers (ONNX has no
executable sparse weights), so it is timed against the sparse kernels and the other graphs
on the user's example, never assumed: ``plan.graph_times_ms`` (and ``prunekit bench``)
show what each candidate measured, bench/results/inference.md what the chosen models ran.

Needs the ``onnx`` extra; without it (or for a model the exporter cannot write) there is
simply no such candidate. The graph is the exporter's optimized one (BatchNorm folded, its
shape arithmetic folded away), not the unoptimized graph ``prunekit export`` writes for
quantized weights: left in, that arithmetic keeps the runtime from fusing convs with what
follows them (a filter-pruned ResNet-20 at batch 1 ran about 1.9x slower in it).
The graph is exported for the example's exact shape; an input of
any other shape runs the eager model it was exported from, so the module is always correct.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


def onnxruntime_available() -> bool:
    """Whether the ``onnx`` extra is installed (torch's exporter needs onnx and onnxscript)."""
    try:
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: F401, PLC0415
        import onnxscript  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class OrtGraph(nn.Module):
    """An ONNX graph of ``plain`` run by an ONNX Runtime session with ``threads`` threads;
    inputs of another shape than ``example`` run ``plain``."""

    def __init__(self, plain: nn.Module, example: Tensor, graph: bytes, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort  # noqa: PLC0415

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its optimizer notes are not for users
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.shape = tuple(example.shape)
        self.dtype = example.dtype
        self.single_output = len(self.session.get_outputs()) == 1
        self.plain = plain

    def forward(self, x: Tensor) -> Any:
        if tuple(x.shape) != self.shape or x.dtype != self.dtype or x.device.type != "cpu":
            return self.plain(x)
        outputs = self.session.run(None, {self.input_name: x.detach().contiguous().numpy()})
        tensors = tuple(torch.from_numpy(o) for o in outputs)
        return tensors[0] if self.single_output else tensors


def ort_graphs(plain: nn.Module, example: Tensor) -> tuple[dict[str, OrtGraph], str]:
    """The ONNX Runtime candidates for ``plain`` by name, or none and why there are none:
    ``onnxruntime`` with torch's thread count and, when that is more than one,
    ``onnxruntime_1thread``: a small graph at batch 1 can lose more to waking a second
    thread per op than it gains from it."""
    if not onnxruntime_available():
        return {}, "onnxruntime not installed (pip install prunekit[onnx])"
    from .torch_onnx import optimized_graph  # noqa: PLC0415  (onnx only when asked)

    threads = torch.get_num_threads()
    names = {"onnxruntime": threads, **({"onnxruntime_1thread": 1} if threads > 1 else {})}
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            graph = optimized_graph(plain, example)
        return {name: OrtGraph(plain, example, graph, n) for name, n in names.items()}, ""
    except Exception as exc:  # an op the exporter or runtime lacks: no such candidate
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        return {}, f"{type(exc).__name__}: {first_line}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow what the exporter prints (on a model whose ``forward`` branches on its input,
    torch's exporter dumps each graph it tried, several screens of them, before it gives up:
    the plan keeps the one-line reason). Both Python's streams and the process's file
    descriptors 1 and 2 are redirected, since the exporter's logging handlers hold the
    original streams."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
