"""The spellings Keras and PyTorch users bring: ``activation=`` on Dense and Conv2D,
``padding="same" | "valid" | int | pair`` on Conv2D, AvgPool2D, GlobalAveragePooling2D,
GlobalMaxPooling2D and the Keras aliases, and errors that name what works.

Kernels match the float64 reference (1e-12 in float64, 1e-5 in float32); layers match
centred differences (1e-6) and PyTorch in float64 (1e-12), step by step through SGD;
``activation=`` runs the same kernels, gives the same numbers and the same model files as
an activation layer after the Dense or Conv2D; planted wrong gradients fail.
"""
import threading

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu, cuda_available, get_backend
from fastmlp.backend import reference as R
from fastmlp.backend.codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH, pads4
from fastmlp.backend.cpu import conv as cpu_conv
from fastmlp.backend.cpu import pool as cpu_pool
from fastmlp.conv import same_pads
from fastmlp.gradcheck import gradcheck, gradcheck_layer
from fastmlp.keywords import closest
from fastmlp.training import GRAPH_SAFE

from conftest import train_step_growth

TOL = 1e-6
KERNEL_TOL = {np.float64: 1e-12, np.float32: 1e-5}
TWINS = [0, 1]   # serial, parallel
_CUDA_OK, _CUDA_WHY = cuda_available()
# PyTorch says how it pads an even kernel for padding="same" (a copy of the input): expected here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
CODES = {"relu": RELU, "leaky_relu": LEAKY_RELU, "tanh": TANH, "sigmoid": SIGMOID}
LAYER_OF = {"relu": fm.ReLU, "leaky_relu": fm.LeakyReLU, "tanh": fm.Tanh, "sigmoid": fm.Sigmoid}


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    return float(np.abs(got - want).max() / scale) if want.size else 0.0


def _bind(layer, input_shape, rng):
    """A standalone float64 CPU layer with random parameters."""
    layer.build(input_shape, cpu, np.float64)
    params = [rng.standard_normal(s.shape) for s in layer.param_specs()]
    layer.bind(params, [np.zeros_like(p) for p in params])
    layer.needs_dx = True
    return layer


def _torch_act(torch, name):
    return {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.01)}[name]


# --------------------------------------------------------------------------- Dense(activation=)

