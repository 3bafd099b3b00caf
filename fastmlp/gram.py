"""Full-batch SGD on a wide first layer, carried out in the row space of X.

With full-batch gradient descent the first Dense layer sees the same X
(N, D) at every step, and SGD (momentum, Nesterov and L2 included) only ever
adds multiples of W0, of the initial momentum buffer B0, and of ``X.T @ (...)``
to W and to its momentum buffer. So, exactly in real arithmetic,

    W_t   = a_t W0 + c_t B0 + X.T @ C_t        (C_t, E_t are (N, M))
    buf_t = b_t W0 + d_t B0 + X.T @ E_t
    X @ W_t = a_t (X @ W0) + c_t (X @ B0) + (X @ X.T) @ C_t

and a step needs one (N, N) @ (N, M) GEMM for the forward and none for dW,
instead of two (N, D) x (D, M) GEMMs: for the cat / non-cat network
(N = 209, D = 12288) the first layer costs about 100 times fewer FLOPs. The
weights are written back (``materialize``) when ``fit`` returns, however it
returns. Adam and L1 are not linear in W, so they use the ordinary path; so
does anything that needs W during fit (validation data, callbacks).

``GramFirstLayer`` stands in for the first Dense in ``Sequential.train_step``
(``first=``): its forward and backward replace the layer's, and the update of
W happens in its backward, in coefficient space; the flat update kernel skips
W's segment meanwhile.

The bookkeeping (K = X X^T, C, E, the scalars) is float64 whatever the model
dtype, so this path rounds no worse than the ordinary one.
"""
import math

import numpy as np

from .layers import Dense
from .optimizers import SGD

# Worth it when the (N, N) GEMM is much cheaper than the two (N, D) ones.
MAX_N_OVER_D = 0.25


def eligible(model, n, full_batch, has_extras):
    first = model.layers[0]
    return (full_batch and not has_extras and isinstance(first, Dense) and first.l1 == 0.0
            and isinstance(model.optimizer, SGD) and n <= MAX_N_OVER_D * first.in_features)


