"""The NumPy peer: a from-scratch MLP trainer written the way the write-ups do.

Row-major data (N, features), `a @ W + b`, `np.maximum`, `a.T @ dz`,
sigmoid + BCE or softmax + cross-entropy, plain SGD `W -= lr * dW`, mini-batches
gathered with `X[idx]`. Nothing is preallocated or fused: every step allocates
its temporaries, as such code does. It is still a fair peer: it uses the
simplified output gradient (p - y) / N, and it skips the first layer's input
gradient (no one needs dX), so it does the same GEMMs that fastmlp counts.

With dtype=np.float64 the same code is the reference the benchmark checks
every implementation against (one step from the same weights).

Shape vocabulary: N batch, D inputs of a layer, M outputs, C classes.
"""
import numpy as np

LOSSES = ("bce", "softmax_xent")


class NumpyMLP:
    """Dense layers with ReLU between them; the last layer gives logits.

    weights: [W0, b0, W1, b1, ...] with W (D, M) and b (M,), copied.
    loss: "bce" (one logit, labels (N, 1) of 0/1) or "softmax_xent"
    (C logits, integer labels (N,))."""

    def __init__(self, weights, loss, lr, dtype=np.float32):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.Ws = [np.array(w, dtype=dtype) for w in weights[0::2]]
        self.bs = [np.array(b, dtype=dtype) for b in weights[1::2]]
        self.loss = loss
        self.lr = lr
        self.dtype = dtype

    def get_weights(self):
        return [p for pair in zip(self.Ws, self.bs) for p in pair]

    def forward(self, x):
        # x is (N, D_0); returns the logits (N, M_last) and the activations
        # [x, a_1, ..., a_{L-1}] that backward needs (inputs of each layer)
        acts = [x]
        a = x
        last = len(self.Ws) - 1
        for i, (W, b) in enumerate(zip(self.Ws, self.bs)):
            z = a @ W + b
            if i == last:
                return z, acts
            a = np.maximum(z, 0)
            acts.append(a)

    def loss_and_dlogits(self, z, y):
        # z is (N, M_last) logits; returns the mean loss and dL/dz (N, M_last)
        n = z.shape[0]
        if self.loss == "bce":
            # y is (N, 1) of 0/1; log(1 + exp(-|z|)) keeps the loss finite
            loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
            p = 1 / (1 + np.exp(-z))
            return float(loss), (p - y) / n
        # y is (N,) integer labels
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - shifted[np.arange(n), y])
        dz = e / s
        dz[np.arange(n), y] -= 1
        return float(loss), dz / n

    def loss_and_grads(self, x, y):
        """Mean loss and [dW0, db0, dW1, db1, ...] on the batch (x, y)."""
        z, acts = self.forward(x)
        loss, dz = self.loss_and_dlogits(z, y)
        grads = []
        for i in reversed(range(len(self.Ws))):
            a_prev = acts[i]
            grads.append(dz.sum(axis=0))        # db
            grads.append(a_prev.T @ dz)         # dW
            if i > 0:
                da = dz @ self.Ws[i].T
                dz = da * (a_prev > 0)          # ReLU: a_prev = max(z_prev, 0)
        return loss, grads[::-1]

    def step(self, x, y):
        """One SGD step on the batch (x, y); returns the loss before it."""
        loss, grads = self.loss_and_grads(x, y)
        for W, b, dW, db in zip(self.Ws, self.bs, grads[0::2], grads[1::2]):
            W -= self.lr * dW
            b -= self.lr * db
        return loss

    def fit(self, X, y, epochs, batch_size=None, rng=None):
        """Train like the write-ups: per epoch a fresh permutation, batches
        X[idx] of batch_size (the last one may be short). batch_size None
        trains on the full batch in place. Returns the mean loss per epoch."""
        rng = np.random.default_rng(0) if rng is None else rng
        n = X.shape[0]
        history = []
        for _ in range(epochs):
            if batch_size is None or batch_size >= n:
                history.append(self.step(X, y))
                continue
            perm = rng.permutation(n)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                total += self.step(X[idx], y[idx]) * len(idx)
            history.append(total / n)
        return history