@pytest.mark.parametrize("name", list(CODES))
def test_dense_activation_is_the_fused_pair(name, rng):
    # Dense(D, M, activation=a) and Dense(D, M), A() run the same fused kernel: the same
    # numbers bit for bit, through training steps too
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    make = lambda layers: fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.1),  # noqa: E731
                                        seed=3, dtype="float64", input_shape=(6,))
    own = make([fm.Dense(6, 5, activation=name), fm.Dense(5, 3)])
    pair = make([fm.Dense(6, 5), LAYER_OF[name](), fm.Dense(5, 3)])
    assert own.layers[0].act_code == pair.layers[0].act_code == CODES[name]
    assert pair.layers[1].fused
    np.testing.assert_array_equal(own.predict(X), pair.predict(X))
    own.fit(X, y, epochs=3, batch_size=8, verbose=0)
    pair.fit(X, y, epochs=3, batch_size=8, verbose=0)
    for a, b in zip(own.get_weights(), pair.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dense_activation_calls_no_separate_activation_kernel(monkeypatch, rng):
    model = fm.Sequential([fm.Dense(4, 3, activation="tanh"), fm.Dense(3, 2)], loss="mse", dtype="float64",
                          seed=0, input_shape=(4,))
    codes = []
    original = cpu.bias_act_forward
    monkeypatch.setattr(cpu, "bias_act_forward", lambda z, b, code, alpha: (codes.append(code), original(z, b, code, alpha)))
    monkeypatch.setattr(cpu, "act_forward", lambda *a: pytest.fail("a separate activation kernel ran"))
    model.loss_and_grads(rng.standard_normal((5, 4)), rng.standard_normal((5, 2)))
    assert codes == [TANH, IDENTITY]


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_dense_activation_gradients(name, rng):
    layer = _bind(fm.Dense(5, 4, activation=name), (5,), rng)
    err = gradcheck_layer(layer, rng.standard_normal((6, 5)), rng.standard_normal((6, 4)))
    print(f"Dense(activation={name!r}): rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", list(CODES))
def test_dense_activation_matches_torch_float64(name, rng):
    torch = pytest.importorskip("torch")
    layer = _bind(fm.Dense(5, 4, activation=name), (5,), rng)
    x = rng.standard_normal((7, 5)) * 2
    dy = rng.standard_normal((7, 4))
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(np.array(layer.params[0]), requires_grad=True)
    bt = torch.tensor(np.array(layer.params[1]), requires_grad=True)
    yt = _torch_act(torch, name)(xt @ wt + bt)
    (yt * torch.tensor(dy)).sum().backward()
    errs = [_rel(y, yt.detach().numpy()), _rel(dx, xt.grad.numpy()), _rel(layer.grads[0], wt.grad.numpy()),
            _rel(layer.grads[1], bt.grad.numpy())]
    print(f"Dense(activation={name!r}) vs torch (y, dx, dW, db): {', '.join(f'{e:.1e}' for e in errs)}")
    assert max(errs) <= 1e-12


def test_dense_activation_then_another_activation_runs_both(rng):
    model = fm.Sequential([fm.Dense(3, 4, activation="relu"), fm.Tanh()], loss="mse", dtype="float64",
                          seed=0, input_shape=(3,))
    assert not model.layers[1].fused
    x = rng.standard_normal((5, 3))
    W, b = model.get_weights()
    np.testing.assert_allclose(model.predict(x), np.tanh(np.maximum(x @ W + b, 0)), rtol=1e-13, atol=1e-15)


def test_activation_accepts_names_layers_and_none():
    assert fm.Dense(2, 3).act_code == IDENTITY
    assert fm.Dense(2, 3, activation=None).get_config() == fm.Dense(2, 3).get_config()   # old files read the same
    assert "activation" not in fm.Dense(2, 3, activation="linear").get_config()
    assert fm.Dense(2, 3, activation="ReLU").act_code == RELU
    leaky = fm.Dense(2, 3, activation=fm.LeakyReLU(0.2))
    assert (leaky.act_code, leaky.alpha) == (LEAKY_RELU, 0.2)
    assert leaky.get_config()["activation"] == {"name": "leaky_relu", "alpha": 0.2}
    assert fm.Dense(2, 3, activation="leaky_relu").get_config()["activation"] == "leaky_relu"
    again = fm.Dense.from_config(leaky.get_config())
    assert (again.act_code, again.alpha) == (LEAKY_RELU, 0.2)


def test_summary_names_the_activation():
    model = fm.Sequential([fm.Dense(4, 3, activation="relu"), fm.Dense(3, 2)], input_shape=(4,))
    text = model.summary(print_fn=None)
    assert "activation='relu'" in text
    assert model.count_params() == fm.Sequential([fm.Dense(4, 3), fm.ReLU(), fm.Dense(3, 2)],
                                                 input_shape=(4,)).count_params()


def test_activation_round_trips_through_model_files(tmp_path, rng):
    model = fm.Sequential([fm.Conv2D(2, 3, 2, padding="same", activation="tanh"), fm.MaxPool2D(2),
                           fm.Conv2D(3, 4, (2, 3), padding=(1, 0), activation=fm.LeakyReLU(0.3)),
                           fm.GlobalAveragePooling2D(), fm.Dense(4, 5, activation="sigmoid"),
                           fm.Dense(5, 3)], loss=fm.SoftmaxCrossEntropy(), optimizer=fm.Adam(0.01),
                          dtype="float64", seed=2, input_shape=(2, 6, 6))
    X, y = rng.standard_normal((12, 2, 6, 6)), rng.integers(0, 3, 12)
    model.fit(X, y, epochs=2, batch_size=4, verbose=0)
    model.save(tmp_path / "m.fmlp")
    loaded = fm.load_model(tmp_path / "m.fmlp")
    assert loaded.get_config() == model.get_config()
    assert loaded.summary(print_fn=None) == model.summary(print_fn=None)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    layers = loaded.get_config()["layers"]
    assert layers[0]["config"]["padding"] == "same" and layers[2]["config"]["padding"] == [1, 0]
    assert layers[2]["config"]["activation"] == {"name": "leaky_relu", "alpha": 0.3}


# --------------------------------------------------------------------------- Conv2D(activation=)

@pytest.mark.parametrize("name", list(CODES))
def test_conv_activation_before_maxpool_is_the_fused_triple(name, rng):
    X, y = rng.standard_normal((10, 2, 8, 8)), rng.integers(0, 3, 10)
    make = lambda layers: fm.Sequential(layers + [fm.Flatten(), fm.Dense(3 * 4 * 4, 3)],  # noqa: E731
                                        loss="softmax_crossentropy", optimizer=fm.SGD(0.05), seed=4,
                                        dtype="float64", input_shape=(2, 8, 8))
    own = make([fm.Conv2D(2, 3, 3, padding="same", activation=name), fm.MaxPool2D(2)])
    triple = make([fm.Conv2D(2, 3, 3, padding=1), LAYER_OF[name](), fm.MaxPool2D(2)])
    assert own.layers[0].pool is own.layers[1] and own.layers[0].act_code == CODES[name]
    np.testing.assert_array_equal(own.predict(X), triple.predict(X))
    own.fit(X, y, epochs=2, batch_size=5, verbose=0)
    triple.fit(X, y, epochs=2, batch_size=5, verbose=0)
    for a, b in zip(own.get_weights(), triple.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_conv_activation_then_activation_then_pool_runs_each(rng):
    # the Conv2D's own activation, then another one: the pool is not fused (one activation a kernel)
    model = fm.Sequential([fm.Conv2D(1, 2, 3, padding=1, activation="relu"), fm.Tanh(), fm.MaxPool2D(2),
                           fm.Flatten()], loss="mse", dtype="float64", seed=0, input_shape=(1, 4, 4))
    conv, tanh, pool = model.layers[:3]
    assert conv.pool is None and not tanh.fused and not pool.fused
    x = rng.standard_normal((3, 1, 4, 4))
    W, b = model.get_weights()
    z = np.zeros((3, 2, 4, 4))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(4):
        for j in range(4):
            z[:, :, i, j] = np.einsum("ncuv,mcuv->nm", xp[:, :, i:i + 3, j:j + 3], W) + b
    a = np.tanh(np.maximum(z, 0))
    want = a.reshape(3, 2, 2, 2, 2, 2).max(axis=(3, 5)).reshape(3, -1)
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_conv_activation_without_pool_gradients(name, rng):
    layer = _bind(fm.Conv2D(2, 3, (3, 2), padding="same", activation=name), (2, 5, 6), rng)
    x = rng.standard_normal((2, 2, 5, 6))
    err = gradcheck_layer(layer, x, rng.standard_normal((2,) + layer.output_shape))
    print(f"Conv2D(activation={name!r}) unpooled: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", list(CODES))
def test_conv_activation_without_pool_matches_torch(name, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    layer = _bind(fm.Conv2D(2, 3, 3, stride=2, padding=1, activation=name), (2, 7, 6), rng)
    x = rng.standard_normal((3, 2, 7, 6))
    dy = rng.standard_normal((3,) + layer.output_shape)
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(np.array(layer.params[0]), requires_grad=True)
    bt = torch.tensor(np.array(layer.params[1]), requires_grad=True)
    yt = _torch_act(torch, name)(F.conv2d(xt, wt, bt, stride=2, padding=1))
    (yt * torch.tensor(dy)).sum().backward()
    errs = [_rel(y, yt.detach().numpy()), _rel(dx, xt.grad.numpy()), _rel(layer.grads[0], wt.grad.numpy()),
            _rel(layer.grads[1], bt.grad.numpy())]
    print(f"Conv2D(activation={name!r}) vs torch (y, dx, dW, db): {', '.join(f'{e:.1e}' for e in errs)}")
    assert max(errs) <= 1e-12


# --------------------------------------------------------------------------- padding

PAD_GEOM = [((2, 3, 7, 8), 2, 4, 1, (0, 1, 1, 2)), ((2, 2, 6, 5), 4, 2, 1, (1, 2, 0, 1)),   # "same", flat path
            ((1, 2, 7, 9), 3, 3, 2, (1, 0, 0, 1)), ((2, 1, 5, 6), 2, 3, 3, (0, 2, 2, 0))]   # strided, any pads


def _im2col_by_padding(x, kh, kw, s, pads):
    # the definition: pad x explicitly, then im2col without padding
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    oh, ow = (h - kh) // s + 1, (w - kw) // s + 1
    cols = np.empty((c * kh * kw, n * oh * ow))
    R.im2col(cols, xp, kh, kw, s, 0)
    return cols


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape,kh,kw,s,pads", PAD_GEOM)
def test_asymmetric_padding_kernels(shape, kh, kw, s, pads, twin, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    want = _im2col_by_padding(x, kh, kw, s, pads)
    ref = np.empty(want.shape)
    R.im2col(ref, x, kh, kw, s, pads)
    assert _rel(ref, want) == 0.0
    cols = np.full(want.shape, np.nan, dtype)
    cpu_conv.im2col_twins[twin](cols, x, kh, kw, s, *pads)
    e1 = _rel(cols, want)
    g = rng.standard_normal(want.shape).astype(dtype)
    want_dx = np.empty(shape)
    R.col2im(want_dx, g, kh, kw, s, pads)
    # the adjoint: <im2col(x), g> == <x, col2im(g)>
    assert abs(np.sum(ref * g) - np.sum(x * want_dx)) <= 1e-9 * np.abs(ref * g).sum()
    dx = np.full(shape, np.nan, dtype)
    cpu_conv.col2im_twins[twin](dx, g, kh, kw, s, *pads)
    e2 = _rel(dx, want_dx)
    print(f"pads {pads} k=({kh}, {kw}) s={s} twin={twin} {dtype.__name__}: im2col {e1:.1e}, col2im {e2:.1e}")
    assert e1 == 0.0 and e2 <= KERNEL_TOL[dtype]
    cpu.im2col(cols, x, kh, kw, s, pads)            # the op takes the 4-tuple as one argument
    assert _rel(cols, want) == 0.0


KERNELS = [(1, 1), (2, 2), (3, 3), (4, 4), (2, 3), (5, 2), (4, 1)]


@pytest.mark.parametrize("k", KERNELS, ids=[f"{a}x{b}" for a, b in KERNELS])
def test_same_padding_matches_torch(k, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    layer = _bind(fm.Conv2D(2, 3, k, padding="same"), (2, 7, 6), rng)
    assert layer.output_shape == (3, 7, 6)
    x = rng.standard_normal((2, 2, 7, 6))
    dy = rng.standard_normal((2, 3, 7, 6))
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(np.array(layer.params[0]), requires_grad=True)
    bt = torch.tensor(np.array(layer.params[1]), requires_grad=True)
    yt = F.conv2d(xt, wt, bt, padding="same")
    (yt * torch.tensor(dy)).sum().backward()
    errs = [_rel(y, yt.detach().numpy()), _rel(dx, xt.grad.numpy()), _rel(layer.grads[0], wt.grad.numpy()),
            _rel(layer.grads[1], bt.grad.numpy())]
    print(f"Conv2D k={k} padding='same' vs torch (y, dx, dW, db): {', '.join(f'{e:.1e}' for e in errs)}")
    assert max(errs) <= 1e-12


@pytest.mark.parametrize("k,s,hw", [(3, 2, (7, 8)), (2, 2, (7, 6)), (4, 3, (8, 5)), (1, 2, (5, 5))])
def test_strided_same_padding_is_keras(k, s, hw, rng):
    # Keras: OH = ceil(H / S), the total padding split with the odd one below / right
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    layer = _bind(fm.Conv2D(2, 3, k, stride=s, padding="same"), (2,) + hw, rng)
    assert layer.output_shape[1:] == (-(-hw[0] // s), -(-hw[1] // s))
    pt, pb = same_pads(hw[0], k, s)
    pl, pr = same_pads(hw[1], k, s)
    assert pb - pt in (0, 1) and pr - pl in (0, 1)
    x = rng.standard_normal((2, 2) + hw)
    dy = rng.standard_normal((2,) + layer.output_shape)
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(np.array(layer.params[0]), requires_grad=True)
    yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, torch.tensor(np.array(layer.params[1])), stride=s)
    (yt * torch.tensor(dy)).sum().backward()
    errs = [_rel(y, yt.detach().numpy()), _rel(dx, xt.grad.numpy()), _rel(layer.grads[0], wt.grad.numpy())]
    print(f"Conv2D k={k} s={s} padding='same' {hw} vs torch: {errs}")
    assert max(errs) <= 1e-12


@pytest.mark.parametrize("k", [2, 3, 4])
def test_same_padding_through_the_fused_path_matches_torch(k, rng):
    # Conv2D(padding="same") -> ReLU -> MaxPool2D on the chunked fused path (several chunks)
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = fm.Sequential([fm.Conv2D(3, 4, k, padding="same"), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten()],
                          loss="mse", dtype="float64", seed=5, input_shape=(3, 12, 10))
    conv = model.layers[0]
    assert conv.pool is not None
    x = rng.standard_normal((24, 3, 12, 10))
    target = rng.standard_normal((24, 4 * 6 * 5))
    assert len(conv._chunks(24)[0]) > 2            # the batch runs as several chunks
    loss, grads = model.loss_and_grads(x, target)
    xt = torch.tensor(x)
    wt = torch.tensor(model.get_weights()[0], requires_grad=True)
    bt = torch.tensor(model.get_weights()[1], requires_grad=True)
    yt = F.max_pool2d(F.relu(F.conv2d(xt, wt, bt, padding="same")), 2).flatten(1)
    lt = ((yt - torch.tensor(target)) ** 2).mean()
    lt.backward()
    errs = [abs(loss - lt.item()) / lt.item(), _rel(grads[0], wt.grad.numpy()), _rel(grads[1], bt.grad.numpy())]
    print(f"fused Conv2D k={k} same -> ReLU -> MaxPool2D vs torch (loss, dW, db): {errs}")
    assert max(errs) <= 1e-12


def test_padding_spellings():
    assert fm.Conv2D(1, 1, 3, padding="valid").get_config()["padding"] == 0
    assert fm.Conv2D(1, 1, 3, padding="SAME").padding == "same"
    assert fm.Conv2D(1, 1, 3, padding=(2, 2)).padding == 2          # a symmetric pair is an int
    assert fm.Conv2D(1, 1, 3, padding=[1, 2]).pads == (1, 1, 2, 2)
    assert fm.Conv2D(1, 1, 4, padding="same").pads == (1, 2, 1, 2)
    assert fm.Conv2D(1, 1, (2, 5), padding="same").pads == (0, 1, 2, 2)
    assert repr(fm.Conv2D(1, 1, 3, padding="same")) == "Conv2D(1, 1, 3, padding='same')"
    assert pads4(2) == (2, 2, 2, 2) and pads4((0, 1, 2, 3)) == (0, 1, 2, 3)


def test_pair_padding_matches_torch(rng):
    torch = pytest.importorskip("torch")
    layer = _bind(fm.Conv2D(2, 2, (3, 2), padding=(2, 1)), (2, 5, 5), rng)
    x = rng.standard_normal((2, 2, 5, 5))
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(np.array(layer.params[0])),
                                      torch.tensor(np.array(layer.params[1])), padding=(2, 1)).numpy()
    assert _rel(layer.forward(x, True), want) <= 1e-12


@pytest.mark.parametrize("padding,parts", [("sam", ["'same'", "'valid'", "did you mean 'same'"]),
                                           ("full", ["'same'", "'valid'", "'full'"]),
                                           (-1, ["int P >= 0", "-1"]), ((1, 2, 3), ["pair", "(1, 2, 3)"]),
                                           ((1, -1), ["pair"]), (1.5, ["1.5"])])
def test_bad_padding_says_what_works(padding, parts):
    with pytest.raises(ValueError) as e:
        fm.Conv2D(1, 2, 3, padding=padding)
    print(e.value)
    for part in parts:
        assert part in str(e.value)


# --------------------------------------------------------------------------- pooling kernels

POOL_GEOM = [((2, 3, 7, 9), 2, 2), ((3, 2, 8, 5), 3, 1), ((1, 2, 6, 6), 3, 2), ((2, 1, 5, 5), 1, 1),
             ((1, 1, 4, 4), 4, 4)]   # (N, C, H, W), K, S


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape,k,s", POOL_GEOM)
def test_avgpool_kernels(shape, k, s, twin, dtype, rng):
    n, c, h, w = shape
    oshape = (n, c, (h - k) // s + 1, (w - k) // s + 1)
    x = rng.standard_normal(shape).astype(dtype)
    want = np.empty(oshape)
    R.avgpool_forward(want, x, k, s)
    y = np.full(oshape, np.nan, dtype)
    cpu_pool.avgpool_forward_twins[twin](y, x, k, s)
    dy = rng.standard_normal(oshape).astype(dtype)
    want_dx = np.empty(shape)
    R.avgpool_backward(want_dx, dy, k, s)
    dx = np.full(shape, np.nan, dtype)
    cpu_pool.avgpool_backward_twins[twin](dx, dy, k, s)
    e1, e2 = _rel(y, want), _rel(dx, want_dx)
    print(f"avgpool {shape} k={k} s={s} twin={twin} {dtype.__name__}: {e1:.1e}, backward {e2:.1e}")
    assert e1 <= KERNEL_TOL[dtype] and e2 <= KERNEL_TOL[dtype]
    # the adjoint: <avgpool(x), dy> == <x, avgpool_backward(dy)>
    assert abs(np.sum(want * dy) - np.sum(x * want_dx)) <= 1e-9 * np.abs(want * dy).sum()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 1, 1), (3, 2, 1, 5), (2, 4, 16, 16)])
@pytest.mark.parametrize("ties", [False, True])
def test_global_pool_kernels(shape, twin, dtype, ties, rng):
    n, c = shape[:2]
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal((n, c)).astype(dtype)
    want, y = np.empty((n, c)), np.full((n, c), np.nan, dtype)
    R.global_avgpool_forward(want, x)
    cpu_pool.global_avgpool_forward_twins[twin](y, x.reshape(n, c, -1))
    want_dx, dx = np.empty(shape), np.full(shape, np.nan, dtype)
    R.global_avgpool_backward(want_dx, dy)
    cpu_pool.global_avgpool_backward_twins[twin](dx.reshape(n, c, -1), dy)
    errs = {"avg": _rel(y, want), "avg backward": _rel(dx, want_dx)}
    want_arg, arg = np.empty((n, c), np.int64), np.full((n, c), -1, np.int32)
    R.global_maxpool_forward(want, want_arg, x)
    cpu_pool.global_maxpool_forward_twins[twin](y, arg, x.reshape(n, c, -1))
    np.testing.assert_array_equal(arg, want_arg)                  # the first maximum on ties
    R.global_maxpool_backward(want_dx, dy, want_arg)
    cpu_pool.global_maxpool_backward_twins[twin](dx.reshape(n, c, -1), dy, arg)
    errs["max"], errs["max backward"] = _rel(y, want), _rel(dx, want_dx)
    print(f"global pools {shape} twin={twin} {dtype.__name__} ties={ties}: {errs}")
    assert errs["max"] == 0.0 and errs["max backward"] == 0.0
    assert max(errs.values()) <= KERNEL_TOL[dtype]


def test_global_maxpool_nan_is_the_maximum():
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]], [[[7.0, 2.0], [7.0, 1.0]]]])
    want, want_arg = np.empty((2, 1)), np.empty((2, 1), np.int64)
    R.global_maxpool_forward(want, want_arg, x)
    assert want_arg.ravel().tolist() == [1, 0]
    for twin in TWINS:
        y, arg = np.empty((2, 1)), np.empty((2, 1), np.int32)
        cpu_pool.global_maxpool_forward_twins[twin](y, arg, x.reshape(2, 1, 4))
        assert np.isnan(y[0, 0]) and y[1, 0] == 7.0
        np.testing.assert_array_equal(arg, want_arg)


