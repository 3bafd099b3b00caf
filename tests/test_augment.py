"""fm.Augment and its kernel: exact geometry, the NumPy reference, seeding, training.

Geometry tests drive ``Augment.apply`` with a stand-in generator that returns
chosen uniforms (columns: flip_h, flip_v, angle, dx, dy; 0.5 is "no change"
for the last three), so each transform is known exactly.
"""
import tracemalloc

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu
from fastmlp.backend import get_backend
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import augment as cpu_augment

TOL = {np.float64: 1e-12, np.float32: 1e-5}


class Draws:
    """A generator stand-in: ``random(out=u)`` fills every row with the given uniforms."""

    def __init__(self, flip_h=0.9, flip_v=0.9, angle=0.5, dx=0.5, dy=0.5):
        self.row = np.array([flip_h, flip_v, angle, dx, dy])

    def random(self, out):
        out[...] = self.row


def apply(aug, X, rng, device="cpu"):
    be = get_backend(device)
    xb = be.to_device(np.array(X))
    aug.apply(be, xb, rng)
    return np.asarray(be.to_host(xb))


def images(rng, n=3, c=1, h=6, w=8, dtype=np.float64):
    return rng.random((n, c, h, w)).astype(dtype)   # (N, C, H, W)


# --- geometry ----------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_shift_moves_pixels_by_the_expected_amount(interpolation, rng, device):
    X = images(rng, c=2, h=6, w=8)
    aug = fm.Augment(shift=0.25, interpolation=interpolation)    # up to 2 px across, 1.5 px down
    right = apply(aug, X, Draws(dx=1.0), device)                 # dx = +0.25 * 8 = +2 columns
    assert np.array_equal(right[..., 2:], X[..., :-2]) and not right[..., :2].any()
    up = apply(aug, X, Draws(dy=0.0, dx=0.5), device)            # dy = -1.5 rows: a half-pixel shift
    if interpolation == "bilinear":
        want = np.zeros_like(X)
        want[:, :, :4] = 0.5 * X[:, :, 1:5] + 0.5 * X[:, :, 2:6]
        want[:, :, 4] = 0.5 * X[:, :, 5]
        np.testing.assert_allclose(up, want, rtol=0, atol=1e-12)
    else:   # floor(y + 0.5) with y = i + 1.5: reads row i + 2
        assert np.array_equal(up[:, :, :4], X[:, :, 2:]) and not up[:, :, 4:].any()


def test_flips_mirror(rng, device):
    X = images(rng, c=3)
    assert np.array_equal(apply(fm.Augment(flip_h=True), X, Draws(flip_h=0.2), device), X[..., ::-1])
    assert np.array_equal(apply(fm.Augment(flip_v=True), X, Draws(flip_v=0.2), device), X[:, :, ::-1])
    assert np.array_equal(apply(fm.Augment(flip_h=True, flip_v=True), X, Draws(0.9, 0.9), device), X)


def test_flat_channels_last_batches_flip_per_pixel(rng):
    # (N, H, W, C) images flattened as loaders give them: a flip moves whole pixels
    X = rng.random((2, 5, 7, 3))
    got = apply(fm.Augment(flip_h=True, image_shape=(5, 7)), X.reshape(2, -1), Draws(flip_h=0.1))
    assert np.array_equal(got.reshape(X.shape), X[:, :, ::-1, :])


def test_zero_rotation_and_shift_are_the_identity(rng, device):
    X = images(rng, c=2, h=7, w=5)
    for interpolation in ("bilinear", "nearest"):
        aug = fm.Augment(rotate=30.0, shift=0.2, interpolation=interpolation)
        assert np.array_equal(apply(aug, X, Draws(angle=0.5, dx=0.5, dy=0.5), device), X)
    nothing = fm.Augment(image_shape=(2, 7, 5))          # no transform enabled: batches untouched
    assert nothing.is_identity
    assert np.array_equal(apply(nothing, X.reshape(len(X), -1), np.random.default_rng(0)), X.reshape(len(X), -1))


