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
    """Relative error between analytic and numerical gradients of every weight of a float64 model."""
    if np.dtype(model.dtype) != np.float64:
        raise ValueError(f"expected a float64 model for a gradient check, got {np.dtype(model.dtype).name}")
    _, grads = model.loss_and_grads(X, y)
    weights = model.get_weights()
    worst = 0.0
    for i, w in enumerate(weights):
        def f():
            model.set_weights(weights)
            return model.loss_and_grads(X, y)[0]
        num = numerical_grad(f, w, h)
        err = rel_error(grads[i], num)
        worst = max(worst, err)
        if verbose:
            print(f"gradcheck weight {i} {w.shape}: relative error {err:.2e}")
    model.set_weights(weights)
    return worst


def gradcheck_layer(layer, x, dy, h=1e-6, verbose=True):
    """Check dx and the parameter gradients of a built, bound float64 layer.

    f(x, params) = sum(forward(x) * dy), so df/dx = backward(dy)."""
    x = np.array(x, dtype=np.float64)

    def f():
        return float(np.sum(np.asarray(layer.forward(x, True)) * dy))

    layer.forward(x, True)
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
    return worst
