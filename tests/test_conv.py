"""Conv2D, MaxPool2D and Flatten: kernels against the float64 reference, the layers
against direct loops and finite differences, geometry errors, a small CNN that learns.

Tolerances: float64 kernels match the reference to 1e-12 (relative to the
largest reference value), float32 ones to 1e-5; gradients match centred
differences to a relative error of 1e-6; a planted wrong backward fails.
"""
import itertools

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu, cuda_available, get_backend
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import conv as cpu_conv
from fastmlp.backend.cpu import pool as cpu_pool
from fastmlp.data import make_shapes
from fastmlp.gradcheck import gradcheck, gradcheck_layer

from conftest import train_step_growth

TOL = 1e-6
KERNEL_TOL = {np.float64: 1e-12, np.float32: 1e-5}
TWINS = [0, 1]   # serial, parallel
_CUDA_OK, _CUDA_WHY = cuda_available()
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not _CUDA_OK, reason=f"no CUDA device: {_CUDA_WHY}")]


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    return float(np.abs(got - want).max() / scale) if want.size else 0.0


def _bind(layer, input_shape, rng, needs_dx=True):
    """A standalone float64 CPU layer with random parameters."""
    layer.build(input_shape, cpu, np.float64)
    params = [rng.standard_normal(s.shape) for s in layer.param_specs()]
    layer.bind(params, [np.zeros_like(p) for p in params])
    layer.needs_dx = needs_dx
    return layer


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _direct_conv(x, W, b, stride, pad):
    """The definition: y[n, m, i, j] = b[m] + sum over c, u, v of W[m, c, u, v] * xpad[n, c, i*S + u, j*S + v]."""
    n, c, h, w = x.shape
    m, _, kh, kw = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = _out(h, kh, stride, pad), _out(w, kw, stride, pad)
    y = np.empty((n, m, oh, ow))
    for i in range(oh):
        for j in range(ow):
            for u in range(m):
                win = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, u, i, j] = (win * W[u]).sum(axis=(1, 2, 3)) + b[u]
    return y


# --------------------------------------------------------------------------- Conv2D forward

KERNELS = [(1, 1), (2, 3), (3, 3), (3, 1), (5, 5)]
IMAGES = [(7, 9), (5, 5)]
GEOMETRIES = [(k, s, p, hw) for k, s, p, hw in itertools.product(KERNELS, [1, 2, 3], [0, 1, 2], IMAGES)
              if hw[0] + 2 * p >= k[0] and hw[1] + 2 * p >= k[1]]


@pytest.mark.parametrize("kernel,stride,pad,hw", GEOMETRIES,
                         ids=[f"k{k[0]}x{k[1]}-s{s}-p{p}-{hw[0]}x{hw[1]}" for k, s, p, hw in GEOMETRIES])
def test_conv_forward_equals_direct_loops(kernel, stride, pad, hw, rng):
    c, m, n = 2, 3, 2
    layer = _bind(fm.Conv2D(c, m, kernel, stride=stride, padding=pad), (c,) + hw, rng)
    x = rng.standard_normal((n, c) + hw)
    y = np.array(layer.forward(x, True))
    want = _direct_conv(x, layer.params[0], layer.params[1], stride, pad)
    assert y.shape == want.shape == (n, m, _out(hw[0], kernel[0], stride, pad), _out(hw[1], kernel[1], stride, pad))
    err = _rel(y, want)
    print(f"Conv2D k={kernel} s={stride} p={pad} {hw}: max rel err {err:.1e}")
    assert err <= 1e-12


def test_conv_forward_float32_model(rng):
    model = fm.Sequential([fm.Conv2D(3, 4, (3, 2), stride=2, padding=1), fm.Flatten()],
                          input_shape=(3, 9, 7), dtype="float32", seed=0)
    conv = model.layers[0]
    x = rng.standard_normal((5, 3, 9, 7)).astype(np.float32)
    y = np.array(conv.forward(x, False))
    want = _direct_conv(x.astype(np.float64), *(w.astype(np.float64) for w in model.get_weights()), 2, 1)
    err = _rel(y, want)
    print(f"Conv2D float32: max rel err {err:.1e}")
    assert err <= 1e-5


