"""Kernels for ``y = x @ W.T + b`` with ``W`` in a :mod:`.row_layouts` layout and ``x`` of
1 to 8 rows: numba where it is installed, pure torch always.

Batch 1 walks each output row's nonzeros once, loading its value and column index and
the one input they meet. 2 to 8 rows use the input transposed and padded to eight
columns (``[in, 8]``), so one nonzero meets its eight inputs in one contiguous load and
one vector multiply-add. Column indices and loop bounds are unsigned: with signed ones
numba guards every index against negative wrap-around and the loops run several times
slower. The ``_parallel`` builds split the output rows into ``torch.get_num_threads()``
chunks, one per thread; a parallel launch costs tens of microseconds, so
:mod:`.choose` measures serial and parallel against each other and against dense.

What bounds them on an x86 core: one indexed load of the input per nonzero. A loop that
only performs those loads (no values, no arithmetic) takes about as long as the whole
kernel, and far longer than streaming the same index and value bytes; hardware gathers
(``vgatherdps``) were slower still on the AMD Zen 3 this was measured on
(``bench/decode.py`` records the control).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import Tensor

from . import kernels, simd
from .row_layouts import Blocks16, Packed24, RowCSR

#: most activation rows the kernels take; more go to dense (prefill)
MAX_ROWS = 8


def _decoders(numba):
    """numba helpers: the column and value of nonzero ``j`` for each value type."""
    from llvmlite import ir  # noqa: PLC0415  (ships with numba)
    from numba.core import types  # noqa: PLC0415
    from numba.extending import intrinsic  # noqa: PLC0415

    @intrinsic
    def bf16_high(typingctx, word):  # the high half of a uint32 word as a float32
        def codegen(context, builder, signature, args):
            kept = builder.and_(args[0], ir.Constant(ir.IntType(32), 0xFFFF0000))
            return builder.bitcast(kept, ir.FloatType())
        return types.float32(word), codegen

    @intrinsic
    def f16_high(typingctx, word):  # the high half of a uint32 word, a float16, as float32
        def codegen(context, builder, signature, args):
            half = builder.trunc(builder.lshr(args[0], ir.Constant(ir.IntType(32), 16)),
                                 ir.IntType(16))
            return builder.fpext(builder.bitcast(half, ir.HalfType()), ir.FloatType())
        return types.float32(word), codegen

    jit = numba.njit(inline="always", nogil=True)

    @jit
    def col_plain(cols, j):  # pragma: no cover
        return cols[j]

    @jit
    def col_packed(cols, j):  # pragma: no cover
        return cols[j] & np.uint32(0xFFFF)

    @jit
    def val_f32(cols, vals, table, r, j):  # pragma: no cover
        return vals[j]

    @jit
    def val_bf16(cols, vals, table, r, j):  # pragma: no cover
        return bf16_high(cols[j])

    @jit
    def val_f16(cols, vals, table, r, j):  # pragma: no cover
        return f16_high(cols[j])

    @jit
    def val_levels(cols, vals, table, r, j):  # pragma: no cover
        return table[r, vals[j]]

    return {"float32": (col_plain, val_f32), "bfloat16": (col_packed, val_bf16),
            "float16": (col_packed, val_f16), "levels": (col_plain, val_levels)}


def _store8_py(out, b, a0, a1, a2, a3, a4, a5, a6, a7):  # pragma: no cover
    out[0], out[1], out[2], out[3] = a0 + b, a1 + b, a2 + b, a3 + b
    out[4], out[5], out[6], out[7] = a4 + b, a5 + b, a6 + b, a7 + b


def _csr_kernels(numba, col, val, values, _store8):
    """Serial and parallel CSR kernels, batch 1 and batch 2-8, for one value type."""
    jit = numba.njit(fastmath=True, nogil=True)
    if simd.has_avx2():
        vector_rows8 = simd.make_csr_rows8(values)

        @jit
        def rows8_avx2(xt, yt, bias, row_ptr, cols, vals, table, r0, r1):  # pragma: no cover
            vector_rows8(xt, yt, bias, row_ptr, cols, vals, table, r0, r1)

    @jit
    def rows1(x, y, bias, row_ptr, cols, vals, table, r0, r1):  # pragma: no cover
        for r in range(r0, r1):
            acc = np.float32(0.0)
            for j in range(row_ptr[r], row_ptr[r + 1]):
                acc += val(cols, vals, table, r, j) * x[col(cols, j)]
            y[r] = acc + bias[r]

    @jit
    def rows8(xt, yt, bias, row_ptr, cols, vals, table, r0, r1):  # pragma: no cover
        for r in range(r0, r1):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
            for j in range(row_ptr[r], row_ptr[r + 1]):
                v = val(cols, vals, table, r, j)
                xr = xt[col(cols, j)]
                a0 += v * xr[0]
                a1 += v * xr[1]
                a2 += v * xr[2]
                a3 += v * xr[3]
                a4 += v * xr[4]
                a5 += v * xr[5]
                a6 += v * xr[6]
                a7 += v * xr[7]
            _store8(yt[r], bias[r], a0, a1, a2, a3, a4, a5, a6, a7)

    return _serial_and_parallel(numba, rows1, rows8_avx2 if simd.has_avx2() else rows8)


def _nm_kernels(numba, _store8):
    """Serial and parallel 2:4 kernels, batch 1 and batch 2-8 (slot order of
    :class:`Packed24`: lane 0 of a quad's slots holds groups 0 and 2)."""
    jit = numba.njit(fastmath=True, nogil=True)
    if simd.has_avx2():
        vector_row1 = simd.make_nm24_row1()

        @jit
        def rows1_avx2(x, y, bias, vals, meta, _c, _d, r0, r1):  # pragma: no cover
            for r in range(r0, r1):
                y[r] = vector_row1(x, vals, meta, r) + bias[r]

    @jit
    def rows1(x, y, bias, vals, meta, _c, _d, r0, r1):  # pragma: no cover
        quads = np.uint32(meta.shape[1])
        for r in range(r0, r1):
            v, m_row = vals[r], meta[r]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            for q in range(quads):
                m = np.uint32(m_row[q])
                base = q * np.uint32(16)
                k = q * np.uint32(8)
                for s in range(4):  # slots 2s, 2s+1 belong to group (0, 2, 1, 3)[s]
                    g = base + np.uint32(4 * ((s >> 1) + 2 * (s & 1)))
                    a0 += v[k + 2 * s] * x[g + ((m >> np.uint32(4 * s)) & np.uint32(3))]
                    a1 += v[k + 2 * s + 1] * x[g + ((m >> np.uint32(4 * s + 2)) & np.uint32(3))]
            y[r] = a0 + a1 + bias[r]

    @jit
    def rows8(xt, yt, bias, vals, meta, _c, _d, r0, r1):  # pragma: no cover
        quads = np.uint32(meta.shape[1])
        for r in range(r0, r1):
            v, m_row = vals[r], meta[r]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
            for q in range(quads):
                m = np.uint32(m_row[q])
                base = q * np.uint32(16)
                k = q * np.uint32(8)
                for t in range(8):
                    s = t >> 1
                    g = base + np.uint32(4 * ((s >> 1) + 2 * (s & 1)))
                    w = v[k + t]
                    xr = xt[g + ((m >> np.uint32(2 * t)) & np.uint32(3))]
                    a0 += w * xr[0]
                    a1 += w * xr[1]
                    a2 += w * xr[2]
                    a3 += w * xr[3]
                    a4 += w * xr[4]
                    a5 += w * xr[5]
                    a6 += w * xr[6]
                    a7 += w * xr[7]
            _store8(yt[r], bias[r], a0, a1, a2, a3, a4, a5, a6, a7)

    return _serial_and_parallel(numba, rows1_avx2 if simd.has_avx2() else rows1, rows8)


def _bsr_kernels(numba):
    """Serial and parallel 16x16 block kernels, batch 1 (vectorised where AVX2) and 2-8.
    Row ranges are rounded to whole block rows (each block row goes to the chunk holding
    its first row)."""
    jit = numba.njit(fastmath=True, nogil=True)
    vector = simd.make_bsr16_rows1() if simd.has_avx2() else None

    @jit
    def rows1_avx2(x, y, bias, ptr, cols, vals, _d, r0, r1):  # pragma: no cover
        vector(x, y, bias, ptr, cols, vals, (r0 + np.uint32(15)) // np.uint32(16),
               (r1 + np.uint32(15)) // np.uint32(16))

    @jit
    def rows1(x, y, bias, ptr, cols, vals, _d, r0, r1):  # pragma: no cover
        sixteen = np.uint32(16)
        for b in range((r0 + np.uint32(15)) // sixteen, (r1 + np.uint32(15)) // sixteen):
            row0 = b * np.uint32(16)
            for r in range(16):
                y[row0 + r] = bias[row0 + r]
            for k in range(ptr[b], ptr[b + 1]):
                col0 = cols[k] * np.uint32(16)
                block = vals[k]
                for c in range(16):
                    xc = x[col0 + c]
                    for r in range(16):
                        y[row0 + r] += block[c, r] * xc

    @jit
    def rows8(xt, yt, bias, ptr, cols, vals, _d, r0, r1):  # pragma: no cover
        sixteen = np.uint32(16)
        for b in range((r0 + np.uint32(15)) // sixteen, (r1 + np.uint32(15)) // sixteen):
            row0 = b * np.uint32(16)
            for r in range(16):
                for t in range(8):
                    yt[row0 + r, t] = bias[row0 + r]
            for k in range(ptr[b], ptr[b + 1]):
                col0 = cols[k] * np.uint32(16)
                block = vals[k]
                for c in range(16):
                    xr = xt[col0 + c]
                    for r in range(16):
                        w = block[c, r]
                        out = yt[row0 + r]
                        for t in range(8):
                            out[t] += w * xr[t]

    return _serial_and_parallel(numba, rows1_avx2 if vector is not None else rows1, rows8)


def _serial_and_parallel(numba, rows1, rows8):
    """``{(rows, parallel): kernel(x, y, bias, a, b, c, d, chunks)}`` over all output rows:
    serial, or split into ``chunks`` row ranges run on numba's threads."""

    def build(rows_fn, parallel):
        @numba.njit(fastmath=True, nogil=True, parallel=parallel)
        def run(x, y, bias, a, b, c, d, chunks):  # pragma: no cover
            n = np.uint32(y.shape[0])
            step = (n + np.uint32(chunks) - np.uint32(1)) // np.uint32(chunks)
            for k in numba.prange(chunks):
                start = np.uint32(k) * step
                rows_fn(x, y, bias, a, b, c, d, start, min(n, start + step))
        return run

    return {(1, False): build(rows1, False), (1, True): build(rows1, True),
            (8, False): build(rows8, False), (8, True): build(rows8, True)}


@cache
def numba_row_kernels():
    """``{layout: {(rows, parallel): kernel}}`` with layouts ``float32``, ``bfloat16``,
    ``float16``, ``levels`` (CSR) and ``2:4``; None without numba."""
    if kernels.numba_kernels() is None:  # also picks numba's threading layer
        return None
    import numba  # noqa: PLC0415

    store8 = numba.njit(inline="always", nogil=True)(_store8_py)
    found = {name: _csr_kernels(numba, col, val, name, store8)
             for name, (col, val) in _decoders(numba).items()}
    found["2:4"] = _nm_kernels(numba, store8)
    found["bsr16"] = _bsr_kernels(numba)
    return found


def prepare(layout: RowCSR | Packed24 | Blocks16, bias: Tensor, parallel: bool = False):
    """A function ``run(x [n, in]) -> y [n, out]`` (float32, ``n <= MAX_ROWS``) on the
    numba kernels, everything but the input and output prepared once: at batch 1 the
    Python around a kernel call is a good part of a small layer's time. None without
    numba."""
    runs = numba_row_kernels()
    if runs is None:
        return None
    import numba  # noqa: PLC0415

    out_rows = layout.out_features
    if isinstance(layout, Packed24):
        kernel, width = runs["2:4"], layout.in_padded
        args = (layout.vals, layout.meta, layout.meta, layout.meta)
    elif isinstance(layout, Blocks16):
        kernel, width, out_rows = runs["bsr16"], layout.in_padded, layout.out_padded
        args = (layout.block_ptr, layout.block_cols, layout.vals, layout.vals)
    else:
        kernel, width = runs[layout.values], layout.in_features
        vals = layout.cols if layout.vals is None else layout.vals
        args = (layout.row_ptr, layout.cols, vals, layout.table)
    one, eight = kernel[(1, parallel)], kernel[(8, parallel)]
    in_f, out_f = layout.in_features, layout.out_features
    bias_np = np.zeros(out_rows, dtype=np.float32)
    bias_np[:out_f] = bias.detach().float().numpy()

    def chunks() -> int:
        if not parallel:
            return 1
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
        return threads

    def run_one(x: Tensor) -> Tensor:
        """One activation row, ``x`` of any shape holding ``in`` float32 values without
        gradient: the decoding path, with as few Python steps as the call allows."""
        row = x.numpy().reshape(-1)
        if width != in_f:
            padded = np.zeros(width, dtype=np.float32)
            padded[:in_f] = row
            row = padded
        y = np.empty(out_rows, dtype=np.float32)
        one(row, y, bias_np, *args, chunks())
        if out_rows != out_f:
            y = y[:out_f]
        return torch.from_numpy(y).view(*x.shape[:-1], out_f)

    def run(x: Tensor) -> Tensor:
        n = x.shape[0]
        if n == 1:
            return run_one(x.contiguous())
        if not 1 <= n <= MAX_ROWS:
            raise ValueError(f"the row kernels take 1 to {MAX_ROWS} rows, got {n}")
        xt = np.zeros((width, MAX_ROWS), dtype=np.float32)
        xt[:in_f, :n] = x.numpy().T
        yt = np.empty((out_rows, MAX_ROWS), dtype=np.float32)
        eight(xt, yt, bias_np, *args, chunks())
        return torch.from_numpy(np.ascontiguousarray(yt[:out_f, :n].T))

    run.one = run_one
    return run


def numba_rows(x: Tensor, layout: RowCSR | Packed24 | Blocks16, bias: Tensor,
               parallel: bool = False) -> Tensor:
    """``x [n, in] @ W.T + bias`` for ``n <= MAX_ROWS`` with the numba kernels (see
    :func:`prepare`, which a layer calls once)."""
    run = prepare(layout, bias, parallel)
    if run is None:
        raise RuntimeError("numba is not installed")
    return run(x.detach().float())


def torch_rows(x: Tensor, fallback: dict[str, Tensor], bias: Tensor) -> Tensor:
    """The pure-torch kernel: ``fallback`` from :func:`torch_fallback`."""
    if "csr" in fallback:
        return torch.mm(fallback["csr"], x.t()).t() + bias
    gathered = x[:, fallback["positions"]]  # [n, out, kept]
    return (gathered * fallback["vals"]).sum(-1) + bias


def torch_fallback(layout: RowCSR | Packed24 | Blocks16) -> dict[str, Tensor]:
    """What :func:`torch_rows` multiplies by: a torch CSR weight (the layout's values
    decoded to float32), or for 2:4 the absolute positions and values of the kept
    weights."""
    import warnings  # noqa: PLC0415

    if isinstance(layout, Packed24):
        positions = layout.positions()
        keep = positions < layout.in_features
        vals = torch.from_numpy(layout.vals) * keep
        return {"positions": positions.clamp(max=layout.in_features - 1), "vals": vals}
    with warnings.catch_warnings():  # torch flags its sparse layouts as beta
        warnings.simplefilter("ignore", UserWarning)
        return {"csr": layout.to_dense().to_sparse_csr()}