# --------------------------------------------------------------------------- pooling layers

@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (2, 3), (3, 2)])
def test_avgpool_layer_gradients(k, s, rng):
    layer = _bind(fm.AvgPool2D(k, stride=s), (2, 7, 6), rng)
    x = rng.standard_normal((2, 2, 7, 6))
    err = gradcheck_layer(layer, x, rng.standard_normal((2,) + layer.output_shape))
    print(f"AvgPool2D k={k} s={s}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("make", [fm.GlobalAveragePooling2D, fm.GlobalMaxPooling2D])
def test_global_pool_layer_gradients(make, rng):
    layer = _bind(make(), (3, 5, 4), rng)
    assert layer.output_shape == (3,)
    x = rng.permutation(2 * 3 * 5 * 4).reshape(2, 3, 5, 4) * 0.01   # distinct: no argmax flips
    err = gradcheck_layer(layer, x, rng.standard_normal((2, 3)))
    print(f"{make.__name__}: rel err {err:.2e}")
    assert err <= TOL


def _row_off(dx):          # every gradient one row off
    dx[..., 1:, :] = dx[..., :-1, :].copy()


def _undivided(dx):       # the mean's 1 / (H*W) forgotten
    dx *= dx.shape[2] * dx.shape[3]


@pytest.mark.parametrize("op,layer,plant", [("avgpool_backward", lambda: fm.AvgPool2D(2), _row_off),
                                            ("global_avgpool_backward", fm.GlobalAveragePooling2D, _undivided),
                                            ("global_maxpool_backward", fm.GlobalMaxPooling2D, _row_off)])
def test_planted_wrong_pool_backward_fails(op, layer, plant, monkeypatch, rng):
    layer = _bind(layer(), (2, 6, 6), rng)
    x = rng.permutation(144).reshape(2, 2, 6, 6) * 0.01
    dy = rng.standard_normal((2,) + layer.output_shape)
    assert gradcheck_layer(layer, x, dy, verbose=False) <= TOL
    original = getattr(cpu, op)

    def planted(dx, *args):
        original(dx, *args)
        plant(dx)

    monkeypatch.setattr(cpu, op, planted)
    err = gradcheck_layer(layer, x, dy, verbose=False)
    print(f"{op} with {plant.__name__}: rel err {err:.2e}")
    assert err > 1e-2


def _torch_net(torch, weights, kinds):
    """The PyTorch float64 twin of the model of test_pool_models_match_torch_step_by_step."""
    F = torch.nn.functional
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    pool = {"avg": lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1),
            "max": lambda t: F.adaptive_max_pool2d(t, 1).flatten(1)}[kinds]

    def forward(x):
        t = torch.tanh(F.conv2d(x, params[0], params[1], padding="same"))
        t = F.avg_pool2d(t, 2)
        t = F.relu(F.conv2d(t, params[2], params[3], padding=1))
        t = pool(t)
        return t @ params[4] + params[5]
    return params, forward


