"""Dense layers and activations, each forward directly above its backward.

A layer is built once by its model (shapes checked, backend and dtype
attached), then bound to views into the model's flat parameter and gradient
buffers. ``forward(x, training)`` keeps what ``backward(dy)`` needs and
returns a workspace array owned by the layer; ``backward`` writes the
parameter gradients into the bound views and returns dx (None when the layer
is the first, whose input needs no gradient).

Shapes: N batch, D input features, M output features.
"""
import weakref
from dataclasses import dataclass

import numpy as np

from .backend.codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH
from .initializers import check_init, initialize
from .keywords import checked_init, did_you_mean
from .validation import check_count, check_real
from .backend.workspaces import WorkspacePool


@dataclass
class ParamSpec:
    name: str          # "W", "b", "gamma", ...
    shape: tuple
    l1: float = 0.0
    l2: float = 0.0


def _check_size(name, value, owner):
    return check_count(name, value, 1, owner)


def _check_coef(name, value, owner):
    return check_real(name, value, 0.0, owner=owner)


LAYERS = {}


def register(cls):
    """Make a layer class known to ``from_config`` (model files name layers by class)."""
    LAYERS[cls.__name__] = cls
    return cls


class Layer:
    """Base class. Subclasses list their parameters in ``param_specs``.

    ``self.rng`` is the model's generator (set by the model before build):
    every random draw of a layer (dropout masks, ...) comes from it.

    A subclass's constructor checks its call first (fastmlp/keywords.py): an unknown
    keyword names the closest real one, missing arguments show ``example``."""
    trainable = False
    example = None           # a call that works, shown when arguments are missing

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "__wrapped_checked__", False):
            cls.__init__ = checked_init(init)

    def __init__(self):
        self.be = None           # backend module, set by build
        self.dtype = None
        self.needs_dx = True     # False for the first layer: no input gradient
        self.input_shape = None  # per-sample shapes (no N)
        self.output_shape = None
        self.params = []         # bound parameter views, in ParamSpec order
        self.grads = []
        self._ws = WorkspacePool()
        self._owner = None       # a weak reference to the model whose buffers hold the parameters
        self.rng = None

    # -- set-up -----------------------------------------------------------------
    def build(self, input_shape, be, dtype):
        """Check the per-sample input shape, return the output shape."""
        self.be, self.dtype = be, dtype
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def param_specs(self):
        return []

    def init_params(self, rng, legacy_rng):
        """Initial float64 values for each ParamSpec, in order."""
        return []

    def owner(self):
        """The model this layer belongs to (its parameters are views of that model's
        buffers), or None."""
        return self._owner() if self._owner is not None else None

    def check_owner(self, model, where):
        """ValueError when this layer already belongs to a model other than ``model``."""
        owner = self.owner()
        if owner is not None and owner is not model:
            raise ValueError(f"{where} ({self!r}) already belongs to another model, whose weights it "
                             "holds; expected a new layer instance for each model (build the list "
                             "again, e.g. in a function called once per model)")

    def attach(self, model):
        """Make this layer ``model``'s (after check_owner)."""
        self._owner = weakref.ref(model)

    def bind(self, params, grads):
        self.params, self.grads = params, grads

    def workspace(self, name, shape, dtype=None):
        """A buffer of ``shape`` reused from call to call (no allocation once warm); each
        thread has its own, and all shapes of one name share memory (fastmlp/workspaces.py)."""
        return self._ws.get(self.be, name, shape, dtype or self.dtype)

    def workspaces(self):
        """This thread's workspace buffers allocated so far."""
        return self._ws.arrays()

    def workspace_bytes(self):
        """Bytes of this thread's workspaces allocated so far."""
        return self._ws.nbytes()

    def workspace_nbytes(self, n):
        """Bytes of the workspaces a training step on a batch of n holds (memory_report).
        By default the output and, when the layer computes it, the input gradient."""
        out, dx = self._sizes(n)
        return (out + dx) * np.dtype(self.dtype).itemsize

    def _sizes(self, n):
        # (values of the output, values of the input gradient or 0) for a batch of n
        out = n * int(np.prod(self.output_shape))
        return out, (n * int(np.prod(self.input_shape)) if self.needs_dx else 0)

    # -- non-trainable state (BatchNorm running statistics): saved, not in get_weights
    def get_state(self):
        """{name: host array} of model state that is not trained by gradients."""
        return {}

    def set_state(self, state):
        if state:
            raise ValueError(f"{self!r}: expected no state, got {sorted(state)}")

    def undo_state(self):
        """Put the state back as it was before the last training forward: fit calls it when
        it undoes a diverging step (whose forward may have written NaN into the state). A
        layer whose training forward changes its state keeps what this needs, without
        allocating per step (BatchNorm keeps the previous running statistics)."""

    def state_is_finite(self):
        """False when the state holds NaN or Inf: fit then undoes the step as it does one
        whose loss or update went non-finite (so that the model can still be saved)."""
        return True

    # -- description --------------------------------------------------------------
    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register