def test_conv_matches_torch_float64(rng):
    torch = pytest.importorskip("torch")
    layer = _bind(fm.Conv2D(3, 4, (3, 2), stride=2, padding=1), (3, 8, 7), rng)
    x = rng.standard_normal((2, 3, 8, 7))
    dy = rng.standard_normal((2,) + layer.output_shape)
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(np.array(layer.params[0]), requires_grad=True)
    bt = torch.tensor(np.array(layer.params[1]), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=2, padding=1)
    (yt * torch.tensor(dy)).sum().backward()
    errs = [_rel(y, yt.detach().numpy()), _rel(dx, xt.grad.numpy()),
            _rel(layer.grads[0], wt.grad.numpy()), _rel(layer.grads[1], bt.grad.numpy())]
    print(f"Conv2D vs torch (y, dx, dW, db): {', '.join(f'{e:.1e}' for e in errs)}")
    assert max(errs) <= 1e-12


# --------------------------------------------------------------------------- kernels vs reference

KGEOM = [((2, 3, 7, 9), 3, 2, 1, 1), ((3, 2, 8, 5), 5, 5, 2, 2), ((2, 1, 5, 5), 1, 1, 3, 0),
         ((1, 2, 4, 6), 4, 4, 1, 2), ((2, 2, 6, 6), 2, 2, 2, 0),   # (N, C, H, W), KH, KW, S, P
         ((2, 3, 7, 9), 3, 3, 1, 1), ((2, 2, 6, 5), 5, 5, 1, 2)]   # "same" (OW == W): the flat paths


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape,kh,kw,s,p", KGEOM)
def test_im2col_col2im_kernels(shape, kh, kw, s, p, twin, dtype, rng):
    n, c, h, w = shape
    npix = _out(h, kh, s, p) * _out(w, kw, s, p)
    x = rng.standard_normal(shape).astype(dtype)
    want = np.empty((c * kh * kw, n * npix))
    R.im2col(want, x, kh, kw, s, p)
    cols = np.full(want.shape, np.nan, dtype)
    cpu_conv.im2col_twins[twin](cols, x, kh, kw, s, p, p, p, p)   # PT, PB, PL, PR
    e1 = _rel(cols, want)
    g = rng.standard_normal(want.shape).astype(dtype)
    want_dx = np.empty(shape)
    R.col2im(want_dx, g, kh, kw, s, p)
    dx = np.full(shape, np.nan, dtype)
    cpu_conv.col2im_twins[twin](dx, g, kh, kw, s, p, p, p, p)
    e2 = _rel(dx, want_dx)
    print(f"im2col {shape} k={kh}x{kw} s={s} p={p} twin={twin} {dtype.__name__}: {e1:.1e}, col2im {e2:.1e}")
    assert e1 <= KERNEL_TOL[dtype] and e2 <= KERNEL_TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
