"""Gathered-dense GEMM kernels: ``y = x @ W.T + b`` for ``W`` in the :class:`Gathered`
layout, compiled by numba when it is installed (``pip install prunekit[compile]``), with
a pure-torch kernel that always works.

Thread pools. torch runs its ops on its own OpenMP pool (the libgomp it bundles). numba's
``omp`` threading layer would load a second OpenMP runtime into the process; on a
2-core machine the two pools' spinning workers stall each other for milliseconds. So,
unless the user chose a layer with ``NUMBA_THREADING_LAYER``, the kernels use numba's
``workqueue`` layer, whose workers sleep instead of spinning, and run on as many threads
as ``torch.get_num_threads()`` (set per call, so ``torch.set_num_threads`` governs both).
``bench/inference.py`` measures the result at 1 and 2 threads.

The numba kernel gathers each band's input columns into a small contiguous buffer for
four input rows at a time, then computes every row of the band as dot products with four
accumulators (one per input row), so each weight value is loaded once per four rows. The
last input rows (all of them at batch 1) take four weight rows per pass instead: four
independent sums keep more weight loads in flight (a 4096x4096 layer at 50-75% zeros
took about 20% less time at batch 1 than with one row per pass). It
comes serial and parallel over bands: a parallel launch costs tens of microseconds, more
than a whole small layer, so :mod:`.choose` measures both.
"""

from __future__ import annotations

import os
from functools import cache

import torch
from torch import Tensor

from .banded import Gathered


def _make_kernel(numba, np, parallel: bool):
    """The gathered kernel, serial or over bands in parallel. Loop bounds are uint32: with
    signed bounds numba guards every index against negative wrap-around and the inner dot
    products do not vectorise (about 10x slower). Not cached on disk: numba's cache keys a
    function by its name and file, so the serial and parallel builds of this one function
    would overwrite each other (compiling both takes a few seconds per process)."""

    @numba.njit(parallel=parallel, fastmath=True, nogil=True)
    def gathered_mm(x, y, bias, rows, col_ptr, cols, val_ptr, vals, scratch):  # pragma: no cover
        n_rows, out_features = x.shape[0], y.shape[1]
        bands = col_ptr.shape[0] - 1
        for b in numba.prange(bands):
            buf = scratch[numba.get_thread_id()]
            c0 = col_ptr[b]
            k = np.uint32(col_ptr[b + 1] - c0)
            r0 = b * rows
            height = min(rows, out_features - r0)
            v0 = val_ptr[b]
            idx = cols[c0:c0 + k]
            b0, b1, b2, b3 = buf[0], buf[1], buf[2], buf[3]
            full = n_rows - n_rows % 4
            for n0 in range(0, full, 4):
                for t in range(4):
                    xr, bt = x[n0 + t], buf[t]
                    for j in range(k):
                        bt[j] = xr[idx[j]]
                for r in range(height):
                    w = vals[v0 + r * k:v0 + (r + 1) * k]
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    for j in range(k):
                        wj = w[j]
                        a0 += wj * b0[j]
                        a1 += wj * b1[j]
                        a2 += wj * b2[j]
                        a3 += wj * b3[j]
                    bias_r = bias[r0 + r]
                    y[n0, r0 + r] = a0 + bias_r
                    y[n0 + 1, r0 + r] = a1 + bias_r
                    y[n0 + 2, r0 + r] = a2 + bias_r
                    y[n0 + 3, r0 + r] = a3 + bias_r
            tall = height - height % 4
            for n in range(full, n_rows):  # the last rows (all of them at batch 1)
                xr = x[n]
                for j in range(k):
                    b0[j] = xr[idx[j]]
                for r in range(0, tall, 4):  # four weight rows per pass over the buffer
                    w0 = vals[v0 + r * k:v0 + (r + 1) * k]
                    w1 = vals[v0 + (r + 1) * k:v0 + (r + 2) * k]
                    w2 = vals[v0 + (r + 2) * k:v0 + (r + 3) * k]
                    w3 = vals[v0 + (r + 3) * k:v0 + (r + 4) * k]
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    for j in range(k):
                        bj = b0[j]
                        a0 += w0[j] * bj
                        a1 += w1[j] * bj
                        a2 += w2[j] * bj
                        a3 += w3[j] * bj
                    y[n, r0 + r] = a0 + bias[r0 + r]
                    y[n, r0 + r + 1] = a1 + bias[r0 + r + 1]
                    y[n, r0 + r + 2] = a2 + bias[r0 + r + 2]
                    y[n, r0 + r + 3] = a3 + bias[r0 + r + 3]
                for r in range(tall, height):
                    w = vals[v0 + r * k:v0 + (r + 1) * k]
                    a0 = np.float32(0.0)
                    for j in range(k):
                        a0 += w[j] * b0[j]
                    y[n, r0 + r] = a0 + bias[r0 + r]
        return y

    return gathered_mm


