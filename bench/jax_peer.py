"""The JAX peer: the whole SGD step of the MLP under one `jax.jit`.

Written as a JAX user would: the parameters a list of (W, b) pairs, the loss a
pure function of them, `jax.value_and_grad` for the gradient, the update a
`tree_map` of `p - lr * g`, and the whole step (gather of the batch, forward,
loss, gradient, update) one jitted function whose parameter buffers are
donated, so XLA updates them in place. X and y stay on the device; each epoch
puts one permutation there (drawn on the host with NumPy, like the NumPy
peer), and the step gathers its batch INSIDE the jit (`dynamic_slice` of the
permutation at `start`, then `X[idx]`), so nothing but a scalar crosses to the
device per step. The batch size is static (a short last batch compiles its own
step once, in the warm-up). The loss is summed on the device and read once
per epoch, as the PyTorch peer does.

JAX is optional (`pip install "fastmlp[peers]"`, which pulls jax[cpu]);
`load_jax` imports it lazily and says why when it cannot. float64 needs
`jax_enable_x64`: `JaxMLP(..., dtype="float64")` turns it on only around its
own tracing and calls (`jax.enable_x64`), for the one-step check.

Shape vocabulary: N samples, B batch, D inputs of a layer, M outputs.
"""
import contextlib
import functools

import numpy as np


def load_jax():
    """Return (jax module, None), or (None, 'skipped: <reason>')."""
    try:
        import jax
        jax.devices("cpu")      # a broken jaxlib fails here rather than mid-run
    except Exception as exc:    # ImportError, or a broken install
        return None, f"skipped: jax not importable ({exc}); pip install \"fastmlp[peers]\""
    return jax, None


def _loss(jnp, jax, kind, z, t):
    # z (B, M_last) logits; t (B, 1) of 0/1 for "bce", (B,) integer labels otherwise
    if kind == "bce":
        # softplus(z) - z t, as optax writes it: spelled max(z, 0) + log1p(exp(-|z|)), each
        # piece has a kink at z = 0 and JAX differentiates max there as 0, not 1/2: P1's rows
        # whose ReLUs are all dead have z = b = 0 exactly at the start, and the last bias's
        # gradient came out 0.069 instead of 0.164 (its one-step check failed)
        return jnp.mean(jax.nn.softplus(z) - z * t)
    picked = jnp.take_along_axis(z, t[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - picked)


class JaxMLP:
    """Dense layers with ReLU between them; the last layer gives logits.

    weights: [W0, b0, W1, b1, ...] with W (D, M) and b (M,) (the fastmlp layout).
    loss: "bce" (labels (N, 1) of 0/1) or "softmax_xent" (integer labels (N,))."""

    def __init__(self, jax, weights, loss, lr, dtype="float32"):
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.loss, self.lr = loss, lr
        self.dtype = np.dtype(dtype)
        with self._precision():
            self.params = [(jnp.asarray(W, self.dtype), jnp.asarray(b, self.dtype))
                           for W, b in zip(weights[0::2], weights[1::2])]

        def loss_fn(params, x, t):
            a = x
            for W, b in params[:-1]:
                a = jax.nn.relu(a @ W + b)
            W, b = params[-1]
            return _loss(jnp, jax, loss, a @ W + b, t)

        grad_fn = jax.value_and_grad(loss_fn)

        @functools.partial(jax.jit, static_argnames=("size",), donate_argnums=(0, 1))
        def step(params, total, X, y, perm, start, size):
            idx = jax.lax.dynamic_slice(perm, (start,), (size,))
            value, grads = grad_fn(params, X[idx], y[idx])
            params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
            return params, total + value * size, value

        self._step = step

    def _precision(self):
        # float64 needs jax_enable_x64; it is turned on only around this model's work
        if self.dtype == np.float64:
            return self.jax.enable_x64(True)
        return contextlib.nullcontext()

    def to_device(self, X, y):
        """Host arrays to device arrays once, before timing."""
        jnp = self.jnp
        with self._precision():
            x = self.jax.device_put(jnp.asarray(X, self.dtype))
            t = jnp.asarray(y, self.dtype).reshape(-1, 1) if self.loss == "bce" \
                else jnp.asarray(y, jnp.int32)
            return x, self.jax.device_put(t)

    def get_weights(self):
        return [np.array(p) for pair in self.params for p in pair]

    def step(self, x, t):
        """One SGD step on the whole of (x, t) (device arrays); returns the loss before it."""
        with self._precision():
            perm = self.jnp.arange(x.shape[0], dtype=self.jnp.int32)
            total = self.jnp.zeros((), self.dtype)
            self.params, _, value = self._step(self.params, total, x, t, perm, 0, x.shape[0])
            return float(value)

    def fit(self, x, t, epochs, batch_size=None, rng=None):
        """Train on device arrays (from to_device); same batch schedule as
        NumpyMLP.fit (a fresh NumPy permutation per epoch, a short last
        batch). Returns the mean loss per epoch."""
        jnp = self.jnp
        rng = np.random.default_rng(0) if rng is None else rng
        n = x.shape[0]
        history = []
        with self._precision():
            for _ in range(epochs):
                if batch_size is None or batch_size >= n:
                    history.append(self.step(x, t))
                    continue
                perm = self.jax.device_put(rng.permutation(n).astype(np.int32))
                total = jnp.zeros((), self.dtype)
                for start in range(0, n, batch_size):
                    size = min(batch_size, n - start)
                    self.params, total, _ = self._step(self.params, total, x, t, perm,
                                                       start, size)
                history.append(float(total) / n)
        return history