def test_conv_bias_kernels(twin, dtype, rng):
    n, m, npix = 3, 4, 10
    z = rng.standard_normal((m, n * npix)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    want = np.empty((n, m, npix))
    R.conv_bias_forward(want, z, b)
    y = np.full((n, m, npix), np.nan, dtype)
    cpu_conv.conv_bias_forward_twins[twin](y, z, b)
    dy = rng.standard_normal((n, m, npix)).astype(dtype)
    want_dz, want_db = np.empty((m, n * npix)), np.empty(m)
    R.conv_bias_backward(want_dz, want_db, dy)
    dz, db = np.full((m, n * npix), np.nan, dtype), np.full(m, np.nan, dtype)
    cpu_conv.conv_bias_backward_twins[twin](dz, db, dy)
    errs = [_rel(y, want), _rel(dz, want_dz), _rel(db, want_db)]
    print(f"conv_bias twin={twin} {dtype.__name__}: {errs}")
    assert max(errs) <= KERNEL_TOL[dtype]


MPGEOM = [((2, 3, 7, 9), 2, 2), ((2, 2, 8, 8), 3, 1), ((1, 2, 9, 7), 3, 2), ((2, 1, 5, 5), 1, 1),
          ((1, 1, 6, 6), 4, 3)]   # (N, C, H, W), K, S


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape,k,s", MPGEOM)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_kernels(shape, k, s, twin, dtype, ties, rng):
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    oshape = shape[:2] + (_out(shape[2], k, s, 0), _out(shape[3], k, s, 0))
    want, want_arg = np.empty(oshape), np.empty(oshape, np.int64)
    R.maxpool_forward(want, want_arg, x, k, s)
    y, arg = np.full(oshape, np.nan, dtype), np.full(oshape, -1, np.int32)
    cpu_pool.maxpool_forward_twins[twin](y, arg, x, k, s)
    dy = rng.standard_normal(oshape).astype(dtype)
    want_dx = np.empty(shape)
    R.maxpool_backward(want_dx, dy, want_arg, k, s)
    dx = np.full(shape, np.nan, dtype)
    cpu_pool.maxpool_backward_twins[twin](dx, dy, arg, k, s)
    e1, e2 = _rel(y, want), _rel(dx, want_dx)
    print(f"maxpool {shape} k={k} s={s} twin={twin} ties={ties} {dtype.__name__}: {e1:.1e}, backward {e2:.1e}")
    np.testing.assert_array_equal(arg, want_arg)
    assert e1 == 0.0 and e2 <= KERNEL_TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,kh,kw,s,p", KGEOM[:3])
def test_cuda_image_ops_match_reference(shape, kh, kw, s, p, dtype, rng):
    if not _CUDA_OK:
        pytest.skip(f"no CUDA device: {_CUDA_WHY}")
    be = get_backend("cuda")
    n, c, h, w = shape
    npix = _out(h, kh, s, p) * _out(w, kw, s, p)
    x = rng.standard_normal(shape).astype(dtype)
    errs = {}
    want = np.empty((c * kh * kw, n * npix))
    R.im2col(want, x, kh, kw, s, p)
    cols = be.empty(want.shape, dtype)
    be.im2col(cols, be.to_device(x), kh, kw, s, p)
    errs["im2col"] = _rel(be.to_host(cols), want)
    g = rng.standard_normal(want.shape).astype(dtype)
    want_dx = np.empty(shape)
    R.col2im(want_dx, g, kh, kw, s, p)
    dx = be.empty(shape, dtype)
    be.col2im(dx, be.to_device(g), kh, kw, s, p)
    errs["col2im"] = _rel(be.to_host(dx), want_dx)
    cpu_dx = np.empty(shape, dtype)
    cpu.col2im(cpu_dx, g, kh, kw, s, p)
    np.testing.assert_array_equal(be.to_host(dx), cpu_dx)   # same gather order as the CPU twin
    m = 3
    z, b = rng.standard_normal((m, n * npix)).astype(dtype), rng.standard_normal(m).astype(dtype)
    want_y = np.empty((n, m, npix))
    R.conv_bias_forward(want_y, z, b)
    y = be.empty((n, m, npix), dtype)
    be.conv_bias_forward(y, be.to_device(z), be.to_device(b))
    errs["conv_bias_forward"] = _rel(be.to_host(y), want_y)
    dy = rng.standard_normal((n, m, npix)).astype(dtype)
    want_dz, want_db = np.empty((m, n * npix)), np.empty(m)
    R.conv_bias_backward(want_dz, want_db, dy)
    dz, db = be.empty((m, n * npix), dtype), be.empty(m, dtype)
    be.conv_bias_backward(dz, db, be.to_device(dy))
    errs["conv_bias_backward"] = max(_rel(be.to_host(dz), want_dz), _rel(be.to_host(db), want_db))
    for k, st in ((2, 2), (3, 1)):
        oshape = shape[:2] + (_out(h, k, st, 0), _out(w, k, st, 0))
        xt = rng.integers(0, 3, shape).astype(dtype)          # ties
        want_y, want_arg = np.empty(oshape), np.empty(oshape, np.int64)
        R.maxpool_forward(want_y, want_arg, xt, k, st)
        y, arg = be.empty(oshape, dtype), be.empty(oshape, np.int32)
        be.maxpool_forward(y, arg, be.to_device(xt), k, st)
        np.testing.assert_array_equal(be.to_host(arg), want_arg)
        gy = rng.standard_normal(oshape).astype(dtype)
        want_dx = np.empty(shape)
        R.maxpool_backward(want_dx, gy, want_arg, k, st)
        dx = be.empty(shape, dtype)
        be.maxpool_backward(dx, be.to_device(gy), arg, k, st)
        errs[f"maxpool k={k} s={st}"] = max(_rel(be.to_host(y), want_y), _rel(be.to_host(dx), want_dx))
    print(f"cuda {shape} {dtype.__name__}: {errs}")
    assert max(errs.values()) <= KERNEL_TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (64, 3, 28, 27), (2, 300, 5, 5)])