@pytest.mark.parametrize("kinds", ["avg", "max"])
def test_pool_models_match_torch_step_by_step(kinds, rng):
    # Conv2D(same, tanh) -> AvgPool2D -> Conv2D(relu) -> Global{Average,Max}Pooling2D -> Dense,
    # three SGD steps with momentum: losses and weights as torch.optim.SGD's in float64
    torch = pytest.importorskip("torch")
    glob = fm.GlobalAveragePooling2D() if kinds == "avg" else fm.GlobalMaxPooling2D()
    model = fm.Sequential([fm.Conv2D(2, 4, 2, padding="same", activation="tanh"), fm.AvgPool2D(2),
                           fm.Conv2D(4, 5, 3, padding=1, activation="relu"), glob, fm.Dense(5, 3)],
                          loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.1, momentum=0.9),
                          dtype="float64", seed=7, input_shape=(2, 8, 6))
    X, y = rng.standard_normal((6, 2, 8, 6)), rng.integers(0, 3, 6)
    params, forward = _torch_net(torch, model.get_weights(), kinds)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(3):
        hist = model.fit(X, y, epochs=1, batch_size=None, verbose=0, shuffle=False)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(torch.tensor(X)), torch.tensor(y))
        loss.backward()
        opt.step()
        errs = [abs(hist.history["loss"][0] - loss.item()) / loss.item()]
        errs += [_rel(w, p.detach().numpy()) for w, p in zip(model.get_weights(), params)]
        print(f"{kinds} step {step}: loss {loss.item():.6f}, max rel err {max(errs):.1e}")
        assert max(errs) <= 1e-12