@pytest.mark.parametrize("size", [5, 6])
def test_rotation_by_90_degrees_is_rot90(size, rng, device):
    X = images(rng, n=2, c=2, h=size, w=size)
    aug = fm.Augment(rotate=90.0, interpolation="nearest")
    ccw = apply(aug, X, Draws(angle=1.0), device)       # +90: counter-clockwise, as np.rot90
    cw = apply(aug, X, Draws(angle=0.0), device)
    assert np.array_equal(ccw, np.rot90(X, 1, axes=(2, 3)))
    assert np.array_equal(cw, np.rot90(X, -1, axes=(2, 3)))
    smooth = apply(fm.Augment(rotate=90.0), X, Draws(angle=1.0), device)
    np.testing.assert_allclose(smooth, np.rot90(X, 1, axes=(2, 3)), atol=1e-12)


def test_nchw_and_flat_batches_agree(rng):
    X = images(rng, n=4, c=3, h=6, w=6)
    aug = dict(flip_h=True, rotate=20.0, shift=0.1)
    a = apply(fm.Augment(**aug), X, np.random.default_rng(3))
    b = apply(fm.Augment(**aug, image_shape=(3, 6, 6)), X.reshape(4, -1), np.random.default_rng(3))
    assert np.array_equal(a.reshape(4, -1), b)


# --- the kernel against the reference ------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("nearest", [0, 1])
@pytest.mark.parametrize("which", ["cpu", "serial", "parallel"])
def test_kernel_matches_reference(which, nearest, channels_last, dtype, rng):
    n, c, h, w = 5, 3, 9, 7
    x = (rng.standard_normal((n, c * h * w)) * 10).astype(dtype)
    params = fm.Augment(flip_h=True, flip_v=True, rotate=45.0, shift=0.3).draw(rng, n, h, w)
    want = np.empty(x.shape)
    R.augment_images(want, x.astype(np.float64), params, c, h, w, channels_last, nearest)
    got = np.full_like(x, np.nan)
    kernel = {"cpu": cpu.augment_images, "serial": cpu_augment.augment_images_twins.serial,
              "parallel": cpu_augment.augment_images_twins.parallel}[which]
    kernel(got, x, params, c, h, w, channels_last, nearest)
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"{which} nearest={nearest} channels_last={channels_last} {np.dtype(dtype).name}: rel err {err:.1e}")
    assert err <= TOL[dtype]
    assert (want == 0).sum() > 0, "the draw should move some pixels out of the image"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nearest", [0, 1])
def test_backend_op_matches_reference(device, nearest, dtype, rng):
    # through the backend API, as Augment.apply calls it (params uploaded with copy_from_host)
    be = get_backend(device)
    n, c, h, w = 6, 3, 17, 11
    x = rng.standard_normal((n, c * h * w)).astype(dtype)
    # nearest: flips and whole-pixel shifts only, where float32 and float64 coordinates round alike
    aug = fm.Augment(flip_h=True, flip_v=True, rotate=0.0 if nearest else 30.0, shift=0.0 if nearest else 0.25)
    params = aug.draw(rng, n, h, w)
    for cl in (0, 1):
        want = np.empty(x.shape)
        R.augment_images(want, x.astype(np.float64), params, c, h, w, cl, nearest)
        out = be.empty(x.shape, dtype)
        dev_params = be.empty(params.shape, np.float64)
        be.copy_from_host(dev_params, params)
        be.augment_images(out, be.to_device(x), dev_params, c, h, w, cl, nearest)
        got = np.asarray(be.to_host(out))
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        print(f"{device} nearest={nearest} channels_last={cl} {np.dtype(dtype).name}: {err:.1e}")
        assert err <= TOL[dtype]
    with pytest.raises(ValueError, match="shape"):
        be.copy_from_host(be.empty((2, 6), np.float64), np.zeros((3, 6)))


