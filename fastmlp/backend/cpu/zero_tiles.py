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
from BLAS's in the rounding only. ``ZeroSkip.plan`` says whether the batch's zeros make it
worth it (at most SKIP_DENSITY of the blocks' columns nonzero).

The same tiles over every column also take any Dense layer's training forward on a small
batch (``ZeroSkip.dense_forward``, at most DENSE_ROWS rows): there they beat BLAS, whose
packing of W costs as much as a few rows of arithmetic.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import tile_gemm
from .jit import cover_dependencies
from .tile_gemm import MR, NVEC, PREFETCH_ROWS, emit_by_width, emit_sums, vector_ir

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
            ptrs = (builder.gep(pa, [a0]), lda, ak, builder.gep(pw, [w0]), ldw, builder.gep(pks, [ks0]), nk,
                    nvalid, builder.gep(pz, [z0]), ldz)
            emit_by_width(builder, nvec_v, NVEC[mr], lambda n: _emit(context, builder, a.dtype, mr, n, *ptrs))
            return context.get_dummy_value()

        return sig, codegen

    return itile


def _emit(context, builder, dtype, mr, nvec, pa, lda, ak, pw, ldw, pks, nk, nvalid, pz, ldz):
    # one tile's IR (tile_gemm's loop, its k's from pks), its sums stored to z; pa, pw, pks,
    # pz: pointers to a[a0], w[w0], ks[ks0], z[z0]
    v = vector_ir(context, builder, dtype, nvec, nvalid)
    _, _, totals = emit_sums(builder, v, mr, nvec, pa, lda, pw, ldw, nk, pks, ak)
    for i in range(mr):
        row = builder.gep(pz, [builder.mul(v.const(i), ldz)])
        for h in range(nvec):
            at = builder.bitcast(builder.gep(row, [v.const(h * v.vw)]), v.vec.as_pointer())
            builder.call(v.masked_store, [totals[i * nvec + h], at, ir.Constant(v.i32, v.size), v.masks[h]])


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


def list_shapes(n, d):
    """The shapes of the int64 lists ``plan`` fills for an (n, d) batch: a list of columns per
    block of MR rows, (nr, d + PREFETCH_ROWS), and of rows per block of MR features,
    (nf, n + PREFETCH_ROWS): each with PREFETCH_ROWS entries to spare."""
    return (-(-n // MR), d + PREFETCH_ROWS), (-(-d // MR), n + PREFETCH_ROWS)


def flag_shape(n, d):
    """The shape of ``plan``'s uint8 scratch for an (n, d) batch: a row per batch row and per
    block of MR rows, d rounded up to whole blocks of MR features (8 bytes: one uint64)."""
    return n + -(-n // MR), -(-d // MR) * MR


@njit(parallel=True, nogil=True, cache=True)
def _lists(x, flags, words, cols, ncols, rows, nrows):
    # flags[i, k] = x[i, k] != 0 for i < n, and row n + t the same for any row of row block t
    # (columns past d: 0); words: flags as uint64, one per block of MR features. Then
    # cols[t, :ncols[t]]: the columns where one of row block t's rows is nonzero; rows[f,
    # :nrows[f]]: the rows where one of feature block f's features is; ascending (each index
    # written, the count moved on only for a hit: no branches). Returns the nonzero columns
    # over all row blocks.
    n, d = x.shape
    width = flags.shape[1]
    for t in prange(ncols.size):
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
            cols[t, c] = k
            c += block[k]
        ncols[t] = c
        for p in range(c, c + PREFETCH_ROWS):     # readable past the list: a valid index
            cols[t, p] = 0
    for f in prange(nrows.size):
        c = 0
        for i in range(n):
            rows[f, c] = i
            c += words[i, f] != 0
        nrows[f] = c
        for p in range(c, c + PREFETCH_ROWS):
            rows[f, p] = 0
    return ncols.sum()


@njit(inline="always", nogil=True)
def _block(out, a, a0, lda, ak, w, lists, counts, t):
    # rows t * MR .. of out (R, M) = the tiles of a (its tile rows lda apart from a0, its k's ak
    # apart) times w's rows (M wide), over list t only
    m = out.shape[1]
    vw = 64 // a.itemsize
    mr = min(MR, out.shape[0] - t * MR)
    width = NVEC[mr] * vw
    for j0 in range(0, m, width):
        nv = min(width, m - j0)
        _run(mr, -(-nv // vw), a, a0, lda, ak, w, j0, m, lists, t * lists.shape[1], counts[t], nv,
             out, t * MR * m + j0, m)


@njit(parallel=True, nogil=True, cache=True)
def forward(z, x, w, cols, ncols):
    """z (n, m) = x (n, d) @ w (d, m), each block of MR rows over its list's columns only."""
    d = x.shape[1]
    for t in prange(ncols.size):
        _block(z, x, t * MR * d, d, 1, w, cols, ncols, t)


@njit(parallel=True, nogil=True, cache=True)
def weight_grad(dw, x, dz, rows, nrows):
    """dw (d, m) = x (n, d).T @ dz (n, m), each block of MR features over its list's rows only:
    the tile's rows are x's columns k0 .. k0 + MR (1 apart), its k's x's rows (d apart)."""
    d = x.shape[1]
    for f in prange(nrows.size):
        _block(dw, x, f * MR, 1, d, dz, rows, nrows, f)


# A batch not worth skipping (no zeros to speak of: standardised features, photos) sends the
# next RECHECK - 1 batches to BLAS without a look: the look reads the whole batch
RECHECK = 64

# A training forward x @ W of at most DENSE_ROWS rows and at least DENSE_MIN_COLUMNS columns
# runs on the tiles over every column (``dense_forward``) where it skips nothing: without
# BLAS's packing of W, P2's 256x256 layer took 26.6 us at 64 rows against OpenBLAS's 44.0 on
# two threads (49.9 / 71.0 at 128, 108.0 / 120.4 at 256, 207.2 / 190.7 at 512; on one thread
# 50.0 / 51.9, 95.6 / 95.8, 205.6 / 198.4), a 784-wide first layer on dense inputs 82.3 /
# 118.3 at 64 rows, P1's 12,288-wide one 533 / 680 at 209 rows; a 10-wide head 3.3 against
# 2.7 at 32 rows and a 64x20 @ 20x20 product 2.9 against 1.4, so narrow and tiny products
# keep BLAS. The choice depends on the shapes only: the same bits on any thread count.
DENSE_ROWS = 256
DENSE_MIN_COLUMNS = 16
DENSE_MIN_MACS = 1 << 16


class ZeroSkip:
    """A Dense layer's products in training on the tiles. The first layer's without the
    batch's zeros: ``plan(x)`` once a batch (True: worth it, and ``forward`` and
    ``weight_grad`` may be called for this x), buffers grown to the largest batch and reused
    (nothing allocated per step). Any layer's forward on a small batch: ``dense_worth``,
    ``dense_forward``."""

    def __init__(self):
        self._flags = self._cols = self._rows = None
        self._full = None        # dense_forward's lists: every column, for each row block
        self.wait = 0            # batches left to send to BLAS without a look

    def plan(self, x):
        """Whether x (n, d), C-contiguous float32 or float64, has zeros enough to skip."""
        if self.wait:
            self.wait -= 1
            return False
        n, d = x.shape
        fs, (cs, rs) = flag_shape(n, d), list_shapes(n, d)
        if self._flags is None or self._flags.shape[0] < fs[0] or self._flags.shape[1] != fs[1]:
            self._flags = np.empty(fs, dtype=np.uint8)
        if self._cols is None or self._cols.shape[0] < cs[0] or self._cols.shape[1] != cs[1]:
            self._cols, self._ncols = np.empty(cs, dtype=np.int64), np.empty(cs[0], dtype=np.int64)
        if self._rows is None or self._rows.shape[0] != rs[0] or self._rows.shape[1] < rs[1]:
            self._rows, self._nrows = np.empty(rs, dtype=np.int64), np.empty(rs[0], dtype=np.int64)
        flags = self._flags[:fs[0]]
        self.cols, self.ncols = self._cols[:cs[0]], self._ncols[:cs[0]]
        self.rows, self.nrows = self._rows, self._nrows
        total = _lists(x, flags, flags.view(np.uint64), self.cols, self.ncols, self.rows, self.nrows)
        if total > SKIP_DENSITY * cs[0] * d:
            self.wait = RECHECK - 1
            return False
        return True

    def forward(self, z, x, w):
        """z = x @ w over the columns ``plan`` found."""
        forward(z, x, w, self.cols, self.ncols)

    @staticmethod
    def dense_worth(n, d, m):
        """Whether a forward (n, d) @ (d, m) runs on the tiles over every column."""
        return n <= DENSE_ROWS and m >= DENSE_MIN_COLUMNS and n * d * m >= DENSE_MIN_MACS

    def dense_forward(self, z, x, w):
        """z = x @ w (x (n, d) C-contiguous, n at most DENSE_ROWS) on the tiles, every
        column of every row block: lists of all d columns, made for the largest batch."""
        n, d = x.shape
        nr = -(-n // MR)
        full = self._full
        if full is None or full[0].shape[0] < nr or full[0].shape[1] != d + PREFETCH_ROWS:
            cols = np.zeros((nr, d + PREFETCH_ROWS), dtype=np.int64)
            cols[:, :d] = np.arange(d)
            full = self._full = (cols, np.full(cols.shape[0], d, dtype=np.int64))
        forward(z, x, w, full[0][:nr], full[1][:nr])

    def weight_grad(self, dw, x, dz):
        """dw = x.T @ dz over the rows ``plan`` found."""
        weight_grad(dw, x, dz, self.rows, self.nrows)


cover_dependencies(__name__, tile_gemm)
