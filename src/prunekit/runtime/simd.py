"""Hand-vectorised inner loops of the row kernels, written as LLVM IR for numba.

numba has no vector types, and LLVM does not vectorise these loops on its own: the eight
per-row sums of a batch of eight become eight scalar multiply-adds per nonzero (about 4x
slower than one 8-wide vector multiply-add), and the 2:4 kernel's per-group position
lookups stay scalar. So the loops that matter are emitted here, as numba intrinsics:

- :func:`csr_rows8`: one output row of a CSR layout against eight activation rows stored
  transposed (``xt [in, 8]``): per nonzero, the value broadcast times one contiguous
  8-float load of the input, four accumulators deep (a multiply-add's latency is four
  cycles);
- :func:`nm24_row1`: one output row of a 2:4 layout against one activation row: per four
  groups (16 inputs, 8 kept values), the two 8-float windows of the input are permuted
  within their 128-bit lanes by the 2-bit positions (``vpermilps`` reads only the low two
  bits of each control lane, so the positions need one variable shift and no mask), one
  blend takes each lane's two groups, and one vector multiply-add takes all eight values
  (the layout stores a quad's values in that lane order).

This is AVX2 + FMA: :func:`has_avx2` says whether the host has them; without them the
row kernels keep their scalar loops.
"""

from __future__ import annotations

from functools import cache


@cache
def has_avx2() -> bool:
    try:
        from llvmlite import binding  # noqa: PLC0415  (ships with numba)
    except ImportError:
        return False
    features = binding.get_host_cpu_features()
    return bool(features.get("avx2")) and bool(features.get("fma"))


def _ir():
    from llvmlite import ir  # noqa: PLC0415

    f32, i8, i16, i32, i64 = (ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32),
                              ir.IntType(64))
    return ir, f32, i8, i16, i32, i64, ir.VectorType(f32, 8), ir.VectorType(i32, 8)