def test_cuda_launch_matches_the_kernel_signature(monkeypatch):
    # without a GPU: the cuda package against the stand-in CuPy of test_cuda_backend
    from test_cuda_backend import _FakeCupy, _launch_problems, load_cuda_backend
    fake = _FakeCupy()
    cuda = load_cuda_backend(monkeypatch, fake)
    for dtype in (np.float32, np.float64):
        for n, c, h, w in ((1, 1, 1, 1), (7, 3, 28, 28), (3000, 1, 64, 64)):
            x = np.zeros((n, c * h * w), dtype)
            cuda.augment_images(np.empty_like(x), x, np.zeros((n, 6)), c, h, w, 1, 0)
    assert not _launch_problems(fake.launches), "\n".join(_launch_problems(fake.launches))
    assert {e for _, e, *_ in fake.launches} == {"augment_images<float>", "augment_images<double>"}
    assert not fake.host_syncs
    with pytest.raises(TypeError, match="float64"):
        cuda.augment_images(np.empty((2, 4), np.float32), np.zeros((2, 4), np.float32),
                            np.zeros((2, 6), np.float32), 1, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        cuda.augment_images(np.empty((2, 4), np.float32), np.zeros((2, 4), np.float32),
                            np.zeros((2, 6)), 1, 3, 2, 0, 0)


# --- seeding, allocation, training ----------------------------------------------------

def test_same_seed_same_augmentation(rng):
    X = images(rng, n=16, c=1, h=12, w=12).reshape(16, -1)
    aug = dict(flip_h=True, flip_v=True, rotate=25.0, shift=0.15, image_shape=(12, 12))
    a = apply(fm.Augment(**aug), X, np.random.default_rng(7))
    b = apply(fm.Augment(**aug), X, np.random.default_rng(7))
    c = apply(fm.Augment(**aug), X, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # per sample: one batch holds different transforms of the same image
    same = apply(fm.Augment(**aug), np.repeat(X[:1], 8, axis=0), np.random.default_rng(7))
    assert len({row.tobytes() for row in same}) > 1


def test_apply_allocates_nothing_after_warm_up(rng):
    xb = rng.random((64, 784), dtype=np.float32)
    aug = fm.Augment(flip_h=True, rotate=10.0, shift=0.1, image_shape=(28, 28))
    g = np.random.default_rng(0)
    aug.apply(cpu, xb, g)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(30):
            aug.apply(cpu, xb, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak traced growth over 30 batches: {peak - base} bytes (a batch is {xb.nbytes})")
    assert peak - base < 2048 < xb.nbytes


def test_fit_with_augment_learns_shapes():
    from fastmlp.data import make_shapes
    X, y, classes = make_shapes(900, size=16, seed=0, centered=True)
    X = X.reshape(len(X), -1)
    aug = fm.Augment(flip_h=True, rotate=10.0, shift=0.05, image_shape=(16, 16))
    model = fm.Sequential([fm.Dense(256, 64, init="he"), fm.ReLU(), fm.Dense(64, len(classes))],
                          loss=fm.SoftmaxCrossEntropy(), optimizer=fm.Adam(3e-3), seed=0)
    h = model.fit(X[:700], y[:700], epochs=6, batch_size=64, validation_data=(X[700:], y[700:]), augment=aug)
    print(h)
    assert aug._bufs, "augment.apply was never called"
    assert h["val_accuracy"][-1] >= 0.85
    assert h["loss"][-1] < h["loss"][0]


# --- arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    ({"rotate": -1}, "rotate"), ({"rotate": float("nan")}, "rotate"), ({"shift": 1.0}, "shift"),
    ({"shift": "0.1"}, "shift"), ({"image_shape": (28,)}, "image_shape"), ({"image_shape": (0, 4)}, "image_shape"),
    ({"interpolation": "cubic"}, "interpolation"),
])
def test_bad_arguments_say_what_was_expected(kw, match):
    with pytest.raises(ValueError, match=match):
        fm.Augment(**kw)
    with pytest.raises(TypeError, match="flip_h"):
        fm.Augment(flip_h="yes")


def test_batch_shapes_that_do_not_fit_are_refused(rng):
    with pytest.raises(ValueError, match=r"image_shape=\(H, W\)"):
        apply(fm.Augment(shift=0.1), rng.random((2, 50)), Draws())
    with pytest.raises(ValueError, match="features"):
        apply(fm.Augment(shift=0.1, image_shape=(7, 7)), rng.random((2, 50)), Draws())
    with pytest.raises(ValueError, match="does not match"):
        apply(fm.Augment(shift=0.1, image_shape=(5, 5)), rng.random((2, 1, 4, 4)), Draws())
    assert "rotate=10.0" in repr(fm.Augment(rotate=10))
