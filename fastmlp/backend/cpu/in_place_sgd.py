"""Plain SGD steps without the undo copy, where a bound proves that they stay finite.

Every update kernel keeps the parameters from before it in ``prev`` (fastmlp/params.py), so
that a step which made a parameter NaN or Inf can be undone. The copy is a third stream of
memory beside the parameters and the gradient: on the project's 2-core VM (Intel Xeon, KVM)
P2's update of 269,322 float32 parameters took 84 us in the step against 36 with its data in
cache, and P2's step at batch 64 without the copy 0.455 against 0.509 ms (one process, the
two alternating epoch by epoch).

A plain SGD step (no momentum) makes a finite parameter w non-finite only through a
non-finite gradient or an overflow. With every |w| < W and every gradient finite with
|g| < G, the new value w - lr * (g + l1 sign(w) + 2 l2 w) is at most W + lr (G + l1 + 2 l2 W)
in size, each operation rounding by at most a factor of (1 + 2^-23). So a step

- reads the largest exponent of the gradient (``exponent_bits``: integer operations in one
  pass that LLVM vectorises; the top bit says whether a value is NaN or Inf);
- takes the parameters' from the last in-place update, which returns the largest exponent
  it wrote (at the first step of each epoch, when callbacks or the user may have written the
  weights, from one pass over them);
- updates in place (``sgd_in_place``: optim.sgd_update's arithmetic without momentum, the
  same bits) when each of the four terms stays below 2^(largest exponent - 5), and through
  optim.sgd_update, copy and all, when not.

The trainer (fastmlp/training.py) hands a fit an ``UndoFreeSGD`` only where nothing else
asks for the copy: the step's loss is read before the update (a non-finite loss takes the
copying kernel, so that the trainer can undo the step), no layer keeps a state that the
trainer checks after the step (BatchNorm's running statistics), and no callback runs between
the steps.
"""
import math

import numpy as np
from numba import njit, prange

from . import optim
from .jit import any_nonfinite, cast_like, cover_dependencies, nonfinite_bits, pick, twins
from .optim import _reg

# (mantissa bits, exponent bias, largest exponent + 1) of the parameter dtypes
_FORMAT = {np.dtype(np.float32): (23, 127, 128), np.dtype(np.float64): (52, 1023, 1024)}
MARGIN = 6   # each of the bound's four terms below 2^(largest exponent + 1 - MARGIN)


PIECE = 8192   # elements: the segments are cut into pieces of at most this many, one parallel loop over them


def pieces(seg_start, seg_stop, seg_l1, seg_l2):
    """The segments cut into pieces of at most PIECE elements, each starting on a multiple of
    16 elements: (lo, hi, l1, l2) arrays, one entry a piece. One parallel loop over the pieces
    costs one parallel region, where one loop a segment (P2: six, four of them biases of 10
    to 256 values) cost six."""
    lo, hi, l1, l2 = [], [], [], []
    for a, b, c1, c2 in zip(seg_start, seg_stop, seg_l1, seg_l2):
        for p in range(int(a), int(b), PIECE):
            lo.append(p)
            hi.append(min(int(b), p + PIECE))
            l1.append(float(c1))
            l2.append(float(c2))
    return (np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64), np.array(l1), np.array(l2))


@njit(inline="always", error_model="numpy")
def _piece_bits(a):
    seen = nonfinite_bits(cast_like(0.0, a))
    for i in range(a.size):
        seen = max(seen, nonfinite_bits(a[i]))
    return seen


def _exponent_bits(arr, lo, hi):
    # the largest nonfinite_bits of arr's elements in the pieces (jit.nonfinite_bits)
    seen = nonfinite_bits(cast_like(0.0, arr))
    for p in prange(lo.size):
        seen = max(seen, _piece_bits(arr[lo[p]:hi[p]]))
    return seen


@njit(inline="always", error_model="numpy")
def _sgd_piece(w, g, lr, l1, l2x2):
    # optim._sgd_loop with momentum 0, without writing prev: the same arithmetic. Unregularised,
    # _reg(wi, 0, 0) = 0 * sign(wi) + 0 * wi is 0 * wi for finite wi (-0 exactly when wi's sign
    # bit is set): the same bits without np.sign's selects (19 against 26 us alone for P2)
    seen = nonfinite_bits(cast_like(0.0, w))
    if l1 == 0 and l2x2 == 0:
        zero = cast_like(0.0, w)
        for i in range(w.size):
            wi = w[i]
            wn = wi - lr * (g[i] + zero * wi)
            w[i] = wn
            seen = max(seen, nonfinite_bits(wn))
    else:
        for i in range(w.size):
            wi = w[i]
            wn = wi - lr * (g[i] + _reg(wi, l1, l2x2))
            w[i] = wn
            seen = max(seen, nonfinite_bits(wn))
    return seen