def test_cuda_wrappers_launch_what_the_kernels_take(shape, dtype, monkeypatch):
    # no GPU needed: the cuda package runs against the stand-in CuPy of test_cuda_backend, which
    # records every launch; each must match its kernel's C++ parameters and launch shape
    from test_cuda_backend import _FakeCupy, _launch_problems, load_cuda_backend
    from fastmlp.backend.cuda import source as cuda_source
    fake = _FakeCupy()
    be = load_cuda_backend(monkeypatch, fake)
    n, c, h, w = shape
    f = lambda *s: np.zeros(s, dtype)  # noqa: E731
    oh, ow = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    be.im2col(f(c * 9, n * oh * ow), f(*shape), 3, 3, 2, 1)
    be.col2im(f(*shape), f(c * 9, n * oh * ow), 3, 3, 2, 1)
    be.conv_bias_forward(f(n, 5, oh, ow), f(5, n * oh * ow), f(5))
    be.conv_bias_backward(f(5, n * oh * ow), f(5), f(n, 5, oh, ow))
    ph, pw = _out(h, 2, 2, 0), _out(w, 2, 2, 0)
    be.maxpool_forward(f(n, c, ph, pw), np.zeros((n, c, ph, pw), np.int32), f(*shape), 2, 2)
    be.maxpool_backward(f(*shape), f(n, c, ph, pw), np.zeros((n, c, ph, pw), np.int32), 2, 2)
    be.avgpool_forward(f(n, c, ph, pw), f(*shape), 2, 2)
    be.avgpool_backward(f(*shape), f(n, c, ph, pw), 2, 2)
    be.global_avgpool_forward(f(n, c), f(*shape))
    be.global_avgpool_backward(f(*shape), f(n, c))
    be.global_maxpool_forward(f(n, c), np.zeros((n, c), np.int32), f(*shape))
    be.global_maxpool_backward(f(*shape), f(n, c), np.zeros((n, c), np.int32))
    qh, qw = _out(oh, 2, 2, 0), _out(ow, 2, 2, 0)          # a conv with ReLU and 2x2 pool fused
    fused = (f(n, 5, qh, qw), np.zeros((n, 5, qh, qw), np.int32))
    be.conv_bias_act_pool_forward(*fused, f(n * oh * ow, 5), f(5), oh, ow, 1, 0.0, 2, 2)
    be.conv_bias_act_pool_backward(f(n * oh * ow, 5), f(5), f(n, 5, qh, qw), *fused, oh, ow, 1, 0.0, 2, 2)
    be.transpose(f(5, c * 9), f(c * 9, 5))
    for edges in ([0, n], [0, n // 2, n]):     # Conv2D's fused path: the kernels above, chunk by chunk
        edges = np.array(edges, np.int64)
        rows = int(np.diff(edges).max()) * oh * ow
        scratch = (f(1, c * 9 * rows), f(1, rows * 5))
        be.conv_act_pool_forward(*fused, *scratch, f(*shape), f(5, c * 9), f(5), edges, 3, 3, 2, 1, oh, ow, 1,
                                 0.0, 2, 2)
        parts = (f(len(edges) - 1, c * 9, 5), f(len(edges) - 1, 5))
        for dx in (f(*shape), None):
            be.conv_act_pool_backward(dx, *parts, *scratch, f(*shape), f(5, c * 9), f(n, 5, qh, qw), *fused,
                                      edges, 3, 3, 2, 1, oh, ow, 1, 0.0, 2, 2)
    for x in (f(*shape), f(n, c)):
        stats = [np.zeros(c) for _ in range(4)]
        for training in (True, False):
            be.batchnorm_forward(f(*x.shape), *stats, x, f(c), f(c), 0.9, 1e-5, training)
            be.batchnorm_backward(f(*x.shape), f(c), f(c), f(*x.shape), x, stats[0], stats[1], f(c), training)
    be.dropout_forward(f(*shape), f(*shape), f(*shape), 0.3)
    be.dropout_backward(f(*shape), f(*shape), f(*shape))
    problems = _launch_problems(fake.launches)
    assert not problems, "\n".join(problems)
    assert not fake.host_syncs, f"ops synchronised with the host: {fake.host_syncs}"
    for family in ("conv", "pool", "norm", "dropout"):
        seen = {e.split("<")[0] for fam, e, *_ in fake.launches if fam == family}
        assert seen == {e.split("<")[0] for e in cuda_source.name_expressions(family)}, family
    with pytest.raises(TypeError, match="int32"):
        be.maxpool_forward(f(n, c, ph, pw), np.zeros((n, c, ph, pw), np.int64), f(*shape), 2, 2)
    with pytest.raises(ValueError, match="cols"):
        be.im2col(f(c * 9, n * oh * ow + 1), f(*shape), 3, 3, 2, 1)
    with pytest.raises(ValueError, match="pooled shape"):
        be.conv_bias_act_pool_forward(f(n, 5, qh + 1, qw), np.zeros((n, 5, qh + 1, qw), np.int32),
                                      f(n * oh * ow, 5), f(5), oh, ow, 1, 0.0, 2, 2)


def test_float_image_kernels_do_no_double_arithmetic():
    # the float32 element-wise kernels of the image families stay in float (only reductions use double)
    import re
    from test_kernels_compile import _compile_family, _entries, _nvrtc
    from fastmlp.backend.cuda import source as cuda_source
    nvrtc = _nvrtc()
    for family, kernels in (("conv", ("im2col", "col2im", "conv_bias_forward", "conv_bias_act_pool_forward",
                                      "conv_bias_act_pool_backward", "transpose")),
                            ("pool", ("maxpool_forward", "maxpool_backward")),
                            ("norm", ("batchnorm_apply", "batchnorm_backward_apply")),
                            ("dropout", ("dropout_forward", "dropout_backward"))):
        ok, log, lowered, ptx = _compile_family(nvrtc, family, 80)
        assert ok, log
        entries = _entries(ptx)
        for kernel in kernels:
            body = entries[lowered[cuda_source.expr(kernel, "float")]]
            f64 = re.findall(r"^\s*(?:add|sub|mul|fma|div|sqrt|rcp)\.\S*f64.*$", body, flags=re.M)
            assert not f64, f"{kernel}<float> does double arithmetic:\n" + "\n".join(f64)


def test_parallel_twins_are_bitwise_equal_to_serial(rng):
    # each thread owns its (image, channel) planes and sums in a fixed order
    x = rng.standard_normal((8, 3, 11, 10)).astype(np.float32)
    cols = [np.empty((3 * 9, 8 * 9 * 8), np.float32) for _ in TWINS]
    dxs = [np.empty_like(x) for _ in TWINS]
    for t in TWINS:
        cpu_conv.im2col_twins[t](cols[t], x, 3, 3, 1, 0, 0, 0, 0)
        cpu_conv.col2im_twins[t](dxs[t], cols[t], 3, 3, 1, 0, 0, 0, 0)
    np.testing.assert_array_equal(cols[0], cols[1])
    np.testing.assert_array_equal(dxs[0], dxs[1])


def test_maxpool_nan_is_the_maximum():
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]])
    want, want_arg = np.empty((1, 1, 1, 1)), np.empty((1, 1, 1, 1), np.int64)
    R.maxpool_forward(want, want_arg, x, 2, 2)
    for twin in TWINS:
        y, arg = np.empty((1, 1, 1, 1)), np.empty((1, 1, 1, 1), np.int32)
        cpu_pool.maxpool_forward_twins[twin](y, arg, x, 2, 2)
        assert np.isnan(y[0, 0, 0, 0]) and arg[0, 0, 0, 0] == want_arg[0, 0, 0, 0] == 1


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape,kh,kw,s,p", KGEOM + [((1, 1, 3, 3), 3, 3, 1, 1), ((2, 2, 2, 2), 5, 5, 1, 2)])
def test_col2im_sums_taps_in_order(shape, kh, kw, s, p, twin, rng):
    # every pixel's window terms are added in (i, j) order from 0, as the reference (and the
    # CUDA twin) does: float64 results equal bit for bit, on the flat path (OW == W) too
    n, c, h, w = shape
    g = rng.standard_normal((c * kh * kw, n * _out(h, kh, s, p) * _out(w, kw, s, p)))
    want, got = np.empty(shape), np.full(shape, np.nan)
    R.col2im(want, g, kh, kw, s, p)
    cpu_conv.col2im_twins[twin](got, g, kh, kw, s, p, p, p, p)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("shape,kh,kw,s,p", KGEOM + [((1, 1, 7, 7), 3, 3, 1, 1), ((1, 1, 9, 8), 3, 2, 2, 1)])