def test_pool_layers_in_models_save_load_and_summary(tmp_path, rng):
    model = fm.Sequential([fm.Conv2D(1, 3, 3, padding="same"), fm.AveragePooling2D(2, stride=1),
                           fm.MaxPooling2D((2, 2)), fm.GlobalMaxPooling2D(), fm.Dense(3, 2)],
                          loss="mse", dtype="float32", seed=1, input_shape=(1, 7, 7))
    text = model.summary(print_fn=None)
    for part in ["AvgPool2D(pool_size=2, stride=1)", "(None, 3, 6, 6)", "MaxPool2D", "(None, 3, 3, 3)",
                 "GlobalMaxPooling2D()", "(None, 3)"]:
        assert part in text
    X = rng.standard_normal((9, 1, 7, 7)).astype(np.float32)
    model.fit(X, rng.standard_normal((9, 2)), epochs=2, batch_size=3, verbose=0)
    model.save(tmp_path / "p.fmlp")
    loaded = fm.load_model(tmp_path / "p.fmlp")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert [c["class"] for c in loaded.get_config()["layers"]] == \
        ["Conv2D", "AvgPool2D", "MaxPool2D", "GlobalMaxPooling2D", "Dense"]
    report = model.memory_report(16)
    assert report["workspaces"] > 0