class GramFirstLayer:
    def __init__(self, model, X):
        be, xp = model.be, model.be.xp
        self.be, self.xp, self.flat = be, xp, model.flat
        self.layer = layer = model.layers[0]
        self.X = X
        n, m = X.shape[0], layer.out_features
        opt = model.optimizer
        self.lr, self.mu, self.nesterov = opt.lr, opt.momentum, opt.nesterov
        self.l2 = layer.l2
        W = layer.params[0]
        f64 = np.float64
        self.W0 = xp.array(W, dtype=f64)
        self.w0w0 = float(xp.vdot(self.W0, self.W0))
        self.K = xp.empty((n, n), dtype=X.dtype)
        be.matmul(self.K, X, X.T)
        self.K = self.K.astype(f64)
        self.Z0 = (X @ W).astype(f64)
        # W is updated by the recursion: the flat kernel skips its segment (the first),
        # made empty meanwhile
        self.seg_stop = self.flat.seg[1]
        self.seg_stop_saved = self.seg_stop.copy()
        self.B0 = None
        if self.mu:
            buf = self.flat.state_views(0)[0]
            if bool(xp.any(buf != 0)):
                self.B0 = xp.array(buf, dtype=f64)
                self.XB0 = (X @ buf).astype(f64)
            buf[...] = 0       # the flat kernel must leave W and its buffer alone
        self.a, self.b, self.c, self.d = 1.0, 0.0, 0.0, 1.0
        self.C = xp.zeros((n, m), f64)
        self.E = xp.zeros((n, m), f64)
        self.S = xp.empty((n, m), f64)   # the step, and scratch
        self.Z = xp.empty((n, m), f64)
        self.C_prev, self.E_prev = xp.zeros((n, m), f64), xp.zeros((n, m), f64)
        self._prev = (self.a, self.b, self.c, self.d)
        layer.grads[0][...] = 0
        self.seg_stop[0] = self.flat.seg[0][0]

    def forward(self, x, training):
        """The first layer's forward on the full batch X: a = act(X @ W_t + b)."""
        layer, n = self.layer, self.X.shape[0]
        a = layer.workspace("a", (n, layer.out_features))
        self.matmul_xw(a)
        self.be.bias_act_forward(a, layer.params[1], layer.act_code, layer.alpha)
        layer.x, layer.a = self.X, a
        return a

    def backward(self, da):
        """The bias gradient as the layer's, then W's SGD step in coefficient space."""
        layer = self.layer
        self.be.act_backward_bias_grad(da, layer.grads[1], da, layer.a, layer.act_code, layer.alpha)
        self.update(da)
        return None

    def matmul_xw(self, out):
        """out (N, M) = X @ W_t, before bias and activation."""
        with np.errstate(all="ignore"):   # a diverging run is caught by the model, not warned
            self._forward(out)

    def _forward(self, out):
        xp, Z = self.xp, self.Z
        self.be.matmul(Z, self.K, self.C)
        xp.multiply(self.Z0, self.a, out=self.S)
        Z += self.S
        if self.B0 is not None and self.c != 0.0:
            xp.multiply(self.XB0, self.c, out=self.S)
            Z += self.S
        out[...] = Z

    def update(self, dz):
        with np.errstate(all="ignore"):
            self._update(dz)

    def _update(self, dz):
        """One SGD step of W in coefficient space; dz (N, M) = dL/dZ of the first layer.

        The same arithmetic as torch.optim.SGD on W, term by term:
        g = grad + 2 l2 W; buf = mu buf + g; step = buf or g + mu buf; W -= lr step."""
        xp, C, E, S = self.xp, self.C, self.E, self.S
        self._prev = (self.a, self.b, self.c, self.d)
        self.C_prev[...] = C
        self.E_prev[...] = E
        two_l2 = 2.0 * self.l2
        xp.multiply(C, two_l2, out=S)          # S = C-part of g
        S += dz
        sa, sc = ga, gc = two_l2 * self.a, two_l2 * self.c
        if self.mu:
            self.b, self.d = self.mu * self.b + ga, self.mu * self.d + gc
            E *= self.mu
            E += S
            if self.nesterov:
                sa, sc = ga + self.mu * self.b, gc + self.mu * self.d
                xp.multiply(E, self.mu, out=self.Z)   # Z is free until the next forward
                S += self.Z
            else:
                sa, sc = self.b, self.d
                S[...] = E
        self.a -= self.lr * sa
        self.c -= self.lr * sc
        S *= self.lr
        C -= S
        # like the flat kernel's count of non-finite parameters, so the model undoes the step
        if not math.isfinite(self.a + self.c + float(xp.vdot(C, C))):
            self.flat.bad[...] = 1

    def undo(self):
        """Back to the coefficients before the last update (after a non-finite step); the
        momentum restarts from zero, as the flat optimizer state does (FlatParameters.undo)."""
        self.a, self.b, self.c, self.d = self._prev
        self.C[...] = self.C_prev
        self.b = self.d = 0.0
        self.E[...] = 0

    def l2_penalty(self):
        """l2 * ||W_t||^2 without forming W_t (the flat kernel skips W while this path runs):
        ||a W0 + c B0 + X.T C||^2 expanded, with X W0 = Z0, X B0 = XB0 and X X.T = K."""
        if not self.l2:
            return 0.0
        xp, a, c, C = self.xp, self.a, self.c, self.C
        self.be.matmul(self.S, self.K, C)
        total = a * a * self.w0w0 + 2 * a * float(xp.vdot(self.Z0, C)) + float(xp.vdot(C, self.S))
        if self.B0 is not None:
            total += (c * c * float(xp.vdot(self.B0, self.B0)) + 2 * a * c * float(xp.vdot(self.W0, self.B0))
                      + 2 * c * float(xp.vdot(self.XB0, C)))
        return self.l2 * total

    def materialize(self):
        """Write W_t (and its momentum buffer) back into the model's flat buffers."""
        X = self.X
        W = self.layer.params[0]
        Xt = X.T.astype(np.float64)
        w = self.a * self.W0 + Xt @ self.C
        if self.B0 is not None:
            w += self.c * self.B0
        W[...] = w
        if self.mu:
            buf = self.flat.state_views(0)[0]
            v = self.b * self.W0 + Xt @ self.E
            if self.B0 is not None:
                v += self.d * self.B0
            buf[...] = v
        self.seg_stop[...] = self.seg_stop_saved
