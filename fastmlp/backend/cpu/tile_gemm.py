"""A GEMM for few rows from register tiles: the dense layers of a prediction (dense_chain.py).

``dense_rows(z, a, w, b, code, alpha, buf)`` computes z = act(a @ w + b) for a
block of rows of a prediction. BLAS is built for big products: it copies
("packs") the weights into its own layout on every call, and for a batch of
1 to 32 rows that copy costs as much as the arithmetic. Here the weights are
read where they are, row by row of W (the layer's (D, M) array, row-major).

The arithmetic is a register tile: ``mr`` rows of a (at most MR = 8) times
``nvec`` SIMD vectors of W's columns. For each k the tile loads the vectors of
W's row k once (and prefetches the row PREFETCH_ROWS ahead), broadcasts each of
the mr values a[i, k], and adds their products into mr * nvec vector accumulators
held in registers; at the end the tile goes to a small buffer (``buf``) and
``dense_rows`` adds the bias and applies the activation on its way into z. A few rows get wider tiles (one row
reads 8 vectors), so that there are always enough independent accumulators to
hide the latency of the fused multiply-adds.

Numba has no SIMD types, so each tile shape is an ``intrinsic`` that writes
the loop in LLVM IR: ``<16 x float>`` (or ``<8 x double>``) loads, broadcasts
and ``llvm.fma``, and masked loads for a last panel narrower than the tile. A
last panel takes the fewest vectors that hold it: P2's 128-column part of a
layer is 48 + 48 + 32 columns for 8 rows, and its 32 went through a masked
3-vector tile, a third of its multiply-adds on zeros (two threads on 32 rows:
102.5-104 against 107-110 us for the whole prediction kernel).
LLVM turns a 512-bit vector into one AVX-512 register; ``available()`` is
True only on a CPU with AVX-512 (elsewhere dense_chain.py calls BLAS).

Every output is one chain of fused multiply-adds over k = 0 .. D - 1 in order,
starting from 0, then + b, then the activation: the same arithmetic whatever
the tile, the block of rows or the batch, so a row's prediction has the same
bits alone, in any batch and on any number of threads.
"""
import os
from types import SimpleNamespace

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import activation
from .. import codes
from .activation import act_value
from ..codes import IDENTITY, RELU
from .jit import cover_dependencies

MR = 8               # the most rows of a tile
LDC = 128            # a tile's row stride in ``buf`` (elements): the widest tile, 8 vectors of floats
# vectors of W's columns in a full tile of mr rows: 3 up to 8 rows (24 accumulators and 3
# vectors of W in AVX-512's 32 registers; medians of 40 interleaved rounds on a 784-deep
# product, one core: 8 rows by 3 vectors 126-129 GFLOP/s against 113-115 by 2, 6 rows
# 112-114 against 99-102)
NVEC = (0, 8, 4, 3, 3, 3, 3, 3, 3)
# W's row this many rows ahead is prefetched (interleaved medians, one core, P2's first layer:
# 8 rows by 3 vectors 138 against 129 GFLOP/s, 4 by 3 102 against 86, 1 by 8 46 against 43)
PREFETCH_ROWS = 8
# where a tile's sums go: buf (the caller adds the bias and applies the activation), or
# act(sums + b) into z for the two activations the tile applies itself
FUSE_NONE, FUSE_IDENTITY, FUSE_RELU = 0, 1, 2


def _host_has_avx512():
    from llvmlite import binding
    try:
        return "+avx512f" in binding.get_host_cpu_features().flatten().split(",")
    except RuntimeError:   # the host's features can't be read
        return False


def available():
    """Whether predictions use these tiles: the CPU has AVX-512 and FASTMLP_TILE_GEMM is not 0."""
    return os.environ.get("FASTMLP_TILE_GEMM", "1") != "0" and _host_has_avx512()