def test_keras_aliases_are_the_same_classes():
    assert fm.MaxPooling2D is fm.MaxPool2D and fm.AveragePooling2D is fm.AvgPool2D
    assert fm.MaxPool2D((3, 3)).k == 3 and fm.AvgPool2D(2).stride == 2
    for layer in (fm.AvgPool2D, fm.GlobalAveragePooling2D, fm.GlobalMaxPooling2D):
        assert issubclass(layer, GRAPH_SAFE)


def test_pool_layers_check_their_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fm.Sequential([fm.GlobalAveragePooling2D()], input_shape=(12,))
    with pytest.raises(ValueError, match="does not fit"):
        fm.Sequential([fm.AvgPool2D(4)], input_shape=(1, 3, 5))
    with pytest.raises(ValueError, match="square"):
        fm.AvgPool2D((2, 3))
    with pytest.raises(ValueError, match="pool_size"):
        fm.AvgPool2D(0)
    with pytest.raises(ValueError, match="stride"):
        fm.AvgPool2D(2, stride=0)


@pytest.mark.parametrize("glob", [fm.GlobalAveragePooling2D, fm.GlobalMaxPooling2D])
def test_pool_train_step_allocates_nothing(glob, rng):
    model = fm.Sequential([fm.Conv2D(1, 4, 3, padding="same", activation="relu"), fm.AvgPool2D(2), glob(),
                           fm.Dense(4, 3)], loss="softmax_crossentropy", optimizer=fm.Adam(1e-3), seed=0,
                          input_shape=(1, 12, 12))
    X, y = rng.random((128, 1, 12, 12), dtype=np.float32), rng.integers(0, 3, 128)
    growth, batch_bytes = train_step_growth(model, X, y)
    print(f"peak traced growth over 10 steps with {glob.__name__}: {growth} bytes")
    assert growth < 4096 < batch_bytes


