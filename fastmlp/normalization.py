"""BatchNorm and Dropout, each forward directly above its backward.

Both behave differently in training and in evaluation (``forward(x, training)``):
BatchNorm normalises with the batch's statistics in training and with its
running statistics in evaluation; Dropout zeroes (and rescales) in training
and is the identity in evaluation.

Shapes: N batch, F features of (N, F) input, C channels of (N, C, H, W) input.
"""
import numpy as np

from .layers import Layer, ParamSpec, _check_size, register
from .validation import all_finite, check_real


@register
class BatchNorm(Layer):
    """Batch normalisation over the features of (N, F) input or the channels of (N, C, H, W).

    y = gamma * (x - mean) / sqrt(var + eps) + beta, per feature (channel).
    Training uses the batch's mean and (biased) variance over N (and H, W), and
    updates the running statistics as Keras does,
    ``running = momentum * running + (1 - momentum) * batch``, with the
    *unbiased* batch variance as PyTorch does (so momentum=0.9 here matches
    PyTorch's momentum=0.1). Evaluation uses the running statistics
    (initially mean 0, variance 1). gamma (ones) and beta (zeros) are trained;
    the running statistics are state (``get_state``/``set_state``, saved with
    the model), not weights, and are kept in float64."""
    trainable = True

    def __init__(self, features, momentum=0.9, eps=1e-5):
        super().__init__()
        self.features = _check_size("features", features, "BatchNorm")
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, owner="BatchNorm")
        self.eps = check_real("eps", eps, 0.0, lo_open=True, owner="BatchNorm")
        self.running_mean = self.running_var = None
        self._pending_state = None

    def compute_output_shape(self, input_shape):
        if len(input_shape) not in (1, 3) or input_shape[0] != self.features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.features}) or "
                             f"(N, {self.features}, H, W), got (N, {', '.join(map(str, input_shape))})")
        return input_shape

    def build(self, input_shape, be, dtype):
        shape = super().build(input_shape, be, dtype)
        self.running_mean = be.zeros(self.features, np.float64)
        self.running_var = be.to_device(np.ones(self.features), np.float64)
        # the running statistics before the last training forward, (2, F): undo_state
        self._before_step = be.empty((2, self.features), np.float64)
        self._before_step[0], self._before_step[1] = self.running_mean, self.running_var
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.set_state(state)
        return shape

    def param_specs(self):
        return [ParamSpec("gamma", (self.features,)), ParamSpec("beta", (self.features,))]

    def init_params(self, rng, legacy_rng):
        return [np.ones(self.features), np.zeros(self.features)]

    def forward(self, x, training):
        # x is (N, F) or (N, C, H, W); returns y of x's shape; keeps x, mean and invstd (C,)
        count = x.size // self.features
        if training and count < 2:
            raise ValueError(f"{self!r}: expected more than one value per feature in training "
                             f"(N*H*W >= 2), got input of shape {tuple(x.shape)}")
        gamma, beta = self.params
        y = self.workspace("y", x.shape)
        mean = self.workspace("mean", (self.features,), np.float64)
        invstd = self.workspace("invstd", (self.features,), np.float64)
        if training:   # a diverging step may write NaN into them: kept for undo_state
            self._before_step[0] = self.running_mean
            self._before_step[1] = self.running_var
        self.be.batchnorm_forward(y, mean, invstd, self.running_mean, self.running_var, x, gamma, beta,
                                  self.momentum, self.eps, bool(training))
        self.x, self.mean, self.invstd, self.training = x, mean, invstd, bool(training)
        return y

    def workspace_nbytes(self, n):
        # y, dx (always written), float64 mean and invstd
        out = n * int(np.prod(self.output_shape))
        return 2 * out * np.dtype(self.dtype).itemsize + 2 * self.features * 8

    def backward(self, dy):
        # dy is x's shape; returns dx or None (the parameter gradients are always written)
        dgamma, dbeta = self.grads
        dx = self.workspace("dx", dy.shape)
        self.be.batchnorm_backward(dx, dgamma, dbeta, dy, self.x, self.mean, self.invstd,
                                   self.params[0], self.training)
        return dx if self.needs_dx else None

    def get_state(self):
        if self.running_mean is None:
            return dict(self._pending_state or {})
        return {"running_mean": np.array(self.be.to_host(self.running_mean)),
                "running_var": np.array(self.be.to_host(self.running_var))}

    def undo_state(self):
        """The running statistics as they were before the last training forward."""
        if self.running_mean is not None:
            self.running_mean[...] = self._before_step[0]
            self.running_var[...] = self._before_step[1]

    def state_is_finite(self):
        if self.running_mean is None:
            return True
        if self.be.host_arrays:   # checked after every CPU step: a Numba scan, no temporary array
            return all_finite(self.running_mean) and all_finite(self.running_var)
        xp = self.be.xp
        return bool(xp.isfinite(self.running_mean).all() and xp.isfinite(self.running_var).all())

    def set_state(self, state):
        """Replace the running statistics; all checked before any is written."""
        if not isinstance(state, dict) or set(state) != {"running_mean", "running_var"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{self!r}: expected state with keys ['running_mean', 'running_var'], got {got}")
        checked = {}
        for k, v in state.items():
            v = np.asarray(v)
            if not np.issubdtype(v.dtype, np.number) or v.shape != (self.features,):
                raise ValueError(f"{self!r}: expected {k} as {self.features} numbers, got "
                                 f"{v.dtype} {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{self!r}: expected finite values in {k}, got NaN or Inf")
            checked[k] = v.astype(np.float64)
        if np.any(checked["running_var"] < 0):
            raise ValueError(f"{self!r}: expected running_var >= 0, got {checked['running_var'].min()}")
        if self.running_mean is None:  # not built yet: applied by build
            self._pending_state = checked
            return
        self.running_mean[...] = self.be.to_device(checked["running_mean"], np.float64)
        self.running_var[...] = self.be.to_device(checked["running_var"], np.float64)
        self._before_step[0], self._before_step[1] = self.running_mean, self.running_var

    def get_config(self):
        return {"features": self.features, "momentum": self.momentum, "eps": self.eps}


@register
class Dropout(Layer):
    """Inverted dropout: in training each value is zeroed with probability ``rate``
    and the rest scaled by 1 / (1 - rate), so evaluation is the identity.

    The masks come from ``self.rng``, the model's generator (the same seed gives
    the same masks), drawn into a buffer reused from step to step."""

    def __init__(self, rate):
        super().__init__()
        self.rate = check_real("rate", rate, 0.0, 1.0, hi_open=True, owner="Dropout")
        self.mask = None

    def forward(self, x, training):
        # x is any (N, ...); returns y of its shape; keeps the mask (x's shape) for backward
        if not training or self.rate == 0.0:
            self.mask = None
            return x
        if self.rng is None:
            raise ValueError("Dropout: expected a generator in layer.rng (a Sequential sets its own); "
                             "got None")
        mask = self.workspace("mask", x.shape)
        self.be.random_uniform(mask, self.rng)
        y = self.workspace("y", x.shape)
        self.be.dropout_forward(y, mask, x, self.rate)
        self.mask = mask
        return y

    def workspace_nbytes(self, n):
        # mask, y (+ dx); nothing at rate 0
        out, dx = self._sizes(n)
        return 0 if self.rate == 0.0 else (2 * out + dx) * np.dtype(self.dtype).itemsize

    def backward(self, dy):
        # dy is x's shape; returns dx or None
        if not self.needs_dx:
            return None
        if self.mask is None:
            return dy
        dx = self.workspace("dx", dy.shape)
        self.be.dropout_backward(dx, dy, self.mask)
        return dx

    def get_config(self):
        return {"rate": self.rate}
