"""Optimizers: one kernel launch updates the whole flat parameter buffer.

The update rules are those of ``torch.optim.SGD`` (dampening 0), ``torch.optim.Adam``,
``torch.optim.AdamW`` and ``torch.optim.RMSprop``, with the L1/L2 gradient of each
parameter's segment added to its gradient inside the same kernel.

Every optimizer takes the Keras and PyTorch spellings of its rate (``lr`` or
``learning_rate``, a number or a schedule: fastmlp/schedules.py), torch's
``weight_decay`` (added to the gradient, as torch.optim.SGD / Adam / RMSprop do, on
every parameter, biases included: unlike the layers' l1 / l2, which follow Keras and
leave biases alone) and Keras's gradient clipping, one of ``clipnorm`` (each
parameter array's own norm), ``global_clipnorm`` (the norm of all of them together,
torch.nn.utils.clip_grad_norm_) or ``clipvalue``. The gradient clipped is that of
the loss with its L1/L2 penalty; weight decay is added after the clipping, as
torch.optim adds it to a gradient clipped beforehand. A norm is clipped by the factor
``min(1, max_norm / (norm + 1e-6))`` (torch's clip_grad_norm_).

An optimizer with none of these (a fixed rate, no clipping, no decay) runs the plain
update kernels (``sgd_update``, ``adam_update``); with any of them, the full steps
(``sgd_step``, ``adam_step``, ``rmsprop_step``), which read the rate from a one-element
array written before each step (a device scalar on the GPU: a replayed CUDA graph
takes each step's rate from it) and, when clipping a norm, the factors of a
``grad_clip_factors`` launch before the update.
"""
import math

import numpy as np

from .schedules import schedule_config, schedule_from_config, schedule_rate
from .validation import check_real

NO_CLIP = math.inf   # clipvalue of the full steps when values are not clipped


def _check_bool(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: expected {name} to be a bool, got {value!r}")
    return bool(value)


class Optimizer:
    """Base class. ``step(be, flat)`` updates every parameter of ``flat`` (params.FlatParameters)
    in place, with one kernel launch; ``state_names`` names its flat state buffers."""
    state_names = ()
    default_lr = 0.01

    def __init__(self, lr=None, learning_rate=None, weight_decay=0.0, clipnorm=None, global_clipnorm=None,
                 clipvalue=None):
        owner = type(self).__name__
        if lr is not None and learning_rate is not None:
            raise TypeError(f"{owner}: expected the rate as lr or as learning_rate, got both "
                            f"(lr={lr!r}, learning_rate={learning_rate!r})")
        rate = self.default_lr if lr is None and learning_rate is None else (lr if lr is not None else learning_rate)
        if isinstance(rate, dict):          # a schedule as a model file describes it
            rate = schedule_from_config(rate, owner)
        self.schedule = None
        if callable(rate):
            self.schedule = rate
            self._lr = schedule_rate(rate, 0, owner)   # a schedule that fails fails here, early
        else:
            self._lr = check_real("lr", rate, 0.0, lo_open=True, owner=owner)
        self.weight_decay = check_real("weight_decay", weight_decay, 0.0, owner=owner)
        given = {k: v for k, v in (("clipnorm", clipnorm), ("global_clipnorm", global_clipnorm),
                                   ("clipvalue", clipvalue)) if v is not None}
        if len(given) > 1:
            raise ValueError(f"{owner}: expected at most one of clipnorm, global_clipnorm and clipvalue "
                             f"(as Keras), got {given}")
        for k, v in given.items():
            check_real(k, v, 0.0, lo_open=True, owner=owner)
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.clipvalue = None if clipvalue is None else float(clipvalue)
        self.t = 0
        self._rate = None      # the rate as a (1,) float64 array of the backend (full steps)
        self._rate_at = None   # the value it holds, as far as the host knows
        self._factor = None    # the clipping factor of each segment, (NS,) float64

    # -- the rate ------------------------------------------------------------------
    @property
    def lr(self):
        """The rate of the current (or, between steps, the last) step."""
        return self._lr

    @lr.setter
    def lr(self, value):
        if self.schedule is not None:
            raise TypeError(f"{type(self).__name__}: the rate follows the schedule {self.schedule!r}; "
                            "expected no assignment to lr (pass a number as lr to set it by hand)")
        self._lr = check_real("lr", value, 0.0, lo_open=True, owner=type(self).__name__)

    learning_rate = lr

    @property
    def plain(self):
        """Whether the fixed-rate update kernels do: no schedule, clipping or weight decay."""
        return (self.schedule is None and not self.weight_decay and self.clipnorm is None
                and self.global_clipnorm is None and self.clipvalue is None)

    # -- steps -----------------------------------------------------------------------
    def state_dict(self):
        """What a model file keeps of the optimizer besides its state buffers: the step count."""
        return {"step": self.t}

    def load_state_dict(self, d):
        self.t = int(d.get("step", 0))

    # A step replayed as a CUDA graph runs no Python: the trainer calls prepare_step (eagerly,
    # never while capturing) before such a step and set_step(t + 1) after it.
    def prepare_step(self, be):
        """The device rate equal to this step's (the schedule's at step t), written from the
        host when it differs; a schedule's rate is checked here, before any weight changes."""
        if self.plain:
            return
        if self._rate is None or type(self._rate) is not be.xp.ndarray:
            self._rate, self._rate_at = be.zeros((1,), np.float64), None
        if self.schedule is not None:
            self._lr = schedule_rate(self.schedule, self.t, type(self).__name__)
        if self._rate_at != self._lr:
            self._rate[...] = self._lr
            self._rate_at = self._lr

    def set_step(self, t):
        self.t = t

    def _clip_factors(self, be, flat):
        """The (NS,) clipping factors of this step's gradient (ones when no norm is clipped)."""
        ns = len(flat.specs)
        if self._factor is None or type(self._factor) is not be.xp.ndarray or self._factor.shape != (ns,):
            self._factor = be.to_device(np.ones(ns, dtype=np.float64))
        max_norm = self.clipnorm if self.clipnorm is not None else self.global_clipnorm
        if max_norm is not None:
            be.grad_clip_factors(self._factor, flat.grads, flat.params, *flat.seg, max_norm,
                                 self.clipnorm is not None)
        return self._factor

    def _clipvalue(self):
        return NO_CLIP if self.clipvalue is None else self.clipvalue

    def graph_key(self):
        """What a CUDA graph of a step bakes in: the scalars passed by value (the full steps
        read the rate from the device, so it is not among them)."""
        cfg = self._config()
        if not self.plain:
            cfg.pop("lr")
        return tuple(sorted((k, repr(v)) for k, v in cfg.items()))

    # -- configuration ------------------------------------------------------------------
    def _config(self):
        # get_config with the rate (or schedule) as it is
        cfg = {"lr": self.schedule if self.schedule is not None else self._lr}
        cfg.update(self._hyper())
        for k in ("clipnorm", "global_clipnorm", "clipvalue"):
            if getattr(self, k) is not None:
                cfg[k] = getattr(self, k)
        return cfg

    def _hyper(self):
        return {}

    def get_config(self):
        cfg = self._config()
        if self.schedule is not None:
            cfg["lr"] = schedule_config(self.schedule, type(self).__name__)
        return cfg

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self._config().items()) + ")"