class Dense(Layer):
    """y = act(x @ W + b); W is (D, M) (the Keras layout), b is (M,).

    ``activation`` (a name, an activation layer, or None) runs in the bias kernel
    (``act_code``); so does an activation layer right after a Dense without one, which
    the model fuses here (fastmlp/fusion.py): ``Dense(D, M, activation="relu")`` and
    ``Dense(D, M), ReLU()`` run the same kernels."""
    trainable = True
    example = "Dense(784, 256)"

    def __init__(self, in_features, out_features, init="glorot", l1=0.0, l2=0.0, activation=None):
        super().__init__()
        self.in_features = _check_size("in_features", in_features, "Dense")
        self.out_features = _check_size("out_features", out_features, "Dense")
        if isinstance(init, str) and init.lower() in ACTIVATIONS:
            raise ValueError(f"Dense: got init={init!r}, an activation: the third argument is the "
                             f"initializer; pass activation={init!r}")
        self.init = check_init(init)
        self.l1 = _check_coef("l1", l1, "Dense")
        self.l2 = _check_coef("l2", l2, "Dense")
        self.activation = activation_spec(activation, "Dense")
        self.act_code, self.alpha = self.activation.code, self.activation.alpha
        self.zeros, self.skipping = False, False

    def build(self, input_shape, be, dtype):
        # the backend's zero_skip, asked for once the layer trains first (False: not yet)
        self.zeros, self.skipping = False, False
        return super().build(input_shape, be, dtype)

    def compute_output_shape(self, input_shape):
        if input_shape != (self.in_features,):
            raise ValueError(f"{self!r}: expected input of shape (N, {self.in_features}), "
                             f"got (N, {', '.join(map(str, input_shape))})")
        return (self.out_features,)

    def param_specs(self):
        return [ParamSpec("W", (self.in_features, self.out_features), self.l1, self.l2),
                ParamSpec("b", (self.out_features,))]

    def init_params(self, rng, legacy_rng):
        w = initialize(self.init, (self.in_features, self.out_features),
                       self.in_features, self.out_features, rng, legacy_rng)
        return [w, np.zeros(self.out_features)]

    def forward(self, x, training):
        # x is (N, D); keeps x and the output a (N, M) for backward
        W, b = self.params
        a = self.workspace("a", (x.shape[0], self.out_features))
        tiles = training and self._tiles(x)
        # the first layer skips the zeros of a batch that has many (most of an image's pixels are 0)
        self.skipping = tiles and not self.needs_dx and self.zeros.plan(x)
        if self.skipping:
            self.zeros.forward(a, x, W)
        elif tiles and self.zeros.dense_worth(*x.shape, self.out_features):
            self.zeros.dense_forward(a, x, W)   # a small batch: the tiles beat BLAS's packing
        else:
            self.be.matmul(a, x, W)
        self.be.bias_act_forward(a, b, self.act_code, self.alpha)
        self.x, self.a = x, a
        return a

    def _tiles(self, x):
        # whether x may go to the register tiles (the backend's zero_skip, asked once: the
        # CPU's, where AVX-512 runs them): a C-contiguous float array of the weights' dtype
        zeros = self.zeros
        if zeros is False:
            zeros = self.zeros = self.be.zero_skip()
        return (zeros is not None and type(x) is np.ndarray and x.ndim == 2 and x.flags.c_contiguous
                and x.dtype in (np.float32, np.float64) and x.dtype == self.params[0].dtype)

    def backward(self, da):
        # da is (N, M), overwritten with dz; returns dx (N, D) or None
        W, _ = self.params
        dW, db = self.grads
        be = self.be
        be.act_backward_bias_grad(da, db, da, self.a, self.act_code, self.alpha)
        if not self.needs_dx:
            if self.skipping:
                self.zeros.weight_grad(dW, self.x, da)
            else:
                be.matmul(dW, self.x.T, da)
            return None
        dx = self.workspace("dx", self.x.shape)
        be.matmul_pair(dW, self.x.T, da, dx, da, W.T)
        return dx

    def get_config(self):
        cfg = {"in_features": self.in_features, "out_features": self.out_features,
               "init": self.init if isinstance(self.init, str) else "glorot",
               "l1": self.l1, "l2": self.l2}
        if self.activation.code != IDENTITY:     # absent when none: older files read the same
            cfg["activation"] = self.activation.config()
        return cfg


