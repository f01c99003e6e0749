"""Linear layers for decoding: a sparse kernel for a few activation rows, and a module that
picks, at every call, the implementation measured fastest for that many rows.

A generative model sees its prompt once (prefill: many rows at a time, where dense MKL is
hard to beat) and then one row per generated token (decoding: every weight streamed for
one row, where a layout that reads fewer bytes can win). :class:`RowDispatchLinear` holds
both choices and switches on the row count of each call, so one compiled model serves
``generate()`` with its KV cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import kernels, row_kernels
from .modules import SparseLinear
from .row_layouts import (
    Blocks16,
    Packed24,
    RowCSR,
    dense_bytes,
    is_two_four,
    representable,
)

#: row-kernel engines: layout and values; ``_parallel`` splits output rows over threads
ROW_ENGINES = ("csr_f32", "csr_bf16", "csr_f16", "csr_levels", "nm24", "bsr16")
_VALUES = {"csr_f32": "float32", "csr_bf16": "bfloat16", "csr_f16": "float16",
           "csr_levels": "levels"}


def row_engines_for(weight: Tensor, parallel: bool = True) -> list[str]:
    """The row engines that can hold ``weight`` exactly (16-bit values only where every
    weight is representable, levels only where rows hold few distinct values, 2:4 only
    where it is 2:4), with their parallel builds where numba can run them."""
    w = weight.detach().float()
    names = ["csr_f32"]
    if w.shape[1] <= 0xFFFF:
        names += [e for e in ("csr_bf16", "csr_f16") if representable(w, _VALUES[e])]
    if representable(w, "levels"):
        names.append("csr_levels")
    if is_two_four(w):
        names.append("nm24")
    if Blocks16.fits(w):
        names.append("bsr16")
    if parallel and kernels.has_numba() and torch.get_num_threads() > 1:
        names += [f"{e}_parallel" for e in names]
    return names


class RowSparseLinear(nn.Module):
    """``x @ W.T + b`` for 1 to :data:`row_kernels.MAX_ROWS` rows of ``x`` by a row
    engine (see :data:`ROW_ENGINES`, optionally ``_parallel``); numba when installed, the
    pure-torch kernel otherwise (or with ``use_numba=False``). More rows than that run the
    torch kernel (correct, not fast: :class:`RowDispatchLinear` keeps them off it)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, engine: str,
                 use_numba: bool | None = None) -> None:
        super().__init__()
        base = engine.removesuffix("_parallel")
        if base not in ROW_ENGINES:
            raise ValueError(f"unknown row engine {engine!r}; engines: {ROW_ENGINES}")
        w = weight.detach().float()
        self.engine, self.parallel = engine, engine.endswith("_parallel")
        self.out_features, self.in_features = w.shape
        if base == "nm24":
            self.layout = Packed24.from_dense(w)
        elif base == "bsr16":
            self.layout = Blocks16.from_dense(w)
        else:
            self.layout = RowCSR.from_dense(w, _VALUES[base])
        self.use_numba = kernels.has_numba() if use_numba is None else use_numba
        self.register_buffer("bias", torch.zeros(self.out_features) if bias is None
                             else bias.detach().float().clone())
        self._fallback: dict[str, Tensor] | None = None
        self._run = row_kernels.prepare(self.layout, self.bias, self.parallel) \
            if self.use_numba else None

    def bytes_per_row(self) -> int:
        """Bytes this layer reads per activation row (weights and indices, bias aside)."""
        return self.layout.bytes_per_row()

    def matmul(self, x: Tensor) -> Tensor:
        if self._run is not None and x.shape[0] <= row_kernels.MAX_ROWS:
            return self._run(x)
        if self._fallback is None:
            self._fallback = row_kernels.torch_fallback(self.layout)
        return row_kernels.torch_rows(x, self._fallback, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if (self._run is not None and x.numel() == self.in_features
                and x.dtype == torch.float32 and not x.requires_grad):
            return self._run.one(x)  # one row (a generated token): the short path
        y = self.matmul(x.detach().reshape(-1, self.in_features).float())
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, engine={self.engine}"


class RowDispatchLinear(nn.Module):
    """``small`` for calls of at most ``max_rows`` activation rows (decoding), ``large``
    for more (prefill); both compute the same layer."""

    def __init__(self, small: nn.Module, large: nn.Module, max_rows: int,
                 in_features: int, out_features: int) -> None:
        super().__init__()
        self.small, self.large, self.max_rows = small, large, max_rows
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        # .forward, not __call__: no hooks sit on these inner modules, and at one row the
        # call machinery is a visible share of a small layer's time
        if x.numel() <= self.max_rows * self.in_features:
            return self.small.forward(x)
        return self.large.forward(x)

    def bytes_per_row(self) -> int:
        small = getattr(self.small, "bytes_per_row", None)
        return small() if small else dense_bytes(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"rows <= {self.max_rows}: small, more: large"


def layer_bytes(module: nn.Module) -> int:
    """Bytes a linear layer's weights (values, indices, pointers) take, i.e. what it reads
    per activation row: the yardstick of batch-1 decoding."""
    if isinstance(module, (RowSparseLinear, RowDispatchLinear)):
        return module.bytes_per_row()
    if isinstance(module, SparseLinear):
        if module.engine in ("gathered", "gathered_parallel"):
            fmt = module.fmt
            return sum(t.numel() * t.element_size()
                       for t in (fmt.vals, fmt.cols, fmt.col_ptr, fmt.val_ptr))
        if module.engine == "gathered_torch":
            return sum(t.numel() * t.element_size() for t in (module.idx, module.vals))
        sparse = module.w_sparse
        parts = (sparse.values(), sparse.crow_indices(), sparse.col_indices())
        return sum(t.numel() * t.element_size() for t in parts)
    weight = getattr(module, "weight", None)
    return 0 if weight is None else weight.numel() * weight.element_size()