def test_col2im_of_im2col_of_ones_counts_windows(shape, kh, kw, s, p):
    n, c, h, w = shape
    oh, ow = _out(h, kh, s, p), _out(w, kw, s, p)
    cols = np.empty((c * kh * kw, n * oh * ow))
    cpu.im2col(cols, np.ones(shape), kh, kw, s, p)
    back = np.empty(shape)
    cpu.col2im(back, cols, kh, kw, s, p)
    counts = np.zeros((h, w))       # how many windows cover each pixel, by direct enumeration
    for i, j, u, v in itertools.product(range(oh), range(ow), range(kh), range(kw)):
        ih, iw = i * s + u - p, j * s + v - p
        if 0 <= ih < h and 0 <= iw < w:
            counts[ih, iw] += 1
    np.testing.assert_array_equal(back, np.broadcast_to(counts, shape))


# --------------------------------------------------------------------------- max pooling

@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (3, 2)])
def test_maxpool_ties_send_each_gradient_to_the_first_max(k, s, rng):
    h = w = 7
    layer = _bind(fm.MaxPool2D(k, stride=s), (2, h, w), rng)
    x = np.zeros((2, 2, h, w))                   # every window is one big tie
    x[:, 1] = rng.integers(0, 2, (2, h, w))      # channel 1: ties among the 1s and the 0s
    y = layer.forward(x, True)
    dy = rng.standard_normal(y.shape)
    dx = np.array(layer.backward(dy))
    oh, ow = y.shape[2:]
    want = np.zeros_like(x)
    for n, c, i, j in itertools.product(range(2), range(2), range(oh), range(ow)):
        win = x[n, c, i * s:i * s + k, j * s:j * s + k]
        u, v = divmod(int(np.argmax(win)), k)    # first maximum in row-major order
        want[n, c, i * s + u, j * s + v] += dy[n, c, i, j]
        assert y[n, c, i, j] == win.max()
    np.testing.assert_allclose(dx, want, rtol=1e-15, atol=0)
    # each window's gradient lands on exactly one input: the total is conserved
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-12)
    if s >= k:
        assert np.count_nonzero(dx) == np.count_nonzero(dy)


