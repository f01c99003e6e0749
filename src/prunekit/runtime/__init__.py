"""Compiled CPU inference: ``prunekit.compile(model, example)``.

- :mod:`.shrink`: filter/channel-pruned layers become physically smaller dense layers
  along the coupled groups of :mod:`prunekit.structure`;
- :mod:`.banded` and :mod:`.kernels`: the gathered-dense layout of block, N:M and other
  sparse weights and its kernels (numba when installed, pure torch always);
- :mod:`.modules`: drop-in sparse linear, im2col conv and GRU/LSTM modules;
- :mod:`.choose`: every choice is measured on this machine, cached per shape;
- :mod:`.compile`: the two passes and the final check against the input model;
- :mod:`.latency`: ``prunekit bench``, dense vs compiled latency of a saved model.
"""

from .compile import DEFAULT_ENGINES, Choice, CompileError, Plan, compile
from .kernels import has_numba
from .latency import bench_model
from .modules import ENGINES, Im2colConv2d, SparseLinear, SparseRNN
from .shrink import dead_units, shrink

__all__ = ["DEFAULT_ENGINES", "ENGINES", "Choice", "CompileError", "Im2colConv2d", "Plan",
           "SparseLinear", "SparseRNN", "bench_model", "compile", "dead_units",
           "has_numba", "shrink"]