class Activation(Layer):
    """An element-wise activation; fused into a preceding Dense by the model."""
    code = IDENTITY

    def __init__(self):
        super().__init__()
        self.alpha = 0.0
        self.fused = False

    def forward(self, x, training):
        if self.fused:
            return x
        y = self.workspace("y", x.shape)
        self.be.act_forward(y, x, self.code, self.alpha)
        self.y = y
        return y

    def workspace_nbytes(self, n):
        return 0 if self.fused else super().workspace_nbytes(n)

    def backward(self, dy):
        if self.fused:
            return dy
        if not self.needs_dx:
            return None
        dx = self.workspace("dx", dy.shape)
        self.be.act_backward(dx, dy, self.y, self.code, self.alpha)
        return dx


@register
class ReLU(Activation):
    """max(x, 0); subgradient 0 at x = 0."""
    code = RELU


@register
class LeakyReLU(Activation):
    """x for x > 0 else alpha * x; subgradient alpha at x = 0."""
    code = LEAKY_RELU

    def __init__(self, alpha=0.01):
        super().__init__()
        # The backward reads the slope from the sign of the output: needs alpha >= 0.
        self.alpha = check_real("alpha", alpha, 0.0, 1.0, hi_open=True, owner="LeakyReLU")

    def get_config(self):
        return {"alpha": self.alpha}


@register
class Tanh(Activation):
    code = TANH


@register
class Sigmoid(Activation):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2: no overflow."""
    code = SIGMOID


ACTIVATIONS = {"identity": None, "linear": None, "relu": ReLU, "leaky_relu": LeakyReLU,
               "tanh": Tanh, "sigmoid": Sigmoid}


def activation(name):
    """An activation layer from its name ("relu", "leaky_relu", "tanh", "sigmoid")."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS or ACTIVATIONS[name.lower()] is None:
        names = [k for k, v in ACTIVATIONS.items() if v is not None]
        raise ValueError(f"expected an activation name in {names}, got {name!r}")
    return ACTIVATIONS[name.lower()]()


@dataclass(frozen=True)
class ActivationSpec:
    """The ``activation=`` of a Dense or Conv2D: its code and slope, and its name."""
    name: str
    code: int
    alpha: float = 0.0

    def config(self):
        # a name, or {"name", "alpha"} for a LeakyReLU of another slope than the default
        if self.code == LEAKY_RELU and self.alpha != LeakyReLU().alpha:
            return {"name": self.name, "alpha": self.alpha}
        return self.name


NO_ACTIVATION = ActivationSpec("linear", IDENTITY)


def activation_spec(value, owner):
    """An ``activation=`` argument as an ActivationSpec: None or "linear" (none), a name in
    ACTIVATIONS, an activation layer (``LeakyReLU(0.2)``), or the saved form
    {"name": "leaky_relu", "alpha": 0.2}."""
    names = [k for k, v in ACTIVATIONS.items() if v is not None]
    if value is None:
        return NO_ACTIVATION
    if isinstance(value, dict) and set(value) <= {"name", "alpha"} and "name" in value:
        layer = activation(value["name"])
        if "alpha" in value:
            if not isinstance(layer, LeakyReLU):
                raise ValueError(f"{owner}: alpha applies to leaky_relu only, got activation={value!r}")
            layer = LeakyReLU(value["alpha"])
        value = layer
    if isinstance(value, str):
        key = value.lower()
        if key not in ACTIVATIONS:
            raise ValueError(f"{owner}: expected activation to be one of {names} or None, got "
                             f"{value!r}{did_you_mean(value, names + ['linear'])}")
        if ACTIVATIONS[key] is None:
            return NO_ACTIVATION
        value = ACTIVATIONS[key]()
    if isinstance(value, Activation) and type(value) in ACTIVATIONS.values():
        name = next(k for k, v in ACTIVATIONS.items() if v is type(value))
        return ActivationSpec(name, value.code, float(value.alpha))
    raise ValueError(f"{owner}: expected activation to be one of {names}, None, or an activation "
                     f"layer such as LeakyReLU(0.2), got {value!r}")
