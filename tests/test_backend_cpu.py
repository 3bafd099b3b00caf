"""Every Numba kernel against the NumPy float64 reference op.

Each op is checked three ways: through ``fastmlp.backend.cpu`` (which picks a
twin by work size) and through both the serial and the parallel twin of its
family module (``cpu/dense.py``, ``cpu/loss.py``, ...). float64 must agree with the reference to 1e-12 relative;
float32 kernel output is compared with the reference run in float64 on the
same float32 inputs, to 1e-5 relative.
"""
import math

import numpy as np
import pytest

from fastmlp.backend import codes, cpu
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import blas, blas_threads, data, dense, jit, loss, optim, reduce

TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]
SHAPES = [(1, 1), (7, 13), (129, 3), (3, 129), (64, 33), (260, 130)]
CODES = {"identity": codes.IDENTITY, "relu": codes.RELU, "leaky_relu": codes.LEAKY_RELU, "tanh": codes.TANH,
         "sigmoid": codes.SIGMOID}
ALPHA = 0.15


def rel(got, ref):
    """||got - ref|| / ||ref|| in float64 (absolute when ref is all zero)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    den = np.linalg.norm(ref.ravel())
    num = np.linalg.norm((got - ref).ravel())
    return float(num / den) if den > 0 else float(num)


def _with_scratch(kernel):
    # the raw bias-gradient kernels take their float64 scratch after db
    def call(dz, db, da, a, code, alpha):
        kernel(dz, db, np.full((reduce.REDUCTION_BLOCKS, dz.shape[1]), np.nan), da, a, code, alpha)
    return call


def twins(name):
    """The (serial, parallel) kernels of one op, from its family module."""
    return next(getattr(m, name + "_twins") for m in (dense, loss, optim, data) if hasattr(m, name + "_twins"))


def impls(name):
    """(label, callable) for the dispatcher and both twins of one op."""
    serial, parallel = twins(name)
    if name == "act_backward_bias_grad":
        serial, parallel = _with_scratch(serial), _with_scratch(parallel)
    return [("cpu", getattr(cpu, name)), ("serial", serial), ("parallel", parallel)]


IMPL_IDS = ["cpu", "serial", "parallel"]


def _pick(name, which):
    return dict(impls(name))[which]


def check(label, got, ref, dtype):
    err = rel(got, ref)
    print(f"{label}: rel err {err:.2e}")
    assert err <= TOL[dtype], f"{label}: rel err {err:.2e} > {TOL[dtype]:.0e}"
    return err


# --------------------------------------------------------------------------- activations

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_act_forward(shape, code, dtype, rng):
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    z.ravel()[::5] = 0.0                     # exact zeros: the kink of relu / leaky relu
    b = rng.standard_normal(shape[1]).astype(dtype)
    b[0] = 0.0
    # the kernel adds z + b in the input dtype; the reference sees the same rounded sum
    ref = R.act((z + b).astype(np.float64), CODES[code], ALPHA)
    for which, fn in impls("bias_act_forward"):
        got = z.copy()
        fn(got, b, CODES[code], ALPHA)
        assert got.dtype == dtype
        check(f"bias_act_forward {which} {code} {shape} {dtype.__name__}", got, ref, dtype)


def _act_output(shape, code, dtype, rng):
    """A genuine activation output a = act(x) (the backward reads the derivative from it)."""
    x = rng.standard_normal(shape) * 2
    x.ravel()[::7] = 0.0
    return R.act(x, CODES[code], ALPHA).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_act_backward_bias_grad(shape, code, dtype, rng):
    a = _act_output(shape, code, dtype, rng)
    da = rng.standard_normal(shape).astype(dtype)
    dz_ref, db_ref = np.empty(shape), np.empty(shape[1])
    R.act_backward_bias_grad(dz_ref, db_ref, da.astype(np.float64), a.astype(np.float64),
                             CODES[code], ALPHA)
    for which, fn in impls("act_backward_bias_grad"):
        dz, db = np.full(shape, np.nan, dtype), np.full(shape[1], np.nan, dtype)
        fn(dz, db, da, a, CODES[code], ALPHA)
        label = f"act_backward_bias_grad {which} {code} {shape} {dtype.__name__}"
        check(label + " dz", dz, dz_ref, dtype)
        check(label + " db", db, db_ref, dtype)
        # Dense.backward passes the same array as da and dz: in place gives the same result
        inplace, db2 = da.copy(), np.empty(shape[1], dtype)
        fn(inplace, db2, inplace, a, CODES[code], ALPHA)
        np.testing.assert_array_equal(inplace, dz)
        np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (129, 3), (260, 130)])
def test_act_forward_and_backward(shape, code, dtype, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x.ravel()[::5] = 0.0
    yref = R.act(x.astype(np.float64), CODES[code], ALPHA)
    dy = rng.standard_normal(shape).astype(dtype)
    for which, fwd in impls("act_forward"):
        bwd = _pick("act_backward", which)
        flat = which != "cpu"          # the twins take flat views; the op reshapes
        y = np.empty_like(x)
        fwd(y.reshape(-1) if flat else y, x.reshape(-1) if flat else x, CODES[code], ALPHA)
        label = f"act {which} {code} {shape} {dtype.__name__}"
        check(label + " forward", y, yref, dtype)
        dx = np.empty_like(dy)
        bwd(*(v.reshape(-1) if flat else v for v in (dx, dy, y)), CODES[code], ALPHA)
        ref = np.empty(shape)
        R.act_backward(ref, dy.astype(np.float64), y.astype(np.float64), CODES[code], ALPHA)
        check(label + " backward", dx, ref, dtype)


def test_sigmoid_and_tanh_saturate_without_overflow():
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4])
    for code, lo, hi in ((codes.SIGMOID, 0.0, 1.0), (codes.TANH, -1.0, 1.0)):
        for _, fn in impls("act_forward"):
            y = np.empty_like(x)
            fn(y, x, code, 0.0)
            assert np.all(np.isfinite(y)) and y[0] == lo and y[-1] == hi


# --------------------------------------------------------------------------- losses

def _logits(shape, dtype, rng, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


LOSS_SHAPES = [(1, 1), (1, 2), (7, 13), (129, 3), (3, 129), (300, 110)]


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (129, 3), (3, 129), (300, 110)])
def test_softmax_forward(shape, dtype, which, rng):
    logits = _logits(shape, dtype, rng)
    p = np.empty_like(logits)
    _pick("softmax_forward", which)(p, logits)
    ref = np.empty(shape)
    R.softmax_forward(ref, logits.astype(np.float64))
    check(f"softmax_forward {which} {shape} {dtype.__name__}", p, ref, dtype)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=TOL[dtype] * 10)


def _run_loss(name, which, dtype, logits, targets, scale, stats0):
    dl = np.full(logits.shape, np.nan, dtype)
    stats = stats0.copy()
    _pick(name, which)(dl, stats, logits, targets, scale)
    dref, sref = np.empty(logits.shape), stats0.copy()
    tref = targets if targets.dtype == np.int64 else targets.astype(np.float64)
    getattr(R, name)(dref, sref, logits.astype(np.float64), tref, scale)
    return dl, stats, dref, sref


def _check_loss(label, dtype, dl, stats, dref, sref, stats0):
    check(label + " dlogits", dl, dref, dtype)
    check(label + " loss sum", stats[0] - stats0[0], sref[0] - stats0[0], dtype)
    assert stats[1] == pytest.approx(sref[1], rel=1e-12, abs=1e-12), label + " correct count"


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [s for s in LOSS_SHAPES if s[1] > 1])
def test_softmax_xent(shape, dtype, which, rng):
    logits = _logits(shape, dtype, rng)
    labels = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
    stats0 = np.array([1.25, 3.0])          # accumulates into a non-zero stats
    out = _run_loss("softmax_xent", which, dtype, logits, labels, 1.0 / shape[0], stats0)
    _check_loss(f"softmax_xent {which} {shape} {dtype.__name__}", dtype, *out, stats0)


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
def test_bce_logits(shape, dtype, which, rng):
    logits = _logits(shape, dtype, rng)
    targets = rng.integers(0, 2, size=shape).astype(dtype)
    stats0 = np.array([0.5, 7.0])
    out = _run_loss("bce_logits", which, dtype, logits, targets, 0.37, stats0)
    _check_loss(f"bce_logits {which} {shape} {dtype.__name__}", dtype, *out, stats0)


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
def test_mse(shape, dtype, which, rng):
    out_ = _logits(shape, dtype, rng)
    targets = _logits(shape, dtype, rng)
    if shape[1] == 1:
        out_[::2] = targets[::2] + 0.25     # |diff| < 0.5 counts as correct for one output
    stats0 = np.array([2.0, 1.0])
    res = _run_loss("mse", which, dtype, out_, targets, 1.0 / shape[0], stats0)
    _check_loss(f"mse {which} {shape} {dtype.__name__}", dtype, *res, stats0)


@pytest.mark.parametrize("which", IMPL_IDS)
def test_losses_stable_for_huge_logits(which):
    logits = np.array([[800.0, -800.0, 0.0], [-1e4, 1e4, 3.0]])
    for name, targets in (("softmax_xent", np.array([1, 1], np.int64)),
                          ("bce_logits", np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))):
        stats0 = np.zeros(2)
        dl, stats, dref, sref = _run_loss(name, which, np.float64, logits, targets, 0.5, stats0)
        assert np.all(np.isfinite(dl)) and np.all(np.isfinite(stats))
        _check_loss(f"{name} {which} huge logits", np.float64, dl, stats, dref, sref, stats0)


@pytest.mark.parametrize("which", IMPL_IDS)
def test_mse_float32_loss_accumulates_in_float64(which):
    out_ = np.full((4, 1), 0.5, np.float32)
    targets = np.full((4, 1), -1e33, np.float32)
    stats0 = np.zeros(2)
    dl, stats, dref, sref = _run_loss("mse", which, np.float32, out_, targets, 0.25, stats0)
    print(f"mse float32 huge diff {which}: kernel loss {stats[0]:.3e}, reference {sref[0]:.3e}")
    assert np.isfinite(stats[0]) and stats[0] == pytest.approx(sref[0], rel=1e-5)


# --------------------------------------------------------------------------- optimizers

def _segments(sizes, l1, l2, align=1):
    """(start, stop, l1, l2) of arrays of ``sizes`` laid out as params.py does, each starting
    on a multiple of ``align`` elements (the gaps: padding outside every segment)."""
    padded = [-(-n // align) * align for n in sizes]
    starts = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
    return (starts, starts + np.asarray(sizes, np.int64), np.asarray(l1, np.float64),
            np.asarray(l2, np.float64))


def _flat_size(seg):
    return int(-(-seg[1][-1] // 16) * 16)


SEG_CASES = {
    "one": ([1], [0.0], [0.0]),
    "three": ([7, 16, 5], [0.01, 0.0, 0.0], [0.0, 0.02, 0.0]),
    "padded": ([7, 16, 5], [0.01, 0.0, 0.0], [0.0, 0.02, 0.0], 16),
    "big": ([40000, 16, 3000, 13], [0.001, 0.0, 0.003, 0.0], [0.002, 0.0, 0.0005, 0.0], 16),
}


def _opt_state(seg, dtype, rng):
    params = rng.standard_normal(_flat_size(seg)).astype(dtype)
    params[::11] = 0.0                       # L1 at exactly 0: sign 0
    params[~R._inside(params.size, seg[0], seg[1])] = 0.0   # the padding, as params.py leaves it
    return params


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("segs", sorted(SEG_CASES))
def test_sgd_update(segs, mode, dtype, which, rng):
    seg = _segments(*SEG_CASES[segs])
    momentum = {"plain": 0.0, "momentum": 0.9, "nesterov": 0.8}[mode]
    nesterov = mode == "nesterov"
    lr = 0.05
    fn = _pick("sgd_update", which)
    params = _opt_state(seg, dtype, rng)
    buf, prev, bad = np.zeros_like(params), np.zeros_like(params), np.zeros(1, np.int64)
    rp, rbuf = params.astype(np.float64), np.zeros(params.size)
    for step in range(4):
        grads = rng.standard_normal(params.size).astype(dtype)
        if dtype == np.float32:                      # one step from the kernel's own state
            rp, rbuf = params.astype(np.float64), buf.astype(np.float64)
        before = params.copy()
        rprev, rbad = np.empty_like(rp), np.zeros(1, np.int64)
        rbefore = rp.copy()
        R.sgd_update(rp, rprev, rbuf, rbad, grads.astype(np.float64), *seg, lr, momentum, nesterov)
        fn(params, prev, buf, bad, grads, *seg, lr, momentum, nesterov)
        label = f"sgd {mode} {segs} {which} {dtype.__name__} step {step}"
        np.testing.assert_array_equal(prev, before)
        assert bad[0] == 0 and rbad[0] == 0
        check(label + " params", params, rp, dtype)
        if dtype == np.float64:
            check(label + " update", params - before, rp - rbefore, dtype)
        if momentum:
            check(label + " momentum buffer", buf, rbuf, dtype)


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3)])
@pytest.mark.parametrize("segs", sorted(SEG_CASES))
def test_adam_update(segs, betas, eps, dtype, which, rng):
    seg = _segments(*SEG_CASES[segs])
    lr = 0.01
    fn = _pick("adam_update", which)
    params = _opt_state(seg, dtype, rng)
    m, v = np.zeros_like(params), np.zeros_like(params)
    prev, bad = np.zeros_like(params), np.zeros(1, np.int64)
    rp, rm, rv = params.astype(np.float64), np.zeros(params.size), np.zeros(params.size)
    for step in range(1, 5):
        grads = rng.standard_normal(params.size).astype(dtype)
        if dtype == np.float32:
            rp, rm, rv = (a.astype(np.float64) for a in (params, m, v))
        before, rbefore = params.copy(), rp.copy()
        rprev, rbad = np.empty_like(rp), np.zeros(1, np.int64)
        count = np.array([step], np.int64)
        R.adam_update(rp, rprev, rm, rv, rbad, grads.astype(np.float64), *seg, lr, *betas, eps, count)
        fn(params, prev, m, v, bad, grads, *seg, lr, *betas, eps, count)
        label = f"adam {betas} {segs} {which} {dtype.__name__} step {step}"
        np.testing.assert_array_equal(prev, before)
        assert bad[0] == 0
        check(label + " params", params, rp, dtype)
        if dtype == np.float64:
            check(label + " update", params - before, rp - rbefore, dtype)
        check(label + " m", m, rm, dtype)
        check(label + " v", v, rv, dtype)


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_update_counts_non_finite(opt, which, rng):
    seg = _segments([5, 9], [0.0, 0.01], [0.01, 0.0])
    params = rng.standard_normal(14)
    grads = rng.standard_normal(14)
    grads[[2, 7, 13]] = [np.inf, -np.inf, np.nan]
    bad = np.array([4], np.int64)        # counts accumulate
    prev = np.zeros(14)
    before = params.copy()
    if opt == "adam":
        _pick("adam_update", which)(params, prev, np.zeros(14), np.zeros(14), bad, grads, *seg,
                                    0.01, 0.9, 0.999, 1e-8, np.array([1], np.int64))
    else:
        _pick("sgd_update", which)(params, prev, np.zeros(14), bad, grads, *seg, 0.1,
                                   0.9 if opt == "momentum" else 0.0, False)
    assert bad[0] == 4 + 3
    np.testing.assert_array_equal(prev, before)        # the step can be undone
    assert np.isfinite(params[[0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 12]]).all()


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("kernel", ["sgd", "momentum", "adam", "adam_eps0", "add_reg_grad", "reg_penalty"])
def test_padding_is_never_read_or_written(kernel, which, rng):
    """Elements outside every segment (params.py's alignment padding) are left alone: NaN
    planted there stays bitwise NaN, is not counted, and leaks into nothing. With zeros there,
    Adam(eps=0) would compute 0/0."""
    seg = _segments([7, 16, 5], [0.01, 0.0, 0.0], [0.0, 0.02, 0.0], align=16)
    n = _flat_size(seg)
    outside = ~R._inside(n, seg[0], seg[1])
    bufs = [rng.standard_normal(n) for _ in range(5)]   # params, prev, state 0, state 1, grads
    bufs[3] = np.abs(bufs[3])
    for b in bufs:
        b[outside] = np.nan
    params, prev, s0, s1, grads = bufs
    before = [b.copy() for b in bufs]
    bad, out = np.zeros(1, np.int64), np.zeros(1)
    if kernel in ("sgd", "momentum"):
        _pick("sgd_update", which)(params, prev, s0, bad, grads, *seg, 0.1, 0.9 if kernel == "momentum" else 0.0,
                                   False)
    elif kernel.startswith("adam"):
        _pick("adam_update", which)(params, prev, s0, s1, bad, grads, *seg, 0.01, 0.9, 0.999,
                                    0.0 if kernel == "adam_eps0" else 1e-8, np.array([3], np.int64))
    elif kernel == "add_reg_grad":
        _pick("add_reg_grad", which)(grads, params, *seg)
    else:
        _pick("reg_penalty", which)(out, params, *seg)
        assert np.isfinite(out[0]) and out[0] > 0
    for b, b0 in zip(bufs, before):
        np.testing.assert_array_equal(b[outside].view(np.int64), b0[outside].view(np.int64))
        assert np.isfinite(b[~outside]).all()
    assert bad[0] == 0


@pytest.mark.parametrize("which", IMPL_IDS)
def test_sgd_counts_float32_overflow(which):
    params = np.array([1e38, 1.0], np.float32)
    grads = np.array([-3e38, 0.0], np.float32)
    prev, buf, bad = np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(1, np.int64)
    _pick("sgd_update", which)(params, prev, buf, bad, grads, *_segments([2], [0.0], [0.0]),
                               10.0, 0.0, False)
    print(f"sgd float32 overflow {which}: params {params}, bad {bad[0]}")
    assert np.isinf(params[0])
    assert bad[0] == 1


# The precision of the updates (cpu/optim.py, kernels/optim.cu): the parameter dtype, as
# torch.optim. A float32 step is float32 arithmetic, one rounding per operation in the
# kernels' order, the scalars formed in float64 and rounded once. The replays below spell
# that out in NumPy float32; tests/test_cuda_backend.py holds the GPU to the same steps.

EPS32 = float(np.finfo(np.float32).eps)


def _reg_f32(w, seg):
    # l1 * sign(w) + (2 l2) * w in float32, segment by segment (0 in the padding)
    f32, out = np.float32, np.zeros_like(w)
    for lo, hi, l1, l2 in zip(*seg):
        out[lo:hi] = f32(l1) * np.sign(w[lo:hi]) + f32(2.0 * l2) * w[lo:hi]
    return out


def sgd_step_f32(w, buf, g, seg, lr, momentum, nesterov):
    """(new w, new buf) of one float32 SGD step."""
    f32 = np.float32
    gi = g + _reg_f32(w, seg)
    step = gi
    if momentum != 0.0:
        buf = f32(momentum) * buf + gi
        step = gi + f32(momentum) * buf if nesterov else buf
    return w - f32(lr) * step, buf


def adam_step_f32(w, m, v, g, seg, lr, beta1, beta2, eps, t):
    """(new w, m, v) of one float32 Adam step t (from 1)."""
    f32 = np.float32
    step_size, sqrt_bc2 = f32(lr / (1.0 - beta1 ** t)), f32(math.sqrt(1.0 - beta2 ** t))
    gi = g + _reg_f32(w, seg)
    m = f32(beta1) * m + f32(1.0 - beta1) * gi
    v = f32(beta2) * v + f32(1.0 - beta2) * gi * gi
    return w - step_size * m / (np.sqrt(v) / sqrt_bc2 + f32(eps)), m, v


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov", "adam"])
def test_float32_updates_compute_in_float32(opt, which, rng):
    seg = _segments(*SEG_CASES["big"])
    params = _opt_state(seg, np.float32, rng)
    params_padding = ~R._inside(params.size, seg[0], seg[1])
    state = [np.zeros_like(params), np.zeros_like(params)]    # buf, or m and v
    prev, bad = np.empty_like(params), np.zeros(1, np.int64)
    worst_w = worst_state = 0.0
    for t in range(1, 5):
        grads = rng.standard_normal(params.size).astype(np.float32)
        grads[params_padding] = 0.0   # the replays below run over the padding too: keep it at 0
        w0, s0 = params.copy(), [a.copy() for a in state]
        rp, rs = w0.astype(np.float64), [a.astype(np.float64) for a in s0]
        if opt == "adam":
            hyper = (0.01, 0.9, 0.999, 1e-8)
            want = adam_step_f32(w0, *s0, grads, seg, *hyper, t)
            _pick("adam_update", which)(params, prev, *state, bad, grads, *seg, *hyper, np.array([t]))
            R.adam_update(rp, np.empty_like(rp), *rs, np.zeros(1, np.int64), grads.astype(np.float64),
                          *seg, *hyper, np.array([t]))
        else:
            momentum, nesterov = {"sgd": (0.0, False), "momentum": (0.9, False), "nesterov": (0.8, True)}[opt]
            want = sgd_step_f32(w0, s0[0], grads, seg, 0.05, momentum, nesterov)
            _pick("sgd_update", which)(params, prev, state[0], bad, grads, *seg, 0.05, momentum, nesterov)
            R.sgd_update(rp, np.empty_like(rp), rs[0], np.zeros(1, np.int64), grads.astype(np.float64),
                         *seg, 0.05, momentum, nesterov)
        np.testing.assert_array_equal(params, want[0], err_msg=f"{opt} step {t}: not float32 arithmetic")
        for got, w in zip(state, want[1:]):
            np.testing.assert_array_equal(got, w)
        # against the float64 reference from the same float32 state: storing w in float32
        # costs up to half an eps (6e-8) of w, and the float32 update adds a few roundings of
        # the update, small against w; the state (buf, m, v) is a few roundings off
        worst_w = max(worst_w, rel(params, rp) / EPS32)
        worst_state = max([worst_state] + [rel(a, r) / EPS32 for a, r in zip(state, rs)])
    print(f"{opt} float32 {which}: norm-wise error vs the float64 reference, in float32 eps: "
          f"parameters {worst_w:.2f}, state {worst_state:.2f}")
    assert worst_w <= 1 and worst_state <= 4


def test_float32_replay_tells_float32_from_float64_arithmetic(rng):
    # the bitwise check above can fail: the same step computed in float64 and rounded once
    # differs from the float32 replay
    seg = _segments(*SEG_CASES["big"])
    w, g = _opt_state(seg, np.float32, rng), rng.standard_normal(_flat_size(seg)).astype(np.float32)
    m, v = np.zeros_like(w), np.zeros_like(w)
    replay = adam_step_f32(w, m, v, g, seg, 0.01, 0.9, 0.999, 1e-8, 3)[0]
    w64 = w.astype(np.float64)
    R.adam_update(w64, np.empty_like(w64), m.astype(np.float64), v.astype(np.float64), np.zeros(1, np.int64),
                  g.astype(np.float64), *seg, 0.01, 0.9, 0.999, 1e-8, np.array([3]))
    differ = np.count_nonzero(w64.astype(np.float32) != replay)
    print(f"adam: float64-then-rounded differs from the float32 replay in {differ} of {w.size}")
    assert differ > 0


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("segs", sorted(SEG_CASES))
def test_add_reg_grad(segs, dtype, which, rng):
    seg = _segments(*SEG_CASES[segs])
    params = _opt_state(seg, dtype, rng)
    grads = rng.standard_normal(params.size).astype(dtype)
    ref = grads.astype(np.float64)
    R.add_reg_grad(ref, params.astype(np.float64), *seg)
    got = grads.copy()
    _pick("add_reg_grad", which)(got, params, *seg)
    check(f"add_reg_grad {segs} {which} {dtype.__name__}", got, ref, dtype)


@pytest.mark.parametrize("which", IMPL_IDS)
def test_add_reg_grad_partial_cover(which, rng):
    # segments may start after 0: entries outside them are left alone
    seg = (np.array([3, 8], np.int64), np.array([8, 10], np.int64), np.array([0.5, 0.0]), np.array([0.0, 0.25]))
    params, grads = rng.standard_normal(12), rng.standard_normal(12)
    ref, got = grads.copy(), grads.copy()
    R.add_reg_grad(ref, params, *seg)
    _pick("add_reg_grad", which)(got, params, *seg)
    np.testing.assert_array_equal(got[:3], grads[:3])
    np.testing.assert_array_equal(got[10:], grads[10:])
    check(f"add_reg_grad partial {which}", got, ref, np.float64)


@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("segs", list(SEG_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_reg_penalty(segs, dtype, which, rng):
    seg = _segments(*SEG_CASES[segs])
    params = _opt_state(seg, dtype, rng)
    ref, got = np.zeros(1), np.full(1, np.nan)
    R.reg_penalty(ref, params.astype(np.float64), *seg)
    _pick("reg_penalty", which)(got, params, *seg)
    check(f"reg_penalty {segs} {which} {dtype.__name__}", got, ref, dtype)


# --------------------------------------------------------------------------- data

@pytest.mark.parametrize("which", IMPL_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
@pytest.mark.parametrize("n,f,b", [(1, 1, 1), (7, 13, 5), (129, 3, 129), (50, 1000, 40)])
def test_gather_rows(n, f, b, dtype, which, rng):
    x = (rng.standard_normal((n, f)) * 100).astype(dtype)
    idx = rng.integers(0, n, size=b).astype(np.int64)        # repeats allowed
    out = np.empty((b, f), dtype)
    _pick("gather_rows", which)(out, x, idx)
    ref = np.empty((b, f), dtype)
    R.gather_rows(ref, x, idx)
    np.testing.assert_array_equal(out, ref)


def test_gather_rows_any_trailing_shape(rng):
    x = rng.standard_normal((9, 3, 4, 5)).astype(np.float32)
    idx = rng.permutation(9)[:6].astype(np.int64)
    out = np.empty((6, 3, 4, 5), np.float32)
    cpu.gather_rows(out, x, idx)
    np.testing.assert_array_equal(out, x[idx])
    labels = rng.integers(0, 10, 9).astype(np.int64)       # 1-D integer labels, as fit gathers them
    lout = np.empty(6, np.int64)
    cpu.gather_rows(lout, labels, idx)
    np.testing.assert_array_equal(lout, labels[idx])


# --------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_reduction_is_deterministic(dtype, rng):
    shape = (4099, 33)                 # parallel path, uneven blocks
    da = rng.standard_normal(shape).astype(dtype)
    a = _act_output(shape, "tanh", dtype, rng)
    results = []
    for _ in range(2):
        for _, fn in impls("act_backward_bias_grad"):
            dz, db = np.empty(shape, dtype), np.empty(shape[1], dtype)
            fn(dz, db, da, a, codes.TANH, 0.0)
            results.append((dz, db))
    for dz, db in results[1:]:
        # bitwise: two calls, and serial vs parallel (same fixed blocks, any thread count)
        np.testing.assert_array_equal(dz, results[0][0])
        np.testing.assert_array_equal(db, results[0][1])


@pytest.mark.parametrize("name", ["softmax_xent", "bce_logits", "mse"])
def test_loss_stats_are_reproducible(name, rng):
    shape = (5000, 10)
    logits = rng.standard_normal(shape)
    targets = (rng.integers(0, 10, shape[0]).astype(np.int64) if name == "softmax_xent"
               else rng.integers(0, 2, shape).astype(np.float64))
    # Bitwise across calls of one kernel; the parallel twin sums the per-sample losses as
    # a threaded reduction, so it may differ from the serial one in the last bits.
    first = {}
    for _ in range(2):
        for which, fn in impls(name):
            stats, dl = np.zeros(2), np.empty(shape)
            fn(dl, stats, logits, targets, 1.0 / shape[0])
            if which in first:
                np.testing.assert_array_equal(stats, first[which])
            first.setdefault(which, stats)
    err = rel(first["parallel"], first["serial"])
    print(f"{name} stats serial vs parallel: rel err {err:.2e}")
    assert err <= 1e-14


def test_cpu_picks_the_parallel_twin_by_work_size(monkeypatch, rng):
    blas.use_numba_thread_gemms(False)   # the threshold of a thread whose GEMMs run on OpenBLAS's
    n = jit.PARALLEL_MIN_WORK
    assert jit.pick(dense.bias_act_forward_twins, n - 1) is dense.bias_act_forward_twins.serial
    assert jit.pick(dense.bias_act_forward_twins, n) is dense.bias_act_forward_twins.parallel
    # and the ops (reshapes included) are right on the parallel path
    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 1)
    x = rng.standard_normal((5, 2, 3))
    y = np.empty_like(x)
    cpu.act_forward(y, x, codes.TANH, 0.0)
    check("cpu.act_forward parallel path", y, np.tanh(x), np.float64)
    out = np.empty((3, 2, 3))
    idx = np.array([4, 0, 4], np.int64)
    cpu.gather_rows(out, x, idx)
    np.testing.assert_array_equal(out, x[idx])


def test_small_gemms_run_on_one_blas_thread_and_give_it_back(monkeypatch):
    """blas.py's shape rule: below SMALL_MACS one BLAS thread, then the count is put
    back; above it, and below BLAS_SINGLE_MACS (where OpenBLAS itself runs one thread),
    nothing is touched. The real setter leaves BLAS as it found it."""
    from threadpoolctl import threadpool_info
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    rng = np.random.default_rng(3)
    a, b = rng.random((8, 9), dtype=np.float32), rng.random((9, 7), dtype=np.float32)
    out = np.empty((8, 7), np.float32)
    blas.matmul(out, a, b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    calls = []
    monkeypatch.setattr(blas_threads, "_found", [calls.append, 4])
    monkeypatch.setitem(blas_threads._state, "count", 4)
    blas.matmul(out, a, b)
    assert calls == []          # below BLAS_SINGLE_MACS OpenBLAS takes one thread by itself
    monkeypatch.setattr(blas, "BLAS_SINGLE_MACS", 8 * 9 * 7)
    blas.matmul(out, a, b)
    assert calls == [1, 4]
    monkeypatch.setattr(blas, "SMALL_MACS", 8 * 9 * 7)  # now this product is "big"
    blas.matmul(out, a, b)
    assert calls == [1, 4]
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)


def test_device_attributes_and_copy():
    # what a model asks the backend instead of branching on its name
    assert cpu.name == "cpu" and cpu.xp is np and cpu.host_arrays and cpu.full_batch_gram
    assert cpu.step_graphs() is None
    assert cpu.reduction_scratch_nbytes(33) == reduce.REDUCTION_BLOCKS * 33 * 8
    assert reduce.partial_sums(33).nbytes == cpu.reduction_scratch_nbytes(33)
    out, a = np.zeros(5, np.int64), np.arange(5)
    cpu.copy(out, a)
    np.testing.assert_array_equal(out, a)
    with pytest.raises(ValueError, match="shape"):
        cpu.copy(out, np.arange(4))
    with pytest.raises(ValueError, match="dtype"):
        cpu.copy(out, np.arange(5.0))


def test_numba_thread_gemms_flag():
    # the model's choice of GEMM threads; without NumPy's OpenBLAS symbols it stays off
    try:
        cpu.use_numba_thread_gemms(True)
        assert cpu.numba_thread_gemms() == cpu.openblas.available()
    finally:
        cpu.use_numba_thread_gemms(False)
    assert not cpu.numba_thread_gemms()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_arrays_start_on_a_cache_line(dtype):
    # data.empty / zeros: C-contiguous, the shape asked for, and (where there is data) on a
    # multiple of 64 bytes, where NumPy starts a large array 16 bytes past a page
    for shape in [5, (3, 4), 1_000_000, (2, 300_000), (0,), (2, 0, 3)]:
        for make in (data.empty, data.zeros):
            a = make(shape, dtype)
            assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype
            assert a.flags.c_contiguous and a.flags.writeable
            assert a.size == 0 or a.ctypes.data % data.ALIGN_BYTES == 0, (shape, make)
            if make is data.zeros:
                assert not a.any()
    # the flat parameter buffer of a model, whose W rows the prediction tiles read as vectors
    import fastmlp as fm
    model = fm.Sequential([fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 10)], loss="softmax_crossentropy")
    assert model.flat.params.ctypes.data % data.ALIGN_BYTES == 0
    assert model.flat.grads.ctypes.data % data.ALIGN_BYTES == 0
