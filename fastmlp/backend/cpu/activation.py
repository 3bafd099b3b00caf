"""The activations of the fused epilogues (dense.py, conv.py): the CPU twin of
kernels/activation.cuh, with the codes of codes.py.

``act_value(x)`` is the activation and ``act_grad(a)`` its derivative written from
the output a = act(x) (reference.act_grad_from_output); the subgradient at 0 is 0
for ReLU and alpha for LeakyReLU.
"""
import math

from numba import njit

from .. import codes
from ..codes import LEAKY_RELU, RELU, SIGMOID, TANH
from .jit import cover_dependencies


@njit(inline="always", error_model="numpy")
def act_value(x, code, alpha):
    # x * 0 (not 0) keeps a NaN a NaN, as np.maximum does
    if code == RELU:
        return x if x > 0 else x * 0
    if code == LEAKY_RELU:
        return x if x > 0 else alpha * x
    if code == TANH:
        return math.tanh(x)
    if code == SIGMOID:
        return 0.5 * (1.0 + math.tanh(0.5 * x))   # = 1/(1+exp(-x)), no overflow
    return x


@njit(inline="always", error_model="numpy")
def act_grad(a, code, alpha, one, zero):
    # act'(x) from the output a = act(x), typed like one and zero: 1.0, 0.0 for float64
    # arithmetic, or cast_like(1.0, a), cast_like(0.0, a) (and alpha so cast) to stay in
    # a's dtype, which lets LLVM vectorise a float32 loop
    if code == RELU:
        return one if a > 0 else zero
    if code == LEAKY_RELU:
        return one if a > 0 else alpha
    if code == TANH:
        return one - a * a
    if code == SIGMOID:
        return a * (one - a)
    return one


cover_dependencies(__name__, codes)