def _tile(mr):
    """The intrinsic tile(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    of mr rows by nvec vectors (1 .. NVEC[mr]: a last panel narrower than the widest tile
    takes the fewest vectors that hold it, not the widest tile masked).
    Its sums t[i, j] = sum over kk < k of a[a0 + i * lda + kk] * w[w0 + kk * ldw + j], for
    i < mr and j < nvec * VW, with W's columns from nvalid on read as 0 (masked loads, never
    touched), go (``fuse``) to buf[i * LDC + j] (FUSE_NONE), or as act(t + b[b0 + j]) to
    z[z0 + i * ldz + j] for j < nvalid (FUSE_IDENTITY, FUSE_RELU: bias_act_row's arithmetic;
    masked stores, the rest of z untouched). a, w, buf, z, b: arrays of one dtype, indexed
    from their first element (columns contiguous, rows lda, ldw, ldz elements apart); the
    rest int64."""

    @intrinsic
    def tile(typingctx, buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse):
        sig = types.void(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)

        def codegen(context, builder, signature, args):
            buf_v, nvec_v, a_v, a0, lda, w_v, w0, ldw, k, nvalid, z_v, z0, ldz, b_v, b0, fuse = args
            arrays = [(signature.args[n], v) for n, v in ((0, buf_v), (2, a_v), (5, w_v), (10, z_v), (13, b_v))]
            pbuf, pa, pw, pz, pb = (context.make_array(ty)(context, builder, v).data for ty, v in arrays)
            ptrs = (pbuf, builder.gep(pa, [a0]), lda, builder.gep(pw, [w0]), ldw, k, nvalid,
                    builder.gep(pz, [z0]), ldz, builder.gep(pb, [b0]), fuse)
            emit_by_width(builder, nvec_v, NVEC[mr], lambda n: _emit_tile(context, builder, buf.dtype, mr, n, *ptrs))
            return context.get_dummy_value()

        return sig, codegen

    return tile


def emit_by_width(builder, nvec_v, widest, emit):
    """One body per tile width, ``emit(n)`` for n = 1 .. widest vectors, chosen by the
    runtime nvec_v (a value out of 1 .. widest takes the widest)."""
    merge = builder.append_basic_block("tile.merge")
    bodies = [builder.append_basic_block(f"tile.v{n}") for n in range(1, widest + 1)]
    switch = builder.switch(nvec_v, bodies[-1])
    for n, body in enumerate(bodies, 1):
        switch.add_case(ir.Constant(nvec_v.type, n), body)
        builder.position_at_end(body)
        emit(n)
        builder.branch(merge)
    builder.position_at_end(merge)


def vector_ir(context, builder, dtype, nvec, nvalid):
    """What a tile's IR is written with, for ``dtype`` (float32 or float64): the vector type
    (``vec``, ``vw`` lanes, ``size`` bytes a lane), the intrinsics (``fma``, ``masked_load``,
    ``masked_store``, ``prefetch``), ``splat(value, type)``, ``const(n)`` (an i64), ``zero``
    (a vector of 0), and ``masks[h]``: lane j of vector h is read when h * vw + j < nvalid
    (emitted at the builder's position). zero_tiles.py's tiles are written with it too."""
    double = dtype == types.float64
    vw = 8 if double else 16
    real = ir.DoubleType() if double else ir.FloatType()
    name = "v8f64" if double else "v16f32"
    i32, i64, i8p = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
    vec, lanes_i64 = ir.VectorType(real, vw), ir.VectorType(i64, vw)
    module = builder.module

    def declare(fname, fnty):
        fn = module.globals.get(fname)
        return fn if fn is not None else ir.Function(module, fnty, name=fname)

    def splat(value, ty):
        one = builder.insert_element(ir.Constant(ty, None), value, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, vw), [0] * vw))

    def const(n):
        return ir.Constant(i64, n)

    lanes = ir.Constant(lanes_i64, list(range(vw)))
    masks = [builder.icmp_signed("<", lanes, splat(builder.sub(nvalid, const(h * vw)), lanes_i64))
             for h in range(nvec)]
    return SimpleNamespace(
        vw=vw, vec=vec, i32=i32, i64=i64, i8p=i8p, size=real.get_abi_size(context.target_data),
        fma=declare(f"llvm.fma.{name}", ir.FunctionType(vec, [vec, vec, vec])),
        masked_load=declare(f"llvm.masked.load.{name}.p0{name}",
                            ir.FunctionType(vec, [vec.as_pointer(), i32, ir.VectorType(ir.IntType(1), vw), vec])),
        masked_store=declare(f"llvm.masked.store.{name}.p0{name}",
                             ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32,
                                                             ir.VectorType(ir.IntType(1), vw)])),
        prefetch=declare("llvm.prefetch.p0i8", ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])),
        splat=splat, const=const, masks=masks, zero=ir.Constant(vec, [0.0] * vw))