def test_concurrent_predictions_with_pool_layers():
    model = fm.Sequential([fm.Conv2D(2, 4, 2, padding="same", activation="tanh"), fm.AvgPool2D(2),
                           fm.Conv2D(4, 6, 3, padding=1), fm.GlobalMaxPooling2D(), fm.Dense(6, 3)],
                          loss="softmax_crossentropy", optimizer=fm.SGD(0.05), seed=0)
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((64, 2, 10, 10)).astype(np.float32), rng.integers(0, 3, 64), epochs=1,
              batch_size=16, verbose=0)
    inputs = [rng.standard_normal((int(n), 2, 10, 10)).astype(np.float32) for n in rng.integers(1, 30, 96)]
    alone = [model.predict(x) for x in inputs]
    together = [None] * len(inputs)
    start = threading.Barrier(4)

    def work(t):
        start.wait()
        for i in range(t, len(inputs), 4):
            together[i] = model.predict(inputs[i])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert all(b is not None and np.array_equal(a, b) for a, b in zip(alone, together))


def test_model_gradients_with_every_new_spelling(rng):
    model = fm.Sequential([fm.Conv2D(2, 3, (2, 3), padding="same", activation="sigmoid", l2=0.01),
                           fm.AvgPool2D(2, stride=1), fm.Conv2D(3, 3, 2, stride=2, padding="same"),
                           fm.GlobalAveragePooling2D(), fm.Dense(3, 4, activation="tanh"), fm.Dense(4, 2)],
                          loss="softmax_crossentropy", dtype="float64", seed=1, input_shape=(2, 6, 5))
    err = gradcheck(model, rng.standard_normal((3, 2, 6, 5)), rng.integers(0, 2, 3))
    print(f"model with activation=, padding='same', AvgPool2D, GlobalAveragePooling2D: rel err {err:.2e}")
    assert err <= TOL


# --------------------------------------------------------------------------- the GPU twins