def _splat(builder, ir, value, vector_type):
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vector_type, None), value, ir.Constant(i32, 0))
    lanes = vector_type.count
    return builder.shuffle_vector(one, ir.Constant(vector_type, None),
                                  ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


def _fma(builder, acc, a, b):
    return builder.fadd(acc, builder.fmul(a, b, flags=["fast"]), flags=["fast"])


def _vector_at(builder, ir, data, offset, vector_type):
    """The vector of ``vector_type`` stored at element ``offset`` of the pointer ``data``."""
    return builder.load(builder.bitcast(builder.gep(data, [offset]), vector_type.as_pointer()),
                        align=4)


def _widen(builder, ir, value):
    i64 = ir.IntType(64)
    return builder.zext(value, i64) if value.type.width < 64 else value


def make_csr_rows8(values: str):
    """An intrinsic ``csr_rows8(xt, yt, bias, row_ptr, cols, vals, table, r0, r1)`` for
    one value type (``float32``, ``bfloat16``, ``float16``, ``levels``): rows ``r0:r1`` of
    ``yt [out, 8] = W @ xt [in, 8] + bias``."""
    from numba.core import cgutils, types  # noqa: PLC0415
    from numba.extending import intrinsic  # noqa: PLC0415

    ir, f32, _, i16, i32, i64, v8f, _ = _ir()

    @intrinsic
    def csr_rows8(typingctx, xt, yt, bias, row_ptr, cols, vals, table, r0, r1):
        sig = types.void(xt, yt, bias, row_ptr, cols, vals, table, r0, r1)

        def codegen(context, builder, signature, args):
            arrays = [context.make_array(t)(context, builder, a)
                      for t, a in zip(signature.args[:7], args[:7], strict=True)]
            x_d, y_d, b_d, p_d, c_d, v_d, t_d = (a.data for a in arrays)
            width = _widen(builder, ir, cgutils.unpack_tuple(builder, arrays[6].shape)[1])
            start_r, stop_r = _widen(builder, ir, args[7]), _widen(builder, ir, args[8])
            zero = ir.Constant(v8f, None)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
            eight = ir.Constant(i64, 8)

            def term(r, j):
                word = builder.load(builder.gep(c_d, [j]))
                if values in ("bfloat16", "float16"):
                    col = builder.and_(builder.zext(word, i64), ir.Constant(i64, 0xFFFF))
                    if values == "bfloat16":
                        val = builder.bitcast(builder.and_(word, ir.Constant(i32, 0xFFFF0000)), f32)
                    else:
                        half = builder.trunc(builder.lshr(word, ir.Constant(i32, 16)), i16)
                        val = builder.fpext(builder.bitcast(half, ir.HalfType()), f32)
                else:
                    col = builder.zext(word, i64) if word.type.width < 64 else word
                    if values == "levels":
                        code = builder.zext(builder.load(builder.gep(v_d, [j])), i64)
                        at = builder.add(builder.mul(r, width), code)
                        val = builder.load(builder.gep(t_d, [at]))
                    else:
                        val = builder.load(builder.gep(v_d, [j]))
                xv = _vector_at(builder, ir, x_d, builder.mul(col, eight), v8f)
                return _splat(builder, ir, val, v8f), xv

            with cgutils.for_range_slice(builder, start_r, stop_r, ir.Constant(i64, 1)) as (r, _):
                start = _widen(builder, ir, builder.load(builder.gep(p_d, [r])))
                next_r = builder.add(r, ir.Constant(i64, 1))
                stop = _widen(builder, ir, builder.load(builder.gep(p_d, [next_r])))
                for acc in accs:
                    builder.store(zero, acc)
                n4 = builder.and_(builder.sub(stop, start), ir.Constant(i64, ~3))
                mid = builder.add(start, n4)
                with cgutils.for_range_slice(builder, start, mid, ir.Constant(i64, 4)) as (j, _):
                    for k, acc in enumerate(accs):
                        v, xv = term(r, builder.add(j, ir.Constant(i64, k)))
                        builder.store(_fma(builder, builder.load(acc), v, xv), acc)
                with cgutils.for_range_slice(builder, mid, stop, ir.Constant(i64, 1)) as (j, _):
                    v, xv = term(r, j)
                    builder.store(_fma(builder, builder.load(accs[0]), v, xv), accs[0])
                loaded = [builder.load(a) for a in accs]
                total = builder.fadd(builder.fadd(loaded[0], loaded[1], flags=["fast"]),
                                     builder.fadd(loaded[2], loaded[3], flags=["fast"]),
                                     flags=["fast"])
                bias_r = _splat(builder, ir, builder.load(builder.gep(b_d, [r])), v8f)
                total = builder.fadd(total, bias_r, flags=["fast"])
                out = builder.bitcast(builder.gep(y_d, [builder.mul(r, eight)]), v8f.as_pointer())
                builder.store(total, out, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return csr_rows8


def make_nm24_row1():
    """An intrinsic ``nm24_row1(x, vals, meta, r) -> float32``: output row ``r`` of a
    :class:`~prunekit.runtime.row_layouts.Packed24` against ``x [in_padded]``."""
    from numba.core import cgutils, types  # noqa: PLC0415
    from numba.extending import intrinsic  # noqa: PLC0415

    ir, f32, _, i16, i32, i64, v8f, v8i = _ir()

    @intrinsic
    def nm24_row1(typingctx, x, vals, meta, r):
        sig = types.float32(x, vals, meta, r)

        def codegen(context, builder, signature, args):
            xa, va, ma = (context.make_array(t)(context, builder, a)
                          for t, a in zip(signature.args[:3], args[:3], strict=True))
            half = _widen(builder, ir, cgutils.unpack_tuple(builder, va.shape)[1])
            quads = _widen(builder, ir, cgutils.unpack_tuple(builder, ma.shape)[1])
            row = _widen(builder, ir, args[3])
            v_row = builder.gep(va.data, [builder.mul(row, half)])
            meta_row = builder.gep(ma.data, [builder.mul(row, quads)])
            permute = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v8f, [v8f, v8i]), "llvm.x86.avx.vpermilvar.ps.256")
            shifts = ir.Constant(v8i, [0, 2, 4, 6, 8, 10, 12, 14])
            blend = ir.Constant(v8i, [0, 1, 10, 11, 4, 5, 14, 15])
            zero = ir.Constant(v8f, None)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]

            def step(q, acc):
                m = builder.zext(builder.load(builder.gep(meta_row, [q])), i32)
                control = builder.lshr(_splat(builder, ir, m, v8i), shifts)
                base = builder.mul(q, ir.Constant(i64, 16))
                lo = _vector_at(builder, ir, xa.data, base, v8f)
                hi = _vector_at(builder, ir, xa.data, builder.add(base, ir.Constant(i64, 8)), v8f)
                picked = builder.shuffle_vector(builder.call(permute, [lo, control]),
                                                builder.call(permute, [hi, control]), blend)
                w = _vector_at(builder, ir, v_row, builder.mul(q, ir.Constant(i64, 8)), v8f)
                builder.store(_fma(builder, builder.load(acc), w, picked), acc)

            pairs = builder.and_(quads, ir.Constant(i64, ~1))
            first = ir.Constant(i64, 0)
            with cgutils.for_range_slice(builder, first, pairs, ir.Constant(i64, 2)) as (q, _):
                step(q, accs[0])
                step(builder.add(q, ir.Constant(i64, 1)), accs[1])
            with cgutils.for_range_slice(builder, pairs, quads, ir.Constant(i64, 1)) as (q, _):
                step(q, accs[0])
            total = builder.fadd(builder.load(accs[0]), builder.load(accs[1]), flags=["fast"])
            result = ir.Constant(f32, 0.0)
            for k in range(8):
                result = builder.fadd(result, builder.extract_element(total, ir.Constant(i32, k)),
                                      flags=["fast"])
            return result

        return sig, codegen

    return nm24_row1