def _make_recurrent(numba, np, mm):
    """A GRU or LSTM layer whose whole time loop runs in one numba call: per step the
    hidden product (``mm``, the serial gathered kernel) and the gate arithmetic, with no
    return to Python in between. Stepping from Python costs about ten torch calls per step
    (tens of microseconds each), which at batch 1 and 90% zeros is more than the products.
    ``gi [batch, steps, gates * hidden]`` is the input product of all steps (computed
    before, in one call); ``h`` (and ``c``) hold the initial state and end as the last."""

    @numba.njit(fastmath=True, nogil=True, inline="always")
    def gru_cell(g, a, h, out, hidden):  # pragma: no cover  (torch's gates r, z, n)
        for j in range(hidden):
            r = 1.0 / (1.0 + np.exp(-(g[j] + a[j])))
            z = 1.0 / (1.0 + np.exp(-(g[hidden + j] + a[hidden + j])))
            n = np.tanh(g[2 * hidden + j] + r * a[2 * hidden + j])
            h[j] = n + z * (h[j] - n)
            out[j] = h[j]

    @numba.njit(fastmath=True, nogil=True, inline="always")
    def lstm_cell(g, a, h, c, out, hidden):  # pragma: no cover  (gates i, f, g, o)
        for j in range(hidden):
            i = 1.0 / (1.0 + np.exp(-(g[j] + a[j])))
            f = 1.0 / (1.0 + np.exp(-(g[hidden + j] + a[hidden + j])))
            u = np.tanh(g[2 * hidden + j] + a[2 * hidden + j])
            o = 1.0 / (1.0 + np.exp(-(g[3 * hidden + j] + a[3 * hidden + j])))
            c[j] = f * c[j] + i * u
            h[j] = o * np.tanh(c[j])
            out[j] = h[j]

    @numba.njit(fastmath=True, nogil=True)
    def layer(gi, h, c, lstm, out, gh, bias, rows, col_ptr, cols, val_ptr, vals,
              scratch):  # pragma: no cover
        hidden = h.shape[1]
        for t in range(gi.shape[1]):
            mm(h, gh, bias, rows, col_ptr, cols, val_ptr, vals, scratch)
            for b in range(gi.shape[0]):
                if lstm:
                    lstm_cell(gi[b, t], gh[b], h[b], c[b], out[b, t], hidden)
                else:
                    gru_cell(gi[b, t], gh[b], h[b], out[b, t], hidden)
        return out

    return layer


@cache
def numba_kernels():
    """``{"serial": run, "parallel": run, "recurrent": run}`` (the gathered kernel serial
    and over bands, and the GRU/LSTM time loop), or None where numba is not installed."""
    try:
        import numba  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return None
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    import numpy as np  # noqa: PLC0415

    def runner(kernel, parallel: bool):
        def run(x: Tensor, fmt: Gathered, bias: Tensor) -> Tensor:
            if parallel:
                threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
                if numba.get_num_threads() != threads:
                    numba.set_num_threads(threads)
            arrays = fmt.arrays(numba.config.NUMBA_NUM_THREADS)
            y = np.empty((x.shape[0], fmt.out_features), dtype=np.float32)
            kernel(x.numpy(), y, bias.numpy(), fmt.rows, *arrays)
            return torch.from_numpy(y)
        return run

    serial = _make_kernel(numba, np, False)
    layer = _make_recurrent(numba, np, serial)

    def recurrent(gi: Tensor, fmt: Gathered, bias: Tensor, h: Tensor,
                  c: Tensor | None) -> Tensor:
        out = torch.empty(gi.shape[0], gi.shape[1], h.shape[1])
        gh = torch.empty(h.shape[0], fmt.out_features)
        args = (gh.numpy(), bias.numpy(), fmt.rows, fmt.col_ptr.numpy(), fmt.cols_u32,
                fmt.val_ptr.numpy(), fmt.vals.numpy(), fmt.scratch(numba.config.NUMBA_NUM_THREADS))
        lstm = c is not None
        layer(gi.numpy(), h.numpy(), (c if lstm else h).numpy(), lstm, out.numpy(), *args)
        return out

    return {"serial": runner(serial, False),
            "parallel": runner(_make_kernel(numba, np, True), True),
            "recurrent": recurrent}


def has_numba() -> bool:
    return numba_kernels() is not None


def torch_gathered(x: Tensor, idx: Tensor, vals: Tensor, bias: Tensor,
                   out_features: int) -> Tensor:
    """Pure-torch gathered multiply: one gather ``x[:, idx]`` ``[n, bands, k]`` and one
    batched multiply by the padded band values ``[bands, rows, k]``."""
    gathered = x[:, idx].permute(1, 2, 0)  # [bands, k, n]
    y = torch.bmm(vals, gathered)  # [bands, rows, n]
    return y.reshape(-1, x.shape[0])[:out_features].t() + bias


def numba_recurrent(gi: Tensor, fmt: Gathered, bias: Tensor, h: Tensor,
                    c: Tensor | None = None) -> Tensor:
    """One GRU (``c`` None) or LSTM layer's time loop in numba (see :func:`_make_recurrent`):
    ``gi [batch, steps, gates * hidden]`` the input products, ``fmt``/``bias`` the hidden
    weight and bias; ``h`` and ``c`` (float32, contiguous, updated in place to the final
    state). Returns the outputs ``[batch, steps, hidden]``."""
    runs = numba_kernels()
    if runs is None:
        raise RuntimeError("numba is not installed")
    return runs["recurrent"](gi.detach().float().contiguous(), fmt,
                             bias.detach().float().contiguous(), h, c)


def numba_gathered(x: Tensor, fmt: Gathered, bias: Tensor, parallel: bool = False) -> Tensor:
    """The numba kernel on ``x [n, in]`` (serial, or over bands on torch's thread count)."""
    runs = numba_kernels()
    if runs is None:
        raise RuntimeError("numba is not installed")
    run = runs["parallel" if parallel else "serial"]
    return run(x.detach().float().contiguous(), fmt, bias.detach().float().contiguous())


def numba_gathered_raw(x: Tensor, fmt: Gathered, bias: Tensor, parallel: bool = False) -> Tensor:
    """:func:`numba_gathered` for a float32, contiguous ``x`` without gradient and a
    float32 ``bias`` (no conversions: the one-row path of a compiled layer)."""
    runs = numba_kernels()
    return runs["parallel" if parallel else "serial"](x, fmt, bias)