def _sgd_in_place(params, bad, grads, lo, hi, piece_l1, piece_l2, lr):
    # params -= lr * (grads + the L1/L2 gradient), piece by piece; returns the largest
    # nonfinite_bits of the new parameters. bad (1,) += the non-finite ones, which the bound
    # that let this kernel run rules out (kept as the other update kernels keep it)
    seen = nonfinite_bits(cast_like(0.0, params))
    lr_ = cast_like(lr, params)
    for p in prange(lo.size):
        seen = max(seen, _sgd_piece(params[lo[p]:hi[p]], grads[lo[p]:hi[p]], lr_,
                                    cast_like(piece_l1[p], params), cast_like(2.0 * piece_l2[p], params)))
    if any_nonfinite(seen, params):
        n = 0
        for p in range(lo.size):
            for i in range(lo[p], hi[p]):
                d = params[i] - params[i]
                n += d != d
        bad[0] += n
    return seen


exponent_bits_twins = twins(_exponent_bits)
sgd_in_place_twins = twins(_sgd_in_place)


def exponent_bits(arr, lo, hi):
    """The largest jit.nonfinite_bits of arr's elements in the pieces [lo[p], hi[p]), as an int."""
    return int(pick(exponent_bits_twins, arr.size)(arr, lo, hi))


def sgd_in_place(params, bad, grads, lo, hi, piece_l1, piece_l2, lr):
    """optim.sgd_update without momentum and without the copy to prev, over ``pieces``;
    returns the largest jit.nonfinite_bits of the new parameters, as an int."""
    return int(pick(sgd_in_place_twins, params.size)(params, bad, grads, lo, hi, piece_l1, piece_l2, lr))


def log2_bound(bits, dtype):
    """e such that every value whose nonfinite_bits are at most ``bits`` is below 2^e in size;
    None when one of them may be NaN or Inf."""
    mant, bias, _ = _FORMAT[np.dtype(dtype)]
    if bits >> (8 * np.dtype(dtype).itemsize - 1):   # the top bit: NaN or Inf
        return None
    # bits = (exponent field + 1) << mant: the field is (bits >> mant) - 1, and a value with
    # that field is below 2^(field - bias + 1)
    return (bits >> mant) - bias


class UndoFreeSGD:
    """A fit's plain SGD steps on ``flat`` (params.FlatParameters), in place when the bound
    allows. ``stats`` is the model's (2,) running loss sum and correct count, read before
    each update: a non-finite loss takes the copying kernel."""

    def __init__(self, flat, stats):
        self.flat, self.stats = flat, stats
        self.dtype = flat.params.dtype
        _, _, self.top = _FORMAT[self.dtype]
        self.pieces = pieces(*flat.seg)
        self.l1, self.l2 = float(np.max(self.pieces[2], initial=0.0)), float(np.max(self.pieces[3], initial=0.0))
        self.w_log2 = None          # the parameters' bound, when the last write was ours
        self._lr = self._log2_lr = None
        self.steps = self.in_place = 0

    def forget(self):
        """The parameters may have been written from outside: read their bound again."""
        self.w_log2 = None

    def safe(self, lr, g_log2):
        """Whether w - lr (g + l1 sign(w) + 2 l2 w) stays finite for |w| < 2^w_log2 and
        |g| < 2^g_log2: each term below 2^(largest exponent + 1 - MARGIN)."""
        if lr != self._lr:
            self._lr, self._log2_lr = lr, math.log2(lr)
        limit, w, lr2 = self.top - MARGIN, self.w_log2, self._log2_lr   # top: largest exponent + 1
        # the coefficients themselves finite in the dtype too (a float32 lr of 1e40 is inf)
        return (w < limit and lr2 < limit and lr2 + g_log2 < limit
                and (not self.l1 or max(0.0, lr2) + math.log2(self.l1) < limit)
                and (not self.l2 or max(0.0, lr2) + math.log2(2.0 * self.l2) + max(0, w) < limit))

    def sgd(self, lr):
        """One plain SGD step (no momentum) at rate lr: in place, returning True, where the
        bound proves it finite; else nothing done, False (the caller runs sgd_update)."""
        flat = self.flat
        self.steps += 1
        lo, hi, l1, l2 = self.pieces
        if not math.isfinite(self.stats[0]):     # the trainer will undo this step: keep the copy
            self.w_log2 = None
            return False
        if self.w_log2 is None:
            self.w_log2 = log2_bound(exponent_bits(flat.params, lo, hi), self.dtype)
            if self.w_log2 is None:
                return False
        g_log2 = log2_bound(exponent_bits(flat.grads, lo, hi), self.dtype)
        if g_log2 is None or not self.safe(float(lr), g_log2):
            self.w_log2 = None                 # sgd_update writes them: read them again next time
            return False
        self.w_log2 = log2_bound(sgd_in_place(flat.params, flat.bad, flat.grads, lo, hi, l1, l2, lr),
                                 self.dtype)
        self.in_place += 1
        return True


cover_dependencies(__name__, optim)