def make_bsr16_rows1():
    """An intrinsic ``bsr16_rows1(x, y, bias, block_ptr, block_cols, vals, b0, b1)``:
    block rows ``b0:b1`` of a :class:`~prunekit.runtime.row_layouts.Blocks16` against
    ``x [in_padded]`` into ``y [out_padded]``: per block, sixteen input values broadcast,
    each times a 16-row column of the block in two 8-wide multiply-adds."""
    from numba.core import cgutils, types  # noqa: PLC0415
    from numba.extending import intrinsic  # noqa: PLC0415

    ir, f32, _, _, _, i64, v8f, _ = _ir()

    @intrinsic
    def bsr16_rows1(typingctx, x, y, bias, block_ptr, block_cols, vals, b0, b1):
        sig = types.void(x, y, bias, block_ptr, block_cols, vals, b0, b1)

        def codegen(context, builder, signature, args):
            x_d, y_d, bias_d, p_d, c_d, v_d = (
                context.make_array(t)(context, builder, a).data
                for t, a in zip(signature.args[:6], args[:6], strict=True))
            zero = ir.Constant(v8f, None)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
            sixteen = ir.Constant(i64, 16)
            start_b, stop_b = _widen(builder, ir, args[6]), _widen(builder, ir, args[7])
            with cgutils.for_range_slice(builder, start_b, stop_b, ir.Constant(i64, 1)) as (b, _):
                for acc in accs:
                    builder.store(zero, acc)
                first = _widen(builder, ir, builder.load(builder.gep(p_d, [b])))
                last = _widen(builder, ir, builder.load(
                    builder.gep(p_d, [builder.add(b, ir.Constant(i64, 1))])))
                with cgutils.for_range_slice(builder, first, last, ir.Constant(i64, 1)) as (k, _):
                    col0 = builder.mul(_widen(builder, ir, builder.load(builder.gep(c_d, [k]))),
                                       sixteen)
                    block = builder.gep(v_d, [builder.mul(k, ir.Constant(i64, 256))])
                    for c in range(16):
                        at = builder.add(col0, ir.Constant(i64, c))
                        xc = builder.load(builder.gep(x_d, [at]))
                        xv = _splat(builder, ir, xc, v8f)
                        lo_acc, hi_acc = accs[2 * (c % 2)], accs[2 * (c % 2) + 1]
                        lo = _vector_at(builder, ir, block, ir.Constant(i64, 16 * c), v8f)
                        hi = _vector_at(builder, ir, block, ir.Constant(i64, 16 * c + 8), v8f)
                        builder.store(_fma(builder, builder.load(lo_acc), lo, xv), lo_acc)
                        builder.store(_fma(builder, builder.load(hi_acc), hi, xv), hi_acc)
                row0 = builder.mul(b, sixteen)
                for half, (a, c) in enumerate(((accs[0], accs[2]), (accs[1], accs[3]))):
                    at = builder.add(row0, ir.Constant(i64, 8 * half))
                    total = builder.fadd(builder.load(a), builder.load(c), flags=["fast"])
                    total = builder.fadd(total, _vector_at(builder, ir, bias_d, at, v8f),
                                         flags=["fast"])
                    out = builder.bitcast(builder.gep(y_d, [at]), v8f.as_pointer())
                    builder.store(total, out, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return bsr16_rows1