def emit_sums(builder, v, mr, nvec, pa, lda, pw, ldw, k, pks=None, ak=None):
    """The loop of a tile of mr rows by nvec vectors (``v``: vector_ir's), from the builder's
    block on: for kk in 0 .. k - 1, W's row kk (or ks[kk], read through ``pks``) loaded once,
    times a[i * lda + kk] (or a[i * lda + ks[kk] * ak]) broadcast, into mr * nvec vector
    accumulators. Returns (the entry block, the loop block, the sums: 0 when k is 0), the
    builder at the block after the loop."""
    vw, vec, i32, size, const, zero = v.vw, v.vec, v.i32, v.size, v.const, v.zero
    entry = builder.basic_block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed(">", k, const(0)), loop, done)

    # for kk in 0 .. k - 1: load W's row once, add a[i, row] * it into the accumulators
    builder.position_at_end(loop)
    kk = builder.phi(v.i64)
    kk.add_incoming(const(0), entry)
    acc = []
    for _ in range(mr * nvec):
        phi = builder.phi(vec)
        phi.add_incoming(zero, entry)
        acc.append(phi)
    row = kk if pks is None else builder.load(builder.gep(pks, [kk]))
    w_row = builder.gep(pw, [builder.mul(row, ldw)])
    wv = [builder.call(v.masked_load, [builder.bitcast(builder.gep(w_row, [const(h * vw)]), vec.as_pointer()),
                                       ir.Constant(i32, size), v.masks[h], zero])
          for h in range(nvec)]
    # and ask for the row PREFETCH_ROWS ahead: the rows are ldw apart, so a tile's few vectors
    # of a row sit on another page every few rows, where the hardware's prefetchers stop. A
    # prefetch never faults, so the rows past W's end it names cost nothing wrong (a list
    # holds PREFETCH_ROWS readable entries past its end)
    ahead_kk = builder.add(kk, const(PREFETCH_ROWS))
    ahead_row = ahead_kk if pks is None else builder.load(builder.gep(pks, [ahead_kk]))
    ahead = builder.gep(pw, [builder.mul(ahead_row, ldw)])
    for h in range(nvec):
        builder.call(v.prefetch, [builder.bitcast(builder.gep(ahead, [const(h * vw)]), v.i8p),
                                  ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, L1, data
    a_row = None if pks is None else builder.gep(pa, [builder.mul(row, ak)])
    new = []
    for i in range(mr):
        at = (builder.gep(pa, [builder.add(builder.mul(const(i), lda), kk)]) if pks is None
              else builder.gep(a_row, [builder.mul(const(i), lda)]))
        ai = v.splat(builder.load(at), vec)
        for h in range(nvec):
            new.append(builder.call(v.fma, [ai, wv[h], acc[i * nvec + h]]))
    kk_next = builder.add(kk, const(1))
    kk.add_incoming(kk_next, loop)
    for phi, value in zip(acc, new):
        phi.add_incoming(value, loop)
    builder.cbranch(builder.icmp_signed("<", kk_next, k), loop, done)

    builder.position_at_end(done)
    totals = []
    for value in new:
        total = builder.phi(vec)
        total.add_incoming(zero, entry)
        total.add_incoming(value, loop)
        totals.append(total)
    return entry, loop, totals


def _emit_tile(context, builder, dtype, mr, nvec, pbuf, pa, lda, pw, ldw, k, nvalid, pz, ldz, pb, fuse):
    # the IR of one tile from the builder's block on; pbuf, pa, pw, pz, pb: pointers to buf,
    # a[a0], w[w0], z[z0], b[b0]
    v = vector_ir(context, builder, dtype, nvec, nvalid)
    vw, vec, i32, size = v.vw, v.vec, v.i32, v.size
    masked_load, masked_store, const, masks, zero = v.masked_load, v.masked_store, v.const, v.masks, v.zero
    entry, loop, totals = emit_sums(builder, v, mr, nvec, pa, lda, pw, ldw, k)
    to_buf = builder.append_basic_block("tile.buf")
    to_z = builder.append_basic_block("tile.z")
    end = builder.append_basic_block("tile.end")
    builder.cbranch(builder.icmp_signed("==", fuse, const(FUSE_NONE)), to_buf, to_z)
    builder.position_at_end(to_buf)
    for i in range(mr):
        for h in range(nvec):
            dest = builder.bitcast(builder.gep(pbuf, [const(i * LDC + h * vw)]), vec.as_pointer())
            builder.store(totals[i * nvec + h], dest).align = size
    builder.branch(end)

    # or act(sums + b) straight into z: x + b, then ReLU as act_value's x if x > 0 else x * 0
    builder.position_at_end(to_z)
    relu = builder.icmp_signed("==", fuse, const(FUSE_RELU))
    bias = [builder.call(masked_load, [builder.bitcast(builder.gep(pb, [const(h * vw)]), vec.as_pointer()),
                                       ir.Constant(i32, size), masks[h], zero]) for h in range(nvec)]
    for i in range(mr):
        row = builder.gep(pz, [builder.mul(const(i), ldz)])
        for h in range(nvec):
            x = builder.fadd(totals[i * nvec + h], bias[h])
            positive = builder.fcmp_ordered(">", x, zero)
            x = builder.select(relu, builder.select(positive, x, builder.fmul(x, zero)), x)
            builder.call(masked_store, [x, builder.bitcast(builder.gep(row, [const(h * vw)]), vec.as_pointer()),
                                        ir.Constant(i32, size), masks[h]])
    builder.branch(end)
    builder.position_at_end(end)


_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8 = (_tile(mr) for mr in range(1, MR + 1))


@njit(inline="always", nogil=True)
def _run_tile(mr, nvec, buf, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse):
    if mr == 8:
        _T8(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    elif mr == 7:
        _T7(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    elif mr == 6:
        _T6(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    elif mr == 5:
        _T5(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    elif mr == 4:
        _T4(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    elif mr == 3:
        _T3(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    elif mr == 2:
        _T2(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)
    else:
        _T1(buf, nvec, a, a0, lda, w, w0, ldw, k, nvalid, z, z0, ldz, b, b0, fuse)


@njit(inline="always", nogil=True, error_model="numpy")
def _bias_act(z, v, b, code, alpha):
    for j in range(z.size):
        z[j] = act_value(v[j] + b[j], code, alpha)


@njit(inline="always", nogil=True, error_model="numpy")
def bias_act_row(z, v, b, code, alpha):
    """z = act(v + b) for rows z, v, b of one length (z may be v): dense.bias_act_forward's
    arithmetic, one loop per common code with the code a constant in it, so LLVM vectorises it."""
    if code == RELU:
        _bias_act(z, v, b, RELU, alpha)
    elif code == IDENTITY:
        _bias_act(z, v, b, IDENTITY, alpha)
    else:
        _bias_act(z, v, b, code, alpha)


@njit(inline="always", nogil=True, error_model="numpy")
def dense_rows(z, a, w, b, code, alpha, buf):
    """z (R, M) = act(a (R, D) @ w (D, M) + b (M,)) by tiles; a's rows may be strided, its
    columns contiguous, w C-contiguous; buf (MR * LDC,) of the same dtype, this thread's own."""
    dense_columns(z, a, w, b, code, alpha, buf, 0, w.shape[1])


@njit(inline="always", nogil=True, error_model="numpy")
def dense_columns(z, a, w, b, code, alpha, buf, c0, c1):
    """Columns c0 .. c1 of dense_rows's z, the rest of z untouched: threads that take
    disjoint column ranges of a layer each read only their own columns of W."""
    rows, d = a.shape
    m = w.shape[1]
    vw = 64 // a.itemsize                        # elements in a 512-bit vector
    lda = a.strides[0] // a.itemsize
    ldz = z.strides[0] // z.itemsize
    # identity and ReLU straight from the registers into z; the others through buf
    fuse = FUSE_RELU if code == RELU else (FUSE_IDENTITY if code == IDENTITY else FUSE_NONE)
    for i0 in range(0, rows, MR):
        mr = min(MR, rows - i0)
        width = NVEC[mr] * vw
        for j0 in range(c0, c1, width):
            nv = min(width, c1 - j0)
            _run_tile(mr, -(-nv // vw), buf, a, i0 * lda, lda, w, j0, m, d, nv, z, i0 * ldz + j0, ldz, b, j0, fuse)
            if fuse == FUSE_NONE:
                for i in range(mr):
                    bias_act_row(z[i0 + i, j0:j0 + nv], buf[i * LDC:i * LDC + nv], b[j0:j0 + nv], code, alpha)


cover_dependencies(__name__, activation, codes)
