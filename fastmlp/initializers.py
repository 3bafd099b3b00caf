"""Weight initialisers: named schemes (Keras / PyTorch names) or a callable."""
import numpy as np

NAMES = ("he", "glorot", "lecun", "course", "zeros")


def check_init(init):
    """Validate an ``init`` argument when a layer is made, not when it is built."""
    if callable(init):
        return init
    if not isinstance(init, str) or init not in NAMES:
        raise ValueError(f"expected init to be one of {NAMES} or a callable(shape, rng), got {init!r}")
    return init


def initialize(init, shape, fan_in, fan_out, rng, legacy_rng):
    """Draw a float64 weight array of ``shape``.

    rng is the model's ``np.random.Generator``; legacy_rng a ``RandomState``
    seeded with the model's seed, used only by "course", which reproduces the
    deeplearning.ai code: ``np.random.randn(out, in) / np.sqrt(in)`` per layer
    in order, laid out as (in, out) for Dense and (out, in, kh, kw) for Conv2D.
    """
    if callable(init):
        w = np.asarray(init(shape, rng), dtype=np.float64)
        if w.shape != tuple(shape):
            raise ValueError(f"expected the init callable to return shape {tuple(shape)}, got {w.shape}")
        return w
    if init == "he":
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if init == "lecun":
        return rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
    if init == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)
    if init == "zeros":
        return np.zeros(shape)
    if init == "course":
        a = legacy_rng.randn(fan_out, fan_in) / np.sqrt(fan_in)
        return a.T.copy() if tuple(shape) == (fan_in, fan_out) else a.reshape(shape)
    raise ValueError(f"expected init to be one of {NAMES} or a callable, got {init!r}")
