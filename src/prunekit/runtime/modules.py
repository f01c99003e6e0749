"""Drop-in modules that run a sparse weight without multiplying its zeros.

Each module computes exactly what the layer it replaces computes on the same (masked)
weights; only the order of the additions differs, so outputs agree to float rounding.

- :class:`SparseLinear`: ``y = x W^T + b`` with ``W`` gathered-dense (numba serial or
  parallel, or the torch kernel) or torch CSR (``torch.mm(W_csr, x^T)^T``: the form that
  stays fast at batch > 1; ``F.linear`` on a CSR weight takes a much slower path) or BSR;
- :class:`Im2colConv2d`: a conv as ``unfold`` (im2col) followed by a :class:`SparseLinear`
  over the GEMM view ``[out, in*kh*kw]``;
- :class:`SparseRNN`: ``nn.GRU``/``nn.LSTM`` (unidirectional, no projection) with sparse
  gate products: the input product runs once over the whole sequence, the hidden product
  once per step, which is where batch-1 streaming spends its time; with numba the whole
  time loop (products and gate arithmetic) is one compiled call per layer, otherwise it
  steps in Python.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .banded import Gathered

#: how a SparseLinear multiplies
ENGINES = ("gathered", "gathered_parallel", "gathered_torch", "csr", "bsr")


class SparseLinear(nn.Module):
    """``x @ W.T + b`` for a sparse ``W [out, in]``, by ``engine`` (see :data:`ENGINES`).
    ``block`` is the BSR block size for ``engine="bsr"``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, engine: str,
                 block: int = 16) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; engines: {ENGINES}")
        if engine.startswith("gathered_p") and not kernels.has_numba():
            engine = "gathered_torch"
        if engine == "gathered" and not kernels.has_numba():
            engine = "gathered_torch"
        w = weight.detach().float().contiguous()
        self.engine = engine
        self.out_features, self.in_features = w.shape
        self.register_buffer("bias", torch.zeros(w.shape[0]) if bias is None
                             else bias.detach().float().clone())
        if engine.startswith("gathered"):
            self.fmt = Gathered.from_dense(w)
            if engine == "gathered_torch":
                idx, vals = self.fmt.padded()
                self.register_buffer("idx", idx)
                self.register_buffer("vals", vals)
        else:
            with warnings.catch_warnings():  # torch flags its sparse layouts as beta
                warnings.simplefilter("ignore", UserWarning)
                if engine == "csr":
                    self.w_sparse = w.to_sparse_csr()
                else:
                    size = block if w.shape[0] % block == 0 and w.shape[1] % block == 0 else 1
                    self.w_sparse = w.to_sparse_bsr((size, size))

    def matmul(self, x: Tensor) -> Tensor:
        """The product on a 2-D ``x [n, in]``."""
        if self.engine in ("gathered", "gathered_parallel"):
            return kernels.numba_gathered(x, self.fmt, self.bias,
                                          parallel=self.engine == "gathered_parallel")
        if self.engine == "gathered_torch":
            return kernels.torch_gathered(x, self.idx, self.vals, self.bias, self.out_features)
        return torch.mm(self.w_sparse, x.t()).t() + self.bias

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if self.engine in ("gathered", "gathered_parallel") and x.dtype == torch.float32 \
                and not x.requires_grad:  # the numba kernel straight on x's memory
            y = kernels.numba_gathered_raw(x.reshape(-1, self.in_features).contiguous(),
                                           self.fmt, self.bias,
                                           parallel=self.engine == "gathered_parallel")
        else:
            y = self.matmul(x.reshape(-1, self.in_features).contiguous())
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, engine={self.engine}"


class Im2colConv2d(nn.Module):
    """A ``Conv2d`` (groups 1) as im2col + a sparse GEMM over its ``[out, in*kh*kw]``
    view. Padding modes other than zeros are refused by the caller."""

    def __init__(self, conv: nn.Conv2d, engine: str) -> None:
        super().__init__()
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.out_channels = conv.out_channels
        self.gemm = SparseLinear(conv.weight.reshape(conv.out_channels, -1), conv.bias, engine)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) \
            // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) \
            // self.stride[1] + 1
        y = self.gemm.matmul(cols.transpose(1, 2).reshape(n * oh * ow, -1).contiguous())
        return y.reshape(n, oh * ow, self.out_channels).transpose(1, 2).reshape(
            n, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, engine={self.gemm.engine}"


class SparseRNN(nn.Module):
    """``nn.GRU`` / ``nn.LSTM`` with every gate product a :class:`SparseLinear`."""

    def __init__(self, rnn: nn.RNNBase, engine: str) -> None:
        super().__init__()
        self.mode = rnn.mode
        self.hidden_size, self.num_layers = rnn.hidden_size, rnn.num_layers
        self.batch_first = rnn.batch_first
        self.ih = nn.ModuleList()
        self.hh = nn.ModuleList()
        for k in range(rnn.num_layers):
            bias_ih = getattr(rnn, f"bias_ih_l{k}", None) if rnn.bias else None
            bias_hh = getattr(rnn, f"bias_hh_l{k}", None) if rnn.bias else None
            self.ih.append(SparseLinear(getattr(rnn, f"weight_ih_l{k}"), bias_ih, engine))
            self.hh.append(SparseLinear(getattr(rnn, f"weight_hh_l{k}"), bias_hh, engine))

    def forward(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None):
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, steps, _ = x.shape
        lstm = self.mode == "LSTM"
        zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
        h0, c0 = (hx if hx is not None else (zeros, zeros)) if lstm else (
            hx if hx is not None else zeros, None)
        finals_h, finals_c = [], []
        for k in range(self.num_layers):
            gi = self.ih[k](x)  # [batch, steps, gates * hidden]: one product for all steps
            h = h0[k]
            c = c0[k] if lstm else None
            if self.hh[k].engine in ("gathered", "gathered_parallel"):  # the loop in numba
                h = h.detach().float().clone().contiguous()
                c = None if c is None else c.detach().float().clone().contiguous()
                x = kernels.numba_recurrent(gi, self.hh[k].fmt, self.hh[k].bias, h, c)
                finals_h.append(h)
                finals_c.append(c)
                continue
            outs = []
            for t in range(steps):
                gh = self.hh[k].matmul(h.contiguous())
                if lstm:
                    h, c = _lstm_step(gi[:, t], gh, c)
                else:
                    h = _gru_step(gi[:, t], gh, h, self.hidden_size)
                outs.append(h)
            x = torch.stack(outs, 1)
            finals_h.append(h)
            finals_c.append(c)
        out = x if self.batch_first else x.transpose(0, 1)
        h_n = torch.stack(finals_h)
        return (out, (h_n, torch.stack(finals_c))) if lstm else (out, h_n)

    def extra_repr(self) -> str:
        return (f"{self.mode}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"engine={self.ih[0].engine}")


def _gru_step(gi: Tensor, gh: Tensor, h: Tensor, hidden: int) -> Tensor:
    """torch's GRU cell (gates r, z, n)."""
    rz = torch.sigmoid(gi[:, :2 * hidden] + gh[:, :2 * hidden])
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = torch.tanh(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
    return n + z * (h - n)


def _lstm_step(gi: Tensor, gh: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """torch's LSTM cell (gates i, f, g, o)."""
    i, f, g, o = (gi + gh).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def sparsity(w: Tensor) -> float:
    return 1.0 - float(torch.count_nonzero(w)) / max(1, math.prod(w.shape))