def test_maxpool_default_stride_is_pool_size():
    assert fm.MaxPool2D(3).stride == 3
    model = fm.Sequential([fm.MaxPool2D(2), fm.Flatten()], input_shape=(1, 5, 7))
    assert model.layers[0].output_shape == (1, 2, 3)     # floor, as PyTorch


# --------------------------------------------------------------------------- geometry errors

@pytest.mark.parametrize("make,shape,parts", [
    (lambda: fm.Conv2D(1, 2, 5), (1, 3, 3), ["H=3", "W=3", "K=(5, 5)", "P=0", "S=1"]),
    (lambda: fm.Conv2D(1, 2, (2, 6), padding=1), (1, 8, 3), ["H=8", "W=3", "K=(2, 6)", "P=1", "S=1"]),
    (lambda: fm.Conv2D(1, 2, 7, stride=2, padding=2), (1, 2, 20), ["H=2", "W=20", "K=(7, 7)", "P=2", "S=2"]),
    (lambda: fm.MaxPool2D(4), (2, 3, 9), ["H=3", "W=9", "K=(4, 4)", "P=0", "S=4"]),
])
def test_kernel_larger_than_padded_image(make, shape, parts):
    layer = make()
    with pytest.raises(ValueError) as e:
        fm.Sequential([layer, fm.Flatten()], input_shape=shape)
    print(e.value)
    for part in parts:
        assert part in str(e.value)


@pytest.mark.parametrize("kwargs,parts", [
    ({"stride": 0}, ["S=0", "K=(3, 3)", "P=0", "H=", "W="]),
    ({"stride": -2}, ["S=-2"]),
    ({"padding": -1}, ["P=-1", "S=1"]),
    ({"stride": 1.5}, ["S=1.5"]),
])
def test_bad_stride_or_padding(kwargs, parts):
    with pytest.raises(ValueError) as e:
        fm.Conv2D(1, 2, 3, **kwargs)
    print(e.value)
    for part in parts:
        assert part in str(e.value)


