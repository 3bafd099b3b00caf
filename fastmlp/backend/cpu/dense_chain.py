"""Inference of a chain of Dense layers in one Numba call: fastmlp/inference.py's CPU kernel.

``dense_chain_forward`` runs every layer of an MLP, GEMM, bias and activation,
then the output's softmax, sigmoid or copy, without coming back to Python
between layers, in one of two ways:

- On the register tiles (tile_gemm.py, a CPU with AVX-512), when the batch is
  small enough that every row block below has at most TILE_ROWS rows: layer
  after layer over all the rows, each layer's columns cut into parts, one per
  thread (``column_parts``). Each thread reads only its own columns of W, and
  a layer starts when the last one is done (the end of a parallel region).
- Otherwise as blocks of rows (``row_edges``: multiples of 8 rows, one per
  thread the machine plans for), each block running all its layers: on the
  tiles for a block of at most TILE_ROWS rows, else NumPy's OpenBLAS on one
  thread. Each block keeps its layer outputs in its own span of two scratch
  buffers (one layer writes one while it reads the other; ``block_span``:
  block rows lo .. hi own elements lo * W .. hi * W of each, W at least the
  widest hidden layer, so no layer of a block, whatever its width, reaches
  another block's span); the last layer writes the result.

The parallel twin gives the parts or blocks to Numba's threads, the serial
twin runs them one after the other. Every output comes out of the same
arithmetic either way (a tile's output is one chain of multiply-adds, whatever
the tile; a block's rows come out of the same GEMM calls), so a prediction
gives the same bits alone (parallel) and beside others (serial). The epilogues
are the arithmetic of dense.bias_act_forward and loss.softmax_row, so this path
and the layer-by-layer one agree to the rounding of the GEMMs.
"""
import numpy as np
from numba import njit, prange

from . import activation, loss, openblas, tile_gemm
from .. import codes as _codes
from ..codes import SIGMOID
from .activation import act_value
from .jit import any_nonfinite, cast_like, cover_dependencies, nonfinite_bits, twins
from .loss import softmax_row
from .openblas import NO_TRANS, ROW_MAJOR

OUT_IDENTITY, OUT_SOFTMAX, OUT_SIGMOID = 0, 1, 2   # what the chain's last step writes
ALIGN = openblas.ALIGN    # block edges on multiples of 8 rows (OpenBLAS's row kernels)
# A block of at most TILE_ROWS rows runs its layers on tile_gemm.py's register tiles, where the
# CPU has them (TILES): BLAS copies the weights on every call, which costs a few rows as much
# as the arithmetic. BLAS overtook the first tiles between 64 and 128 rows; the present ones
# keep up with it to 256, but blocks of 128 rows made predictions neither faster nor slower
# (bench/README.md).
TILE_ROWS = 64
TILES = tile_gemm.available()
# A tiles-only call cuts each layer's columns into parts on multiples of COLUMN_STEP (one
# vector of floats), not on whole tiles: P2's 256 columns cut 144 + 112 (panels of 48 for 8
# rows) left one row's 128-column tiles unbalanced, where 128 + 128 gives 8 rows three tiles
# a part either way (48, 48, and 32 on a 2-vector tile). A layer of fewer than PARALLEL_MACS
# multiply-adds stays whole (P2 at batch 1, alternated runs: its 256x256 layer whole, 17.5-18.3 us; cut at
# 2 ** 16, 18.8-19.3; its 784x256 layer whole too at 2 ** 18, 18.2-19.2).
COLUMN_STEP = 16
PARALLEL_MACS = 1 << 17


_GEMM = {"f": openblas.gemm_for(np.float32), "d": openblas.gemm_for(np.float64)}


