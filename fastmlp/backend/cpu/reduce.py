"""Column reductions on the CPU: their float64 scratch, and a fixed-order float64 sum.

A reduction over N rows sums blocks of rows into the rows of a (REDUCTION_BLOCKS, width)
float64 scratch, one block a thread, then adds the rows in order: the blocks depend on
the shape only, so the sums do not depend on the thread count. The scratch is kept here,
one buffer per width and thread, reused call to call.
"""
import threading

import numpy as np
from numba import njit

from .jit import cover_dependencies

# Row blocks of the column reductions (bias gradients, batch-norm sums): the first
# dimension of their scratch.
REDUCTION_BLOCKS = 64

_local = threading.local()   # each thread its own scratch: threads that compute at once never share it


def partial_sums(width):
    """The (REDUCTION_BLOCKS, width) float64 scratch of a column reduction, this thread's."""
    try:
        mine = _local.partials
    except AttributeError:
        mine = _local.partials = {}
    buf = mine.get(width)
    if buf is None:
        buf = mine[width] = np.empty((REDUCTION_BLOCKS, width), dtype=np.float64)
    return buf


def reduction_scratch_nbytes(width):
    """Bytes of ``partial_sums(width)``, kept for as long as the process runs."""
    return REDUCTION_BLOCKS * width * 8


@njit(inline="always", error_model="numpy")
def sum4(v):
    # the sum of the 1-D v in float64, in four interleaved partial sums: a fixed order
    # (so deterministic) that does not wait on one add at a time
    s0 = s1 = s2 = s3 = 0.0
    n4 = v.size - v.size % 4
    for t in range(0, n4, 4):
        s0 += v[t]
        s1 += v[t + 1]
        s2 += v[t + 2]
        s3 += v[t + 3]
    for t in range(n4, v.size):
        s0 += v[t]
    return (s0 + s1) + (s2 + s3)


cover_dependencies(__name__)