class SGD(Optimizer):
    """torch.optim.SGD: p -= lr * g, or with momentum: buf = momentum * buf + g;
    p -= lr * (buf, or g + momentum * buf with nesterov); weight_decay adds wd * p to g."""
    state_names = ("momentum_buffer",)
    default_lr = 0.01

    def __init__(self, lr=None, momentum=0.0, nesterov=False, *, learning_rate=None, weight_decay=0.0,
                 clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(lr, learning_rate, weight_decay, clipnorm, global_clipnorm, clipvalue)
        self.momentum = check_real("momentum", momentum, 0.0, owner="SGD")
        nesterov = _check_bool("SGD", "nesterov", nesterov)
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: expected momentum > 0 with nesterov=True, got momentum=0")
        self.nesterov = nesterov

    def step(self, be, flat):
        if self.plain:
            self.t += 1
            if self.momentum == 0 and flat.undo_free is not None and flat.undo_free.sgd(self._lr):
                return   # updated in place: a bound proved the step finite (backend/cpu/in_place_sgd.py)
            be.sgd_update(flat.params, flat.prev, flat.state[0], flat.bad, flat.grads, *flat.seg,
                          self._lr, self.momentum, self.nesterov)
            return
        self.prepare_step(be)
        factor = self._clip_factors(be, flat)
        self.t += 1
        be.sgd_step(flat.params, flat.prev, flat.state[0], flat.bad, flat.grads, *flat.seg, factor, self._rate,
                    self._clipvalue(), self.weight_decay, self.momentum, self.nesterov)

    def _hyper(self):
        cfg = {"momentum": self.momentum, "nesterov": self.nesterov}
        if self.weight_decay:
            cfg["weight_decay"] = self.weight_decay
        return cfg


class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected first and second moments; weight_decay adds wd * p
    to the gradient (L2, coupled), as torch.optim.Adam does: for decoupled decay use AdamW."""
    state_names = ("exp_avg", "exp_avg_sq")
    default_lr = 0.001
    decoupled = False

    def __init__(self, lr=None, beta1=0.9, beta2=0.999, eps=1e-8, *, learning_rate=None, weight_decay=0.0,
                 clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(lr, learning_rate, weight_decay, clipnorm, global_clipnorm, clipvalue)
        owner = type(self).__name__
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, hi_open=True, owner=owner)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, hi_open=True, owner=owner)
        self.eps = check_real("eps", eps, 0.0, owner=owner)
        self._count = None     # the step count as a (1,) int64 array of the backend
        self._count_at = None  # the value it holds, as far as the host knows

    def prepare_step(self, be):
        """The device count equal to self.t, written from the host when it may differ
        (a new backend, load_state_dict, a reset after divergence); the rate as the base's."""
        super().prepare_step(be)
        if self._count is None or type(self._count) is not be.xp.ndarray:
            self._count, self._count_at = be.zeros((1,), np.int64), None
        if self._count_at != self.t:
            self._count[...] = self.t
            self._count_at = self.t

    def set_step(self, t):
        self.t = self._count_at = t

    def step(self, be, flat):
        self.prepare_step(be)
        factor = None if self.plain else self._clip_factors(be, flat)
        self.t += 1
        be.xp.add(self._count, 1, out=self._count)  # on the device: a graph replays the increment
        self._count_at = self.t
        if factor is None:
            be.adam_update(flat.params, flat.prev, flat.state[0], flat.state[1], flat.bad, flat.grads, *flat.seg,
                           self._lr, self.beta1, self.beta2, self.eps, self._count)
            return
        be.adam_step(flat.params, flat.prev, flat.state[0], flat.state[1], flat.bad, flat.grads, *flat.seg,
                     factor, self._rate, self._clipvalue(), self.weight_decay, self.decoupled,
                     self.beta1, self.beta2, self.eps, self._count)

    def _hyper(self):
        cfg = {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
        if self.weight_decay or self.decoupled:
            cfg["weight_decay"] = self.weight_decay
        return cfg


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay before
    the Adam step (on every parameter, biases included, as torch)."""
    decoupled = True

    def __init__(self, lr=None, beta1=0.9, beta2=0.999, eps=1e-8, *, learning_rate=None, weight_decay=0.01,
                 clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(lr, beta1, beta2, eps, learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, global_clipnorm=global_clipnorm, clipvalue=clipvalue)

    @property
    def plain(self):
        return False


class RMSprop(Optimizer):
    """torch.optim.RMSprop: square_avg = alpha * square_avg + (1 - alpha) * g^2;
    p -= lr * g / (sqrt(square_avg) + eps), ``centered`` subtracting the squared running mean
    of g under the root, ``momentum`` > 0 keeping a buffer of those steps. The state
    buffers are square_avg, then momentum_buffer and grad_avg where used."""
    default_lr = 0.01

    def __init__(self, lr=None, alpha=0.99, eps=1e-8, momentum=0.0, centered=False, *, learning_rate=None,
                 weight_decay=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(lr, learning_rate, weight_decay, clipnorm, global_clipnorm, clipvalue)
        self.alpha = check_real("alpha", alpha, 0.0, 1.0, owner="RMSprop")
        self.eps = check_real("eps", eps, 0.0, owner="RMSprop")
        self.momentum = check_real("momentum", momentum, 0.0, owner="RMSprop")
        self.centered = _check_bool("RMSprop", "centered", centered)
        self.state_names = (("square_avg",) + (("momentum_buffer",) if self.momentum > 0 else ())
                            + (("grad_avg",) if self.centered else ()))
        # where momentum_buffer and grad_avg are among the state buffers (0: not kept)
        self._buf = self.state_names.index("momentum_buffer") if self.momentum > 0 else 0
        self._avg = self.state_names.index("grad_avg") if self.centered else 0

    @property
    def plain(self):
        return False

    def step(self, be, flat):
        self.prepare_step(be)
        factor = self._clip_factors(be, flat)
        self.t += 1
        st = flat.state   # square_avg stands in for the buffers not used (never written then)
        be.rmsprop_step(flat.params, flat.prev, st[0], st[self._buf], st[self._avg], flat.bad, flat.grads,
                        *flat.seg, factor, self._rate, self._clipvalue(), self.weight_decay, self.alpha,
                        self.eps, self.momentum, self.centered)

    def _hyper(self):
        return {"alpha": self.alpha, "eps": self.eps, "momentum": self.momentum, "centered": self.centered,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get_optimizer(opt):
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str) and opt.lower() in OPTIMIZERS:
        return OPTIMIZERS[opt.lower()]()
    raise ValueError(f"expected an Optimizer instance or one of {sorted(OPTIMIZERS)}, got {opt!r}")
