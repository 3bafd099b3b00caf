"""Optimizers: one kernel launch updates the whole flat parameter buffer.

The update rules are those of ``torch.optim.SGD`` (dampening 0) and
``torch.optim.Adam``, with the L1/L2 gradient of each parameter's segment
added to its gradient inside the same kernel.
"""
import numpy as np

from .validation import check_real


class Optimizer:
    """Base class. ``step(be, flat)`` updates every parameter of ``flat`` (params.FlatParameters)
    in place, with one kernel launch; ``state_names`` names its flat state buffers."""
    state_names = ()

    def state_dict(self):
        """What a model file keeps of the optimizer besides its state buffers: the step count."""
        return {"step": self.t}

    def load_state_dict(self, d):
        self.t = int(d.get("step", 0))

    # A step replayed as a CUDA graph runs no Python: the trainer calls prepare_step (eagerly,
    # never while capturing) before such a step and set_step(t + 1) after it.
    def prepare_step(self, be):
        pass

    def set_step(self, t):
        self.t = t


class SGD(Optimizer):
    """p -= lr * g, or with momentum: buf = momentum * buf + g; p -= lr * (buf or g + momentum * buf)."""
    state_names = ("momentum_buffer",)

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False):
        self.lr = check_real("lr", lr, 0.0, lo_open=True, owner="SGD")
        self.momentum = check_real("momentum", momentum, 0.0, owner="SGD")
        if not isinstance(nesterov, bool):
            raise TypeError(f"SGD: expected nesterov to be a bool, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: expected momentum > 0 with nesterov=True, got momentum=0")
        self.nesterov = nesterov
        self.t = 0

    def step(self, be, flat):
        self.t += 1
        be.sgd_update(flat.params, flat.prev, flat.state[0], flat.bad, flat.grads, *flat.seg,
                      self.lr, self.momentum, self.nesterov)

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov})"


class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected first and second moments."""
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr = check_real("lr", lr, 0.0, lo_open=True, owner="Adam")
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, hi_open=True, owner="Adam")
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, hi_open=True, owner="Adam")
        self.eps = check_real("eps", eps, 0.0, owner="Adam")
        self.t = 0
        self._count = None     # the step count as a (1,) int64 array of the backend
        self._count_at = None  # the value it holds, as far as the host knows

    def prepare_step(self, be):
        """The device count equal to self.t, written from the host when it may differ
        (a new backend, load_state_dict, a reset after divergence)."""
        if self._count is None or type(self._count) is not be.xp.ndarray:
            self._count, self._count_at = be.zeros((1,), np.int64), None
        if self._count_at != self.t:
            self._count[...] = self.t
            self._count_at = self.t

    def set_step(self, t):
        self.t = self._count_at = t

    def step(self, be, flat):
        self.prepare_step(be)
        self.t += 1
        be.xp.add(self._count, 1, out=self._count)  # on the device: a graph replays the increment
        self._count_at = self.t
        be.adam_update(flat.params, flat.prev, flat.state[0], flat.state[1], flat.bad, flat.grads, *flat.seg,
                       self.lr, self.beta1, self.beta2, self.eps, self._count)

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def __repr__(self):
        return f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(opt):
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str) and opt.lower() in OPTIMIZERS:
        return OPTIMIZERS[opt.lower()]()
    raise ValueError(f"expected an Optimizer instance or one of {sorted(OPTIMIZERS)}, got {opt!r}")
