"""The first layer's two products in training without the batch's zeros (CPU, AVX-512).

A Dense first layer multiplies the raw batch: z = x @ W forward, dW = x.T @ dz
backward (it needs no dx). Images are mostly zeros: MNIST's pixels are 81 %
zeros, and of 8 rows together 54 % of the columns are zero in all 8. So:

- forward, each block of MR rows (8) multiplies only the columns k where one of
  its rows is nonzero (``row_block_lists``): register tiles of tile_gemm.py's
  shape whose loop over k reads the k's from a list;
- backward, each block of MR features multiplies only the rows i where one of
  its features is nonzero (``feature_block_lists``): dW[f:f+8] = sum over those i
  of x[i, f:f+8] (outer) dz[i], the same tiles with x read transposed.

A skipped term is a zero times a finite weight or gradient: the sums are those
of the products, term by term in ascending order (each output one chain of fused
multiply-adds), so a batch gives the same bits on any thread count. They differ
from BLAS's in the rounding only. ``plan`` says whether the batch's zeros make it
worth it (at most SKIP_DENSITY of the blocks' columns nonzero).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import tile_gemm
from .jit import cover_dependencies
from .tile_gemm import MR, NVEC, PREFETCH_ROWS

# Worth it when at most this share of the row blocks' columns has a nonzero (P2 on MNIST: 0.46)
SKIP_DENSITY = 0.7


def available():
    """Whether the first layer skips zeros here: the tiles run on this CPU (AVX-512)."""
    return tile_gemm.available()


def _itile(mr):
    """The intrinsic itile(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    of mr rows by nvec vectors: z[z0 + i * ldz + j] = sum over kk < nk of
    a[a0 + i * lda + k * ak] * w[w0 + k * ldw + j], k = ks[ks0 + kk], in that order, for
    i < mr and j < nvalid (masked loads and stores past nvalid). a, w, z of one dtype; ks int64
    with PREFETCH_ROWS entries readable past ks0 + nk."""

    @intrinsic
    def itile(typingctx, nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz):
        sig = types.void(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)

        def codegen(context, builder, signature, args):
            nvec_v, a_v, a0, lda, ak, w_v, w0, ldw, ks_v, ks0, nk, nvalid, z_v, z0, ldz = args
            arrays = [(signature.args[n], v) for n, v in ((1, a_v), (5, w_v), (8, ks_v), (12, z_v))]
            pa, pw, pks, pz = (context.make_array(ty)(context, builder, v).data for ty, v in arrays)
            merge = builder.append_basic_block("itile.merge")
            bodies = [builder.append_basic_block(f"itile.v{n}") for n in range(1, NVEC[mr] + 1)]
            switch = builder.switch(nvec_v, bodies[-1])
            for n, body in enumerate(bodies, 1):
                switch.add_case(ir.Constant(nvec_v.type, n), body)
                builder.position_at_end(body)
                _emit(context, builder, a.dtype, mr, n, builder.gep(pa, [a0]), lda, ak, builder.gep(pw, [w0]),
                      ldw, builder.gep(pks, [ks0]), nk, nvalid, builder.gep(pz, [z0]), ldz)
                builder.branch(merge)
            builder.position_at_end(merge)
            return context.get_dummy_value()

        return sig, codegen

    return itile


def _emit(context, builder, dtype, mr, nvec, pa, lda, ak, pw, ldw, pks, nk, nvalid, pz, ldz):
    # one tile's IR (tile_gemm._emit_tile's loop, its k's from pks); pa, pw, pks, pz: pointers
    # to a[a0], w[w0], ks[ks0], z[z0]
    double = dtype == types.float64
    vw = 8 if double else 16
    real = ir.DoubleType() if double else ir.FloatType()
    name = "v8f64" if double else "v16f32"
    i32, i64, i8p = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
    vec, lanes_i64 = ir.VectorType(real, vw), ir.VectorType(i64, vw)
    size = real.get_abi_size(context.target_data)
    module = builder.module

    def declare(fname, fnty):
        fn = module.globals.get(fname)
        return fn if fn is not None else ir.Function(module, fnty, name=fname)

    fma = declare(f"llvm.fma.{name}", ir.FunctionType(vec, [vec, vec, vec]))
    masked_load = declare(f"llvm.masked.load.{name}.p0{name}",
                          ir.FunctionType(vec, [vec.as_pointer(), i32, ir.VectorType(ir.IntType(1), vw), vec]))
    masked_store = declare(f"llvm.masked.store.{name}.p0{name}",
                           ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32,
                                                           ir.VectorType(ir.IntType(1), vw)]))
    prefetch = declare("llvm.prefetch.p0i8", ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))

    def splat(value, ty):
        one = builder.insert_element(ir.Constant(ty, None), value, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, vw), [0] * vw))

    def const(n):
        return ir.Constant(i64, n)

    lanes = ir.Constant(lanes_i64, list(range(vw)))
    masks = [builder.icmp_signed("<", lanes, splat(builder.sub(nvalid, const(h * vw)), lanes_i64))
             for h in range(nvec)]
    zero = ir.Constant(vec, [0.0] * vw)
    entry = builder.basic_block
    loop = builder.append_basic_block("itile.loop")
    done = builder.append_basic_block("itile.done")
    builder.cbranch(builder.icmp_signed(">", nk, const(0)), loop, done)

    builder.position_at_end(loop)
    kk = builder.phi(i64)
    kk.add_incoming(const(0), entry)
    acc = []
    for _ in range(mr * nvec):
        phi = builder.phi(vec)
        phi.add_incoming(zero, entry)
        acc.append(phi)
    k = builder.load(builder.gep(pks, [kk]))
    w_row = builder.gep(pw, [builder.mul(k, ldw)])
    wv = [builder.call(masked_load, [builder.bitcast(builder.gep(w_row, [const(h * vw)]), vec.as_pointer()),
                                     ir.Constant(i32, size), masks[h], zero])
          for h in range(nvec)]
    # the row PREFETCH_ROWS k's ahead (ks holds that many readable entries past the list)
    ahead = builder.gep(pw, [builder.mul(builder.load(builder.gep(pks, [builder.add(kk, const(PREFETCH_ROWS))])),
                                         ldw)])
    for h in range(nvec):
        builder.call(prefetch, [builder.bitcast(builder.gep(ahead, [const(h * vw)]), i8p),
                                ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
    a_k = builder.gep(pa, [builder.mul(k, ak)])
    new = []
    for i in range(mr):
        ai = splat(builder.load(builder.gep(a_k, [builder.mul(const(i), lda)])), vec)
        for h in range(nvec):
            new.append(builder.call(fma, [ai, wv[h], acc[i * nvec + h]]))
    kk_next = builder.add(kk, const(1))
    kk.add_incoming(kk_next, loop)
    for phi, value in zip(acc, new):
        phi.add_incoming(value, loop)
    builder.cbranch(builder.icmp_signed("<", kk_next, nk), loop, done)

    # the sums (0 when nk is 0) to z
    builder.position_at_end(done)
    totals = []
    for value in new:
        total = builder.phi(vec)
        total.add_incoming(zero, entry)
        total.add_incoming(value, loop)
        totals.append(total)
    for i in range(mr):
        row = builder.gep(pz, [builder.mul(const(i), ldz)])
        for h in range(nvec):
            builder.call(masked_store, [totals[i * nvec + h],
                                        builder.bitcast(builder.gep(row, [const(h * vw)]), vec.as_pointer()),
                                        ir.Constant(i32, size), masks[h]])


_I1, _I2, _I3, _I4, _I5, _I6, _I7, _I8 = (_itile(mr) for mr in range(1, MR + 1))


@njit(inline="always", nogil=True)
def _run(mr, nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz):
    if mr == 8:
        _I8(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    elif mr == 7:
        _I7(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    elif mr == 6:
        _I6(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    elif mr == 5:
        _I5(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    elif mr == 4:
        _I4(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    elif mr == 3:
        _I3(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    elif mr == 2:
        _I2(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)
    else:
        _I1(nvec, a, a0, lda, ak, w, w0, ldw, ks, ks0, nk, nvalid, z, z0, ldz)


def list_shape(n, d):
    """(rows, columns) of the int64 lists ``plan`` fills for an (n, d) batch: a list per block
    of MR rows and per block of MR features, each with PREFETCH_ROWS entries to spare."""
    return -(-n // MR) + -(-d // MR), max(n, d) + PREFETCH_ROWS


def flag_shape(n, d):
    """The shape of ``plan``'s uint8 scratch for an (n, d) batch: a row per batch row and per
    block of MR rows, d rounded up to whole blocks of MR features (8 bytes: one uint64)."""
    return n + -(-n // MR), -(-d // MR) * MR


@njit(parallel=True, nogil=True, cache=True)
def _lists(x, flags, words, lists, counts):
    # flags[i, k] = x[i, k] != 0 for i < n, and row n + t the same for any row of row block t
    # (columns past d: 0); words: flags as uint64, one per block of MR features. Then
    # lists[t, :counts[t]]: for row block t (t < nr), the columns where one of its rows is
    # nonzero; for feature block f (row nr + f), the rows where one of its features is;
    # ascending (each index written, the count moved on only for a hit: no branches).
    # Returns the nonzero columns over all row blocks.
    n, d = x.shape
    nr = -(-n // MR)
    width = flags.shape[1]
    for t in prange(nr):
        i0, i1 = t * MR, min(n, t * MR + MR)
        block = flags[n + t]
        block[:] = 0
        for i in range(i0, i1):
            row = flags[i]
            for k in range(d):
                row[k] = x[i, k] != 0
            for k in range(d, width):
                row[k] = 0
            for k in range(d):
                block[k] |= row[k]
        c = 0
        for k in range(d):
            lists[t, c] = k
            c += block[k]
        counts[t] = c
        for p in range(c, c + PREFETCH_ROWS):     # readable past the list: a valid index
            lists[t, p] = 0
    for f in prange(width // MR):
        t = nr + f
        c = 0
        for i in range(n):
            lists[t, c] = i
            c += words[i, f] != 0
        counts[t] = c
        for p in range(c, c + PREFETCH_ROWS):
            lists[t, p] = 0
    total = 0
    for t in range(nr):
        total += counts[t]
    return total


def plan(x, flags, lists, counts):
    """Fill the lists of x (n, d) (``list_shape``; ``flags`` of ``flag_shape``, uint8): True
    when skipping its zeros is worth it."""
    total = _lists(x, flags, flags.view(np.uint64), lists, counts)
    return total <= SKIP_DENSITY * -(-x.shape[0] // MR) * x.shape[1]


@njit(parallel=True, nogil=True, cache=True)
def forward(z, x, w, lists, counts):
    """z (n, m) = x (n, d) @ w (d, m), each block of MR rows over its list's columns only."""
    n, d = x.shape
    m = w.shape[1]
    vw = 64 // x.itemsize
    width_ld = lists.shape[1]
    for t in prange(-(-n // MR)):
        i0 = t * MR
        mr = min(MR, n - i0)
        width = NVEC[mr] * vw
        for j0 in range(0, m, width):
            nv = min(width, m - j0)
            _run(mr, -(-nv // vw), x, i0 * d, d, 1, w, j0, m, lists, t * width_ld, counts[t], nv,
                 z, i0 * m + j0, m)


@njit(parallel=True, nogil=True, cache=True)
def weight_grad(dw, x, dz, lists, counts):
    """dw (d, m) = x (n, d).T @ dz (n, m), each block of MR features over its list's rows only."""
    n, d = x.shape
    m = dz.shape[1]
    vw = 64 // x.itemsize
    nr = -(-n // MR)
    width_ld = lists.shape[1]
    for f in prange(-(-d // MR)):
        k0 = f * MR
        mr = min(MR, d - k0)
        width = NVEC[mr] * vw
        for j0 in range(0, m, width):
            nv = min(width, m - j0)
            # a[i, k] = x[k, k0 + i]: the features of row k are a's column k
            _run(mr, -(-nv // vw), x, k0, 1, d, dz, j0, m, lists, (nr + f) * width_ld, counts[nr + f], nv,
                 dw, k0 * m + j0, m)


class ZeroSkip:
    """A first Dense layer's products in training, without the batch's zeros: ``plan(x)``
    once a batch (True: worth it, and ``forward`` and ``weight_grad`` may be called for this
    x), buffers grown to the largest batch and reused (nothing allocated per step)."""

    def __init__(self):
        self._flags = self._lists = self._counts = None

    def plan(self, x):
        """Whether x (n, d), C-contiguous float32 or float64, has zeros enough to skip."""
        n, d = x.shape
        fs, ls = flag_shape(n, d), list_shape(n, d)
        if self._flags is None or self._flags.shape[0] < fs[0] or self._flags.shape[1] != fs[1]:
            self._flags = np.empty(fs, dtype=np.uint8)
        if self._lists is None or self._lists.shape[0] < ls[0] or self._lists.shape[1] < ls[1]:
            self._lists = np.empty(ls, dtype=np.int64)
            self._counts = np.empty(ls[0], dtype=np.int64)
        self.flags = self._flags[:fs[0]]
        self.lists, self.counts = self._lists[:ls[0]], self._counts[:ls[0]]
        return plan(x, self.flags, self.lists, self.counts)

    def forward(self, z, x, w):
        """z = x @ w over the columns ``plan`` found."""
        forward(z, x, w, self.lists, self.counts)

    def weight_grad(self, dw, x, dz):
        """dw = x.T @ dz over the rows ``plan`` found."""
        weight_grad(dw, x, dz, self.lists, self.counts)


cover_dependencies(__name__, tile_gemm)