@pytest.mark.parametrize("make", [lambda: fm.Conv2D(1, 2, 0), lambda: fm.Conv2D(1, 2, (3,)),
                                  lambda: fm.Conv2D(1, 2, (3, -1)), lambda: fm.Conv2D(0, 2, 3),
                                  lambda: fm.Conv2D(1, 2, 3, init="bogus"), lambda: fm.MaxPool2D(0),
                                  lambda: fm.MaxPool2D(2, stride=0), lambda: fm.Conv2D(1, 2, True)])
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_wrong_input_shape_names_it():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(N, 1, 28, 28\)"):
        fm.Sequential([fm.Conv2D(3, 4, 3), fm.Flatten()], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fm.Sequential([fm.MaxPool2D(2), fm.Flatten()], input_shape=(784,))


def test_output_shape_is_floor_as_torch():
    torch = pytest.importorskip("torch")
    for h, k, s, p in [(7, 3, 2, 0), (8, 3, 3, 1), (5, 5, 1, 2), (10, 4, 3, 2)]:
        got = fm.Sequential([fm.Conv2D(1, 1, k, stride=s, padding=p), fm.Flatten()],
                            input_shape=(1, h, h)).layers[0].output_shape
        want = torch.nn.Conv2d(1, 1, k, stride=s, padding=p)(torch.zeros(1, 1, h, h)).shape[1:]
        assert got == tuple(want)


# --------------------------------------------------------------------------- gradient checks

CONV_GRAD = [((2, 6, 5), 3, (3, 3), 1, 0), ((3, 7, 6), 2, (2, 3), 2, 1), ((1, 5, 5), 2, (1, 1), 1, 0),
             ((2, 8, 7), 3, (5, 3), 3, 2), ((2, 4, 4), 2, (4, 4), 1, 0)]   # (C, H, W), M, K, S, P


@pytest.mark.parametrize("in_shape,m,k,s,p", CONV_GRAD)
def test_conv_layer_gradients(in_shape, m, k, s, p, rng):
    layer = _bind(fm.Conv2D(in_shape[0], m, k, stride=s, padding=p), in_shape, rng)
    x = rng.standard_normal((2,) + in_shape)
    err = gradcheck_layer(layer, x, rng.standard_normal((2,) + layer.output_shape))
    print(f"Conv2D {in_shape} M={m} k={k} s={s} p={p}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (2, 3)])
def test_maxpool_layer_gradients(k, s, rng):
    layer = _bind(fm.MaxPool2D(k, stride=s), (2, 7, 6), rng)
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.01   # distinct: no argmax flips
    err = gradcheck_layer(layer, x, rng.standard_normal((2,) + layer.output_shape))
    print(f"MaxPool2D k={k} s={s}: rel err {err:.2e}")
    assert err <= TOL


def test_flatten_layer_gradients(rng):
    layer = _bind(fm.Flatten(), (2, 3, 4), rng)
    x = rng.standard_normal((3, 2, 3, 4))
    y = layer.forward(x, True)
    assert y.shape == (3, 24) and np.shares_memory(y, x)
    assert gradcheck_layer(layer, x, rng.standard_normal((3, 24))) <= TOL


@pytest.mark.parametrize("loss", ["softmax_crossentropy", "mse"])
def test_cnn_model_gradients(loss, device, rng):
    model = fm.Sequential([fm.Conv2D(2, 3, 3, padding=1, l2=0.01), fm.Tanh(), fm.MaxPool2D(2),
                           fm.Conv2D(3, 2, (2, 1), stride=1), fm.Sigmoid(), fm.Flatten(), fm.Dense(2 * 2 * 3, 3)],
                          loss=loss, dtype="float64", seed=1, input_shape=(2, 6, 6), device=device)
    X = rng.standard_normal((4, 2, 6, 6))
    y = rng.integers(0, 3, 4) if loss != "mse" else rng.standard_normal((4, 3))
    err = gradcheck(model, X, y)
    print(f"Conv-Tanh-Pool-Conv-Sigmoid-Flatten-Dense {loss}: rel err {err:.2e}")
    assert err <= TOL


def test_first_conv_skips_col2im(monkeypatch, rng):
    def boom(*args):
        raise AssertionError("col2im called for the first layer")

    model = fm.Sequential([fm.Conv2D(1, 2, 3), fm.Flatten(), fm.Dense(2 * 3 * 3, 2)],
                          loss="mse", dtype="float64", seed=0, input_shape=(1, 5, 5))
    monkeypatch.setattr(cpu, "col2im", boom)
    assert model.layers[0].needs_dx is False
    model.loss_and_grads(rng.standard_normal((3, 1, 5, 5)), rng.standard_normal((3, 2)))


def test_planted_wrong_col2im_fails(monkeypatch, rng):
    original = cpu.col2im

    def shifted(dx, cols, kh, kw, stride, pad):
        original(dx, cols, kh, kw, stride, pad)
        dx[..., 1:, :] = dx[..., :-1, :].copy()     # every gradient one row off

    layer = _bind(fm.Conv2D(2, 2, 3, padding=1), (2, 5, 5), rng)
    x, dy = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((2, 2, 5, 5))
    assert gradcheck_layer(layer, x, dy) <= TOL
    monkeypatch.setattr(cpu, "col2im", shifted)
    err = gradcheck_layer(layer, x, dy)
    print(f"col2im one row off: rel err {err:.2e}")
    assert err > 1e-2


def test_planted_wrong_maxpool_backward_fails(monkeypatch, rng):
    def last_max(dx, dy, argmax, k, stride):   # gradient to the window's corner instead of its argmax
        dx[...] = 0
        dx[:, :, ::2, ::2] = dy

    layer = _bind(fm.MaxPool2D(2), (1, 6, 6), rng)
    x = rng.permutation(72).reshape(2, 1, 6, 6) * 0.01
    dy = rng.standard_normal((2, 1, 3, 3))
    monkeypatch.setattr(cpu, "maxpool_backward", last_max)
    err = gradcheck_layer(layer, x, dy)
    print(f"max-pool gradient to the corner: rel err {err:.2e}")
    assert err > 1e-2


# --------------------------------------------------------------------------- models

def test_summary_counts_params():
    cnn = fm.Sequential([fm.Conv2D(3, 10, 5), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(), fm.Dense(10 * 14 * 14, 10)],
                        input_shape=(3, 32, 32))
    text = cnn.summary(print_fn=None)
    print(text)
    assert cnn.layers[0].output_shape == (10, 28, 28)
    assert "760" in text.splitlines()[2]
    assert cnn.count_params() == 760 + 10 * 14 * 14 * 10 + 10
    mlp = fm.Sequential([fm.Flatten(), fm.Dense(784, 128), fm.ReLU(), fm.Dense(128, 10)], input_shape=(1, 28, 28))
    text = mlp.summary(print_fn=None)
    print(text)
    assert "100,480" in text and mlp.count_params() == 100_480 + 1_290


def test_lazy_build_from_data(rng):
    model = fm.Sequential([fm.Conv2D(1, 2, 3), fm.Flatten(), fm.Dense(2 * 4 * 4, 3)],
                          loss="softmax_crossentropy", seed=0)
    assert not model.built
    text = model.summary(print_fn=None)   # the parameters exist at construction; shapes wait for data
    assert "?" in text and "Total params: 119" in text and model.count_params() == 20 + 99
    X, y = rng.random((10, 1, 6, 6)), rng.integers(0, 3, 10)
    model.fit(X, y, epochs=1, batch_size=4)
    assert model.built and model.input_shape == (1, 6, 6)
    assert model.predict(X).shape == (10, 3)
    assert model.predict(X.reshape(10, 36)).shape == (10, 3)   # flat rows of the right size are reshaped


def test_conv_init_schemes(rng):
    # glorot with fan_in = C*KH*KW and fan_out = M*KH*KW (Keras, PyTorch); "course" draws (M, C*KH*KW)
    model = fm.Sequential([fm.Conv2D(4, 30, 5), fm.Flatten()], input_shape=(4, 5, 5), seed=0)
    w = model.get_weights()[0]
    limit = np.sqrt(6.0 / (4 * 25 + 30 * 25))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    assert np.all(model.get_weights()[1] == 0)
    course = fm.Sequential([fm.Conv2D(2, 3, 3, init="course"), fm.Flatten()], input_shape=(2, 3, 3), seed=7)
    want = np.random.RandomState(7).randn(3, 18) / np.sqrt(18)
    np.testing.assert_allclose(course.get_weights()[0].reshape(3, 18), want, rtol=1e-6)


def _small_cnn(classes, seed=0):
    return fm.Sequential([fm.Conv2D(1, 8, 3), fm.BatchNorm(8), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                          fm.Dense(8 * 13 * 13, classes)],
                         loss="softmax_crossentropy", optimizer=fm.Adam(1e-3), seed=seed)


def test_small_cnn_learns_shapes():
    X, y, names = make_shapes(512, seed=0)
    X = X.reshape(-1, 1, 28, 28)
    model = _small_cnn(len(names))
    hist = model.fit(X, y, epochs=4, batch_size=64)
    losses = hist.history["loss"]
    print(f"small CNN on make_shapes: loss {losses}, accuracy {hist.history['accuracy']}")
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]
    assert hist.history["accuracy"][-1] > 1.5 / len(names)   # well above chance
    ev = model.evaluate(X, y)
    assert np.isfinite(ev["loss"])


def test_cnn_train_step_allocates_nothing(rng):
    X, y = rng.random((128, 1, 28, 28), dtype=np.float32), rng.integers(0, 4, 128)
    growth, batch_bytes = train_step_growth(_small_cnn(4), X, y)
    print(f"peak traced growth over 10 CNN steps: {growth} bytes")
    assert growth < 4096 < batch_bytes