def row_edges(n, threads):
    """Edges of the row blocks of an n-row batch for ``threads`` threads: as equal as
    multiples of ALIGN rows allow, one block when n is under 2 * ALIGN."""
    blocks = max(1, min(threads, n // ALIGN))
    edges = [min(n, -(-n * t // blocks // ALIGN) * ALIGN) for t in range(blocks)] + [n]
    return np.array(edges, dtype=np.int64)


@njit(inline="always", nogil=True)
def block_span(scratch, n, lo, hi, m):
    """The (hi - lo, m) layer output of rows lo .. hi of an n-row batch in one scratch buffer
    (1-D, at least n * W long for W >= m): it starts at lo * W, W = len(scratch) // n, the
    same for every layer, so blocks own disjoint spans whatever their layers' widths."""
    w = scratch.size // n
    return scratch[lo * w:lo * w + (hi - lo) * m].reshape((hi - lo, m))


@njit(inline="always", nogil=True, error_model="numpy")
def _nonfinite(x):
    # whether x (C-contiguous) holds a NaN or Inf: the largest nonfinite_bits over it, an
    # integer max LLVM vectorises. Checked here rather than before the call: P2's predict
    # took 3 us less at 1 row and 7 at 32 without that second Numba call (alternated runs)
    flat = x.reshape(x.size)
    seen = nonfinite_bits(cast_like(0.0, flat))
    for i in range(flat.size):
        seen = max(seen, nonfinite_bits(flat[i]))
    return any_nonfinite(seen, flat)


@njit(inline="always", nogil=True, error_model="numpy")
def _final_rows(out, final, lo, hi):
    # the output step on rows lo .. hi of out, in place
    m = out.shape[1]
    for i in range(lo, hi):
        if final == OUT_SOFTMAX:       # loss.softmax_forward's row
            softmax_row(out, out, i)
        elif final == OUT_SIGMOID:     # dense.act_forward with SIGMOID
            for j in range(m):
                out[i, j] = act_value(out[i, j], SIGMOID, 0.0)


@njit(inline="always", nogil=True, error_model="numpy")
def _block(out, x, params, layout, alphas, final, scratch, lo, hi, tiles, gemm):
    # rows lo .. hi of out = final(chain(x)); layer l's W (D, M) and b (M,) are in params at
    # layout[l] = (W's offset, D, M, b's offset, activation code); scratch (2, >= N * widest
    # hidden M): layer l writes this block's span of buffer l % 2; each layer by
    # tile_gemm.py's tiles (``tiles`` and at most TILE_ROWS rows) or by OpenBLAS's gemm
    rows = hi - lo
    buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=out.dtype)
    n = out.shape[0]
    a = x[lo:hi]
    last = layout.shape[0] - 1
    for l in range(last + 1):
        w_off, d, m, b_off, code = layout[l]
        w = params[w_off:w_off + d * m].reshape((d, m))
        b = params[b_off:b_off + m]
        if l == last:
            z = out[lo:hi]
        else:
            z = block_span(scratch[l % 2], n, lo, hi, m)
        if tiles and rows <= TILE_ROWS:
            tile_gemm.dense_rows(z, a, w, b, code, alphas[l], buf)
        else:
            gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, rows, m, d, 1.0, a.ctypes.data, d, w.ctypes.data, m, 0.0,
                 z.ctypes.data, m)
            for i in range(rows):
                tile_gemm.bias_act_row(z[i], z[i], b, code, alphas[l])
        a = z
    _final_rows(out, final, lo, hi)


def _dense_chain(out, x, params, layout, alphas, final, scratch, edges, tiles, gemm):
    # out (N, M_last) = final(the chain on x (N, D)), block t = rows edges[t] .. edges[t + 1];
    # False, and nothing computed, when x holds a NaN or Inf
    if _nonfinite(x):
        return False
    for t in prange(edges.size - 1):
        _block(out, x, params, layout, alphas, final, scratch, edges[t], edges[t + 1], tiles, gemm)
    return True


dense_chain_twins = twins(_dense_chain)


@njit(inline="always", nogil=True)
def column_parts(n, d, m, parts):
    """(width, count) of the column parts of an (n rows, D, M) layer for ``parts`` threads:
    M cut into parts of ``width`` columns (a multiple of COLUMN_STEP; the last may be
    narrower); count 1, the whole layer, where it has fewer than PARALLEL_MACS
    multiply-adds: a parallel region costs more than it saves there."""
    if n * d * m < PARALLEL_MACS:
        return m, 1
    width = -(-m // parts)
    width = -(-width // COLUMN_STEP) * COLUMN_STEP
    return width, -(-m // width)


def _dense_chain_columns(out, x, params, layout, alphas, final, scratch, parts):
    # out (N, M_last) = final(the chain on x (N, D)) on the tiles, layer after layer, each
    # layer's columns cut into column_parts: all N rows of a layer before the next one (the
    # end of a parallel region between them); layer l writes buffer l % 2 of scratch as (N, M).
    # False, and nothing computed, when x holds a NaN or Inf
    if _nonfinite(x):
        return False
    n = x.shape[0]
    a = x
    last = layout.shape[0] - 1
    for l in range(last + 1):
        w_off, d, m, b_off, code = layout[l]
        w = params[w_off:w_off + d * m].reshape((d, m))
        b = params[b_off:b_off + m]
        z = out if l == last else scratch[l % 2][:n * m].reshape((n, m))
        width, count = column_parts(n, d, m, parts)
        if count > 1:
            for t in prange(count):
                buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=out.dtype)
                tile_gemm.dense_columns(z, a, w, b, code, alphas[l], buf, t * width, min(m, (t + 1) * width))
        else:
            buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=out.dtype)
            tile_gemm.dense_rows(z, a, w, b, code, alphas[l], buf)
        a = z
    _final_rows(out, final, 0, n)
    return True


dense_chain_columns_twins = twins(_dense_chain_columns)


def layer_layout(params, dense):
    """(L, 5) int64: each Dense layer's (W's offset, D, M, b's offset, activation code) in the
    flat parameter buffer ``params`` that its W and b are views of."""
    base, item = params.ctypes.data, params.itemsize
    return np.array([((layer.params[0].ctypes.data - base) // item, layer.in_features, layer.out_features,
                      (layer.params[1].ctypes.data - base) // item, layer.act_code) for layer in dense],
                    dtype=np.int64)


def uses_blas(edges):
    """Whether the row blocks at ``edges`` call BLAS (one over TILE_ROWS rows, or no tiles here)."""
    return not TILES or int(np.diff(edges).max()) > TILE_ROWS


def parallel_parts(n, layout, parts):
    """How many threads a tiles-only call of n rows keeps busy at once (1: no parallel region)."""
    return max(column_parts(n, d, m, parts)[1] for _, d, m, _, _ in layout.tolist())


def dense_chain_forward(out, x, params, layout, alphas, final, scratch, edges, parallel, blas, parts):
    """out (N, M) = final(chain(x)) for x (N, D) C-contiguous in the dtype of params, the flat
    buffer the layers' weights are views of (``layer_layout``); alphas (L,) their activations'
    alpha; scratch (2, >= N * widest hidden M).

    ``blas``, uses_blas(edges): a row block calls BLAS; then the call runs as the row blocks
    at ``edges`` (from row_edges), and NumPy's OpenBLAS must be held to one thread meanwhile
    (blas.begin_inference). Otherwise every layer runs on the tiles, its columns cut into
    ``column_parts`` for ``parts`` threads: each thread reads its own columns of W, where row
    blocks on two cores would each read all of W (P2's 32 rows: 89-91 against 97-101 us, on
    the project's Intel Xeon). ``parallel``: the blocks or the column parts on Numba's
    threads, else one after the other on this one; the same arithmetic either way.
    Returns False, having computed nothing, when x holds a NaN or Inf."""
    if blas:
        kernels = dense_chain_twins.parallel if parallel and edges.size > 2 else dense_chain_twins.serial
        return kernels(out, x, params, layout, alphas, final, scratch, edges, TILES, _GEMM[out.dtype.char])
    kernels = dense_chain_columns_twins.parallel if parallel else dense_chain_columns_twins.serial
    return kernels(out, x, params, layout, alphas, final, scratch, parts)


cover_dependencies(__name__, activation, loss, openblas, tile_gemm, _codes)