def test_cuda_wrappers_take_asymmetric_padding(monkeypatch):
    # no GPU needed: the stand-in CuPy of test_cuda_backend records every launch
    from test_cuda_backend import _FakeCupy, _launch_problems, load_cuda_backend
    fake = _FakeCupy()
    be = load_cuda_backend(monkeypatch, fake)
    f = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    be.im2col(f(3 * 8, 2 * 7 * 8), f(2, 3, 7, 8), 2, 4, 1, (0, 1, 1, 2))
    be.col2im(f(2, 3, 7, 8), f(3 * 8, 2 * 7 * 8), 2, 4, 1, (0, 1, 1, 2))
    problems = _launch_problems(fake.launches)
    assert not problems, "\n".join(problems)
    launched = [(e, args) for _, e, _, _, args, _ in fake.launches]
    assert [e for e, _ in launched] == ["im2col<float>", "col2im<float>"]
    for _, args in launched:    # ..., stride, PT, PL, OH, OW
        assert [int(a) for a in args[-5:]] == [1, 0, 1, 7, 8]
    with pytest.raises(ValueError, match="cols"):      # the output size counts the bottom and right pads
        be.im2col(f(3 * 8, 2 * 6 * 5), f(2, 3, 7, 8), 2, 4, 1, (0, 1, 1, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA_OK, reason=f"no CUDA device: {_CUDA_WHY}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_new_ops_match_reference(dtype, rng):
    be = get_backend("cuda")
    errs = {}
    for shape, kh, kw, s, pads in PAD_GEOM:
        x = rng.standard_normal(shape).astype(dtype)
        want = _im2col_by_padding(x, kh, kw, s, pads)
        cols = be.empty(want.shape, dtype)
        be.im2col(cols, be.to_device(x), kh, kw, s, pads)
        g = rng.standard_normal(want.shape).astype(dtype)
        want_dx = np.empty(shape)
        R.col2im(want_dx, g, kh, kw, s, pads)
        dx = be.empty(shape, dtype)
        be.col2im(dx, be.to_device(g), kh, kw, s, pads)
        errs[f"pads {pads}"] = max(_rel(be.to_host(cols), want), _rel(be.to_host(dx), want_dx))
    for shape, k, s in POOL_GEOM:
        n, c, h, w = shape
        oshape = (n, c, (h - k) // s + 1, (w - k) // s + 1)
        x = rng.integers(0, 3, shape).astype(dtype)
        want, y = np.empty(oshape), be.empty(oshape, dtype)
        R.avgpool_forward(want, x, k, s)
        be.avgpool_forward(y, be.to_device(x), k, s)
        dy = rng.standard_normal(oshape).astype(dtype)
        want_dx, dx = np.empty(shape), be.empty(shape, dtype)
        R.avgpool_backward(want_dx, dy, k, s)
        be.avgpool_backward(dx, be.to_device(dy), k, s)
        errs[f"avgpool {shape}"] = max(_rel(be.to_host(y), want), _rel(be.to_host(dx), want_dx))
        g = rng.standard_normal((n, c)).astype(dtype)
        want, y = np.empty((n, c)), be.empty((n, c), dtype)
        R.global_avgpool_forward(want, x)
        be.global_avgpool_forward(y, be.to_device(x))
        R.global_avgpool_backward(want_dx, g)
        be.global_avgpool_backward(dx, be.to_device(g))
        errs[f"global avg {shape}"] = max(_rel(be.to_host(y), want), _rel(be.to_host(dx), want_dx))
        want_arg, arg = np.empty((n, c), np.int64), be.empty((n, c), np.int32)
        R.global_maxpool_forward(want, want_arg, x)
        be.global_maxpool_forward(y, arg, be.to_device(x))
        np.testing.assert_array_equal(be.to_host(arg), want_arg)
        R.global_maxpool_backward(want_dx, g, want_arg)
        be.global_maxpool_backward(dx, be.to_device(g), arg)
        errs[f"global max {shape}"] = max(_rel(be.to_host(y), want), _rel(be.to_host(dx), want_dx))
    print(f"cuda {dtype.__name__}: {errs}")
    assert max(errs.values()) <= KERNEL_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA_OK, reason=f"no CUDA device: {_CUDA_WHY}")
def test_cuda_model_with_new_spellings_matches_cpu(rng):
    make = lambda device: fm.Sequential(  # noqa: E731
        [fm.Conv2D(2, 4, 2, padding="same", activation="relu"), fm.AvgPool2D(2), fm.Conv2D(4, 4, 3, padding=1),
         fm.GlobalMaxPooling2D(), fm.Dense(4, 3, activation="tanh"), fm.Dense(3, 3)],
        loss="softmax_crossentropy", optimizer=fm.SGD(0.05), dtype="float64", seed=3, input_shape=(2, 8, 8),
        device=device)
    X, y = rng.standard_normal((16, 2, 8, 8)), rng.integers(0, 3, 16)
    on_cpu, on_gpu = make("cpu"), make("cuda")
    on_cpu.fit(X, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    on_gpu.fit(X, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    for a, b in zip(on_cpu.get_weights(), on_gpu.get_weights()):
        assert _rel(b, a) <= 1e-10


# --------------------------------------------------------------------------- near-miss errors

@pytest.mark.parametrize("call,parts", [
    (lambda: fm.Dense(256), ["Dense takes (in_features, out_features): Dense(784, 256)", "got Dense(256)"]),
    (lambda: fm.Dense(256, activation="relu"), ["Dense(784, 256)", "activation='relu'"]),
    (lambda: fm.Dense(784, 256, activaton="relu"), ["unknown keyword 'activaton'; did you mean 'activation'?"]),
    (lambda: fm.Dense(784, 256, units=3), ["unknown keyword 'units'", "in_features, out_features"]),
    (lambda: fm.Conv2D(3, 8, kernal_size=3), ["unknown keyword 'kernal_size'; did you mean 'kernel_size'?"]),
    (lambda: fm.Conv2D(8, 3), ["Conv2D takes (in_channels, out_channels, kernel_size)", "Conv2D(3, 16, 3"]),
    (lambda: fm.MaxPool2D(2, strides=2), ["unknown keyword 'strides'; did you mean 'stride'?"]),
    (lambda: fm.MaxPooling2D(), ["MaxPool2D takes (pool_size): MaxPool2D(2)"]),
    (lambda: fm.AvgPool2D(2, strdie=1), ["did you mean 'stride'?"]),
    (lambda: fm.Dropout(rat=0.5), ["did you mean 'rate'?"]),
    (lambda: fm.BatchNorm(8, momentun=0.9), ["did you mean 'momentum'?"]),
    (lambda: fm.ReLU(0.1), ["ReLU takes ()"]),
    (lambda: fm.LeakyReLU(alpah=0.1), ["did you mean 'alpha'?"]),
])
def test_near_miss_calls_say_what_works(call, parts):
    with pytest.raises(TypeError) as e:
        call()
    print(e.value)
    for part in parts:
        assert part in str(e.value)


@pytest.mark.parametrize("call,parts", [
    (lambda: fm.Dense(784, 256, "relu"), ["activation='relu'", "init"]),
    (lambda: fm.Dense(3, 4, activation="rleu"), ["'relu'", "'tanh'", "did you mean 'relu'?"]),
    (lambda: fm.Dense(3, 4, activation="softmax"), ["'relu'", "'softmax'"]),
    (lambda: fm.Conv2D(1, 2, 3, activation=fm.Dense(2, 2)), ["activation layer", "Dense"]),
    (lambda: fm.Dense(3, 4, activation={"name": "tanh", "alpha": 0.1}), ["leaky_relu only"]),
])
def test_bad_activation_says_what_works(call, parts):
    with pytest.raises(ValueError) as e:
        call()
    print(e.value)
    for part in parts:
        assert part in str(e.value)


def test_closest_is_case_insensitive_and_silent_when_nothing_is_near():
    assert closest("Activaton", ["activation", "init"]) == "activation"
    assert closest("zzz", ["activation", "init"]) is None
