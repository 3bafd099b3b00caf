"""Numerical gradient checks: centred finite differences in float64.

``gradcheck(model, X, y)`` compares ``model.loss_and_grads`` with centred
differences of the loss for every parameter; ``gradcheck_layer`` does the
same for one layer's dx and parameter gradients through f = sum(forward(x) * dy).
Each prints the largest relative error it saw and returns it.
"""
import numpy as np


def rel_error(a, b):
    """||a - b|| / (||a|| + ||b||): the whole array's relative error, so that
    entries near zero (where finite differences have only absolute accuracy)
    do not dominate; 0 when both are exactly zero."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom > 0 else 0.0


def numerical_grad(f, x, h=1e-6):
    """Centred differences of the scalar f() with respect to x, perturbing x in place."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def gradcheck(model, X, y, h=1e-6, verbose=True):
    """Relative error between analytic and numerical gradients of every weight of a float64 model.

    Every evaluation starts from the generator state the check found, so Dropout draws the
    same masks each time (else the differences would compare different networks). The model
    is left exactly as it was found, also when the check raises: weights, layer state
    (BatchNorm's running statistics, which training-mode evaluations move), the generator and
    the optimizer state."""
    if np.dtype(model.dtype) != np.float64:
        raise ValueError(f"expected a float64 model for a gradient check, got {np.dtype(model.dtype).name}")
    found = _model_state(model)
    rng_state = found[2]

    def loss_and_grads():
        model.rng.bit_generator.state = rng_state
        return model.loss_and_grads(X, y)

    try:
        _, grads = loss_and_grads()
        weights = model.get_weights()
        worst = 0.0
        for i, w in enumerate(weights):
            def f():
                model.set_weights(weights)
                return loss_and_grads()[0]
            num = numerical_grad(f, w, h)
            err = rel_error(grads[i], num)
            worst = max(worst, err)
            if verbose:
                print(f"gradcheck weight {i} {w.shape}: relative error {err:.2e}")
    finally:
        _restore_model_state(model, found)
    return worst


def _model_state(model):
    """(weights, layer states, generator state, optimizer state buffers, step count): host copies."""
    return (model.get_weights(), [layer.get_state() for layer in model.layers], model.rng.bit_generator.state,
            [np.array(model.be.to_host(buf)) for buf in model.flat.state], model.optimizer.t)


def _restore_model_state(model, found):
    weights, states, rng_state, opt_state, t = found
    model.set_weights(weights)
    for layer, state in zip(model.layers, states):
        if state:
            layer.set_state(state)
    model.rng.bit_generator.state = rng_state
    for buf, saved in zip(model.flat.state, opt_state):
        buf[...] = model.be.to_device(saved)
    model.optimizer.t = t


def gradcheck_layer(layer, x, dy, h=1e-6, verbose=True):
    """Check dx and the parameter gradients of a built, bound float64 layer.

    f(x, params) = sum(forward(x) * dy), so df/dx = backward(dy). The layer's state and
    generator are put back afterwards (its parameters are restored by the differences)."""
    x = np.array(x, dtype=np.float64)
    state = layer.get_state()
    bits = getattr(layer.rng, "bit_generator", None)   # a NumPy Generator (a test may plant another source)
    rng_state = bits.state if bits is not None else None

    def forward():
        if rng_state is not None:   # the same dropout mask at every evaluation
            bits.state = rng_state
        return layer.forward(x, True)

    def f():
        return float(np.sum(np.asarray(forward()) * dy))

    try:
        forward()
        dx = layer.backward(np.array(dy, dtype=np.float64))
        analytic = ([np.array(dx)] if dx is not None else []) + [np.array(g) for g in layer.grads]
        targets = ([x] if dx is not None else []) + list(layer.params)
        worst = 0.0
        for i, (a, t) in enumerate(zip(analytic, targets)):
            err = rel_error(a, numerical_grad(f, t, h))
            worst = max(worst, err)
            if verbose:
                print(f"gradcheck {type(layer).__name__} {'dx' if i == 0 and dx is not None else 'param'} "
                      f"{t.shape}: relative error {err:.2e}")
    finally:   # the layer as it was found: state (running statistics) and generator
        if state:
            layer.set_state(state)
        if rng_state is not None:
            bits.state = rng_state
    return worst
