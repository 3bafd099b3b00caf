"""The Dense layer epilogues on the CPU: the Numba twins of kernels/dense.cu and their ops.

Must match reference.bias_act_forward, act_backward_bias_grad, act_forward and
act_backward. Each op runs the serial or the parallel twin of its kernel (jit.pick).
"""
from numba import prange

from . import activation, reduce
from .activation import act_grad, act_value
from .jit import cast_like, cover_dependencies, pick, twins
from .reduce import partial_sums


def _bias_act_forward(z, b, code, alpha):
    # z (N, M), updated in place to act(z + b); b (M,)
    n, m = z.shape
    for i in prange(n):
        for j in range(m):
            z[i, j] = act_value(z[i, j] + b[j], code, alpha)


bias_act_forward_twins = twins(_bias_act_forward)


def bias_act_forward(z, b, code, alpha):
    # z (N, M) in place; b (M,)
    pick(bias_act_forward_twins, z.size)(z, b, code, alpha)


def _act_backward_bias_grad(dz, db, partial, da, a, code, alpha):
    # dz (N, M) = da * act'(a); db (M,) = sum over rows of dz; dz may be da (in place).
    # partial is a (BLOCKS, M) float64 scratch owned by the caller: blocks of at
    # least 32 rows are summed into their own row, then the rows in order, so the
    # result depends on N only, not on the thread count. Loops are kept to two
    # arrays each: LLVM vectorises them only when it can rule out aliasing, which
    # an in-place call (dz is da) defeats unless that case has its own loop.
    n, m = dz.shape
    one, zero, al = cast_like(1.0, dz), cast_like(0.0, dz), cast_like(alpha, dz)
    same = dz.ctypes.data == da.ctypes.data
    nblocks = max(1, min(partial.shape[0], n // 32))
    for blk in prange(nblocks):
        acc = partial[blk]
        acc[:] = 0.0
        for i in range(blk * n // nblocks, (blk + 1) * n // nblocks):
            dzr, ar = dz[i], a[i]
            if same:
                for j in range(m):
                    dzr[j] = dzr[j] * act_grad(ar[j], code, al, one, zero)
            else:
                dar = da[i]
                for j in range(m):
                    dzr[j] = dar[j] * act_grad(ar[j], code, al, one, zero)
            for j in range(m):
                acc[j] += dzr[j]
    total = partial[0]
    for blk in range(1, nblocks):
        row = partial[blk]
        for j in range(m):
            total[j] += row[j]
    for j in range(m):
        db[j] = total[j]


act_backward_bias_grad_twins = twins(_act_backward_bias_grad)


def act_backward_bias_grad(dz, db, da, a, code, alpha):
    # dz, da, a (N, M); db (M,)
    pick(act_backward_bias_grad_twins, dz.size)(dz, db, partial_sums(dz.shape[1]), da, a, code, alpha)


def _act_forward(y, x, code, alpha):
    # y, x flat views of the same size
    for i in prange(x.size):
        y[i] = act_value(x[i], code, alpha)


act_forward_twins = twins(_act_forward)


def act_forward(y, x, code, alpha):
    # y, x any shape (the same)
    pick(act_forward_twins, x.size)(y.reshape(-1), x.reshape(-1), code, alpha)


def _act_backward(dx, dy, y, code, alpha):
    # dx, dy, y flat views of the same size; the derivative in float64
    for i in prange(dx.size):
        dx[i] = dy[i] * act_grad(y[i], code, alpha, 1.0, 0.0)


act_backward_twins = twins(_act_backward)


def act_backward(dx, dy, y, code, alpha):
    # dx = dy * act'(y), any shape; y is the forward output
    pick(act_backward_twins, dx.size)(dx.reshape(-1), dy.reshape(-1), y.reshape(-1), code, alpha)


cover_dependencies(__name__, activation, reduce)
