"""A Dense layer's forward pass in training on the register tiles: a = act(x @ W + b).

During a fit whose OpenBLAS jobs run on Numba's threads (blas_pool.py), a Dense
layer of at most TRAIN_TILE_ROWS rows runs as dense_chain.py runs a prediction's
layer: its columns cut into ``column_parts``, one part a thread, each part
tile_gemm.py's register tiles over all the rows with the bias and the activation
applied on the way out. BLAS copies ("packs") W on every call; the tiles read it
where it is. On the project's 2-core Intel Xeon (2 threads, medians of 200 calls,
``dense_forward`` against OpenBLAS's product then dense.bias_act_forward):

    layer          64 rows       128 rows      256 rows
    784 x 256    120 / 154 us  238 / 287 us  484 / 499 us
    256 x 256     47 / 76       83 / 118     166 / 193
    256 x 10       7 / 9        15 / 19       31 / 37

Elsewhere (no AVX-512, a bigger batch, outside a fit, operands BLAS would need
to copy) dense.dense_forward runs the product then the bias and activation, as on
the GPU. A tile's
output is one chain of fused multiply-adds over D in order whatever the parts,
so a step gives the same bits on any number of threads; it differs from
OpenBLAS's product in the last bits.
"""
import numpy as np
from numba import prange

from . import blas_pool, blas_threads, dense_chain, tile_gemm
from .dense_chain import column_parts
from .jit import cover_dependencies, twins

TRAIN_TILE_ROWS = 256
TILES = tile_gemm.available()


def _dense_tiles(a, x, w, b, code, alpha, parts):
    # a (N, M) = act(x (N, D) @ w (D, M) + b), M cut into column_parts for ``parts`` threads
    n, d = x.shape
    m = w.shape[1]
    width, count = column_parts(n, d, m, parts)
    for t in prange(count):
        buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=a.dtype)
        tile_gemm.dense_columns(a, x, w, b, code, alpha, buf, t * width, min(m, (t + 1) * width))


dense_tiles_twins = twins(_dense_tiles)


def forward(a, x, W, b, code, alpha):
    """a (N, M) = act(x (N, D) @ W (D, M) + b) on the tiles, True; False (nothing done) where
    they don't take it (dense.dense_forward then runs the product and the epilogue)."""
    if not (TILES and blas_pool.active() and x.shape[0] <= TRAIN_TILE_ROWS
            and a.dtype == x.dtype == W.dtype == b.dtype
            and a.flags.c_contiguous and x.flags.c_contiguous and W.flags.c_contiguous):
        return False
    parts = blas_threads.count()
    n, d = x.shape
    whole = n * d * W.shape[1] < dense_chain.PARALLEL_MACS     # one part: no parallel region
    (dense_tiles_twins.serial if parts < 2 or whole else dense_tiles_twins.parallel)(a, x, W, b, code, alpha, parts)
    return True


cover_dependencies(__name__, dense_chain, tile_gemm)
