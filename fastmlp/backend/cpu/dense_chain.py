"""Inference of a chain of Dense layers in one Numba call: fastmlp/inference.py's CPU kernel.

``dense_chain_forward`` runs every layer of an MLP, GEMM, bias and activation,
then the output's softmax, sigmoid or copy, without coming back to Python
between layers, in one of two ways:

- On the register tiles (tile_gemm.py, a CPU with AVX-512), when the batch is
  small enough that every row block below has at most TILE_ROWS rows: first a
  column phase, layer after layer over all the rows, each layer's columns cut
  into parts, one per thread (``column_parts``), so that each thread reads only
  its own columns of a large W; a layer starts when the last one is done (the
  end of a parallel region). Then, from the layer where the rest of the chain's
  weights are small enough to be read whole by every core (``row_phase``), a
  row phase: the row blocks below in one parallel region, each running those
  layers and the output step on its own rows.
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
# A tiles-only call runs its hidden layers after the first as row blocks, all of them in one
# parallel region, once their weights take at most ROW_PHASE_BYTES: each core then reads them
# whole from its own cache, where cutting their columns would have each core read the half of
# every input row that the other core has just written, and end a parallel region at every
# layer. The first layer's input is the caller's X, which no core has written, so it stays
# cut by columns unless the whole chain's weights take at most ALL_ROWS_BYTES. Interleaved
# medians on the project's Intel Xeon, us a call at 32 rows, the rule's choice against columns
# only: P2 784-256-256-10 60.9 / 66.0 (all three layers by rows 66.2); 784-512-512-10 157.5 /
# 160.5; 100-128-128-128-5 15.0 / 25.0; 400-400-10 43.0 / 43.9; 1024-128-10 34.9 / 35.5 (all
# by rows 34.5); 3072-1024-256-10 1169 / 1230.
ROW_PHASE_BYTES = 3 << 19
ALL_ROWS_BYTES = 1 << 19


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


@njit(inline="always", nogil=True)
def strided_rows(scratch, n, m):
    """The (n, m) layer output of a tiles-only call in one scratch buffer (1-D, at least
    n * W long for W >= m): row i at scratch[i * W], W = len(scratch) // n, whatever the
    layer's width, so the rows of one block of a row phase stay its own in every layer."""
    w = scratch.size // n
    return scratch[:n * w].reshape((n, w))[:, :m]


def _dense_chain_tiles(out, x, params, layout, alphas, final, scratch, parts, first, edges):
    # out (N, M_last) = final(the chain on x (N, D)) on the tiles. The column phase, layers
    # 0 .. first - 1: all N rows of a layer before the next one (the end of a parallel region
    # between them), its columns cut into column_parts. The row phase, layers first .. last:
    # the row blocks at ``edges`` in one parallel region, each running those layers and the
    # final step on its own rows. Layer l writes buffer l % 2 of scratch (strided_rows).
    # False, and nothing computed, when x holds a NaN or Inf
    if _nonfinite(x):
        return False
    n = x.shape[0]
    a = x
    last = layout.shape[0] - 1
    for l in range(first):
        w_off, d, m, b_off, code = layout[l]
        w = params[w_off:w_off + d * m].reshape((d, m))
        b = params[b_off:b_off + m]
        z = out if l == last else strided_rows(scratch[l % 2], n, m)
        width, count = column_parts(n, d, m, parts)
        if count > 1:
            for t in prange(count):
                buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=out.dtype)
                tile_gemm.dense_columns(z, a, w, b, code, alphas[l], buf, t * width, min(m, (t + 1) * width))
        else:
            buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=out.dtype)
            tile_gemm.dense_rows(z, a, w, b, code, alphas[l], buf)
        a = z
    if first > last:
        _final_rows(out, final, 0, n)
        return True
    for t in prange(edges.size - 1):
        lo, hi = edges[t], edges[t + 1]
        buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=out.dtype)
        rows = a[lo:hi]
        for l in range(first, last + 1):
            w_off, d, m, b_off, code = layout[l]
            w = params[w_off:w_off + d * m].reshape((d, m))
            b = params[b_off:b_off + m]
            z = out[lo:hi] if l == last else strided_rows(scratch[l % 2], n, m)[lo:hi]
            tile_gemm.dense_rows(z, rows, w, b, code, alphas[l], buf)
            rows = z
        _final_rows(out, final, lo, hi)
    return True


dense_chain_tiles_twins = twins(_dense_chain_tiles)


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


def row_phase(n, layout, itemsize, threads):
    """The first layer that a tiles-only call of n rows runs in its row phase, as the row
    blocks of row_edges(n, threads): 0 when all the layers' weights (``itemsize`` bytes an
    element) take at most ALL_ROWS_BYTES, else the first layer after the input layer from
    which the rest take at most ROW_PHASE_BYTES; the number of layers (no row phase) when
    the batch is a single block or no such layer exists."""
    count = layout.shape[0]
    if row_edges(n, threads).size <= 2:
        return count
    sizes = [d * m * itemsize for _, d, m, _, _ in layout.tolist()]
    if sum(sizes) <= ALL_ROWS_BYTES:
        return 0
    first, total = count, 0
    for l in range(count - 1, 0, -1):
        total += sizes[l]
        if total > ROW_PHASE_BYTES:
            break
        first = l
    return first


def parallel_parts(n, layout, parts, first):
    """How many threads a tiles-only call of n rows keeps busy at once (1: no parallel
    region): its column phase's parts, or its row phase's blocks (``first``: row_phase's)."""
    busy = [column_parts(n, d, m, parts)[1] for _, d, m, _, _ in layout[:first].tolist()]
    if first < layout.shape[0]:
        busy.append(row_edges(n, parts).size - 1)
    return max(busy)


def dense_chain_forward(out, x, params, layout, alphas, final, scratch, edges, parallel, blas, parts, first):
    """out (N, M) = final(chain(x)) for x (N, D) C-contiguous in the dtype of params, the flat
    buffer the layers' weights are views of (``layer_layout``); alphas (L,) their activations'
    alpha; scratch (2, >= N * widest hidden M); edges: row_edges(N, parts).

    ``blas``, uses_blas(edges): a row block calls BLAS; then the call runs as the row blocks
    at ``edges``, and NumPy's OpenBLAS must be held to one thread meanwhile
    (blas.begin_inference). Otherwise every layer runs on the tiles: layers 0 .. first - 1
    (``first``: row_phase's) each with its columns cut into ``column_parts`` for ``parts``
    threads, every thread reading only its own columns of W; the layers from ``first`` on,
    whose weights are small enough to be read whole on every core, as the row blocks at
    ``edges``, each running them all on its rows in one parallel region. ``parallel``: the
    parts and blocks on Numba's threads, else one after the other on this one; the same
    arithmetic either way. Returns False, having computed nothing, when x holds a NaN or Inf."""
    if blas:
        kernels = dense_chain_twins.parallel if parallel and edges.size > 2 else dense_chain_twins.serial
        return kernels(out, x, params, layout, alphas, final, scratch, edges, TILES, _GEMM[out.dtype.char])
    kernels = dense_chain_tiles_twins.parallel if parallel else dense_chain_tiles_twins.serial
    return kernels(out, x, params, layout, alphas, final, scratch, parts, first, edges)


cover_dependencies(__name__, activation, loss, openblas, tile_gemm, _codes)
