"""Backend registry: one package per device (``cpu``, ``cuda``), the same op names in each.

Inside each, one module per family of ops, named as ``kernels/<family>.cu``; the
vocabulary they share (activation codes, shape letters) is ``codes.py``, the ground
truth of their tests ``reference.py``.
"""
import importlib

_CUDA_EXTRA = 'pip install "fastmlp[cuda13]" (or "fastmlp[cuda12]" for CUDA 12)'


def cuda_available():
    """(usable, reason): whether device="cuda" can run here, and why not."""
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        return False, f"CuPy is not installed ({e}); {_CUDA_EXTRA}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError has no stable import path
        return False, f"CuPy is installed but no usable CUDA GPU: {e}"
    if n < 1:
        return False, "CuPy is installed but no CUDA GPU was found"
    return True, f"{n} CUDA device(s)"


def devices():
    """What this machine can run: {"cpu": reason, "cuda": reason}, usable first."""
    ok, why = cuda_available()
    return {"cpu": True, "cuda": ok, "cuda_reason": why}


def get_backend(device):
    """The backend package for "cpu", "cuda" or "auto": its ops and attributes (``name``,
    ``xp``, ``host_arrays``, ...) are what a model uses."""
    if not isinstance(device, str):
        raise TypeError(f"expected device as a str ('cpu', 'cuda' or 'auto'), got {type(device).__name__}")
    if device == "cpu":
        return importlib.import_module(".cpu", __name__)
    if device == "auto":
        return get_backend("cuda" if cuda_available()[0] else "cpu")
    if device == "cuda":
        try:
            import cupy  # noqa: F401
        except ImportError as e:
            raise ImportError(f'device="cuda" needs CuPy: {_CUDA_EXTRA}') from e
        ok, why = cuda_available()
        if not ok:
            raise RuntimeError(f'device="cuda" requested but not usable: {why}')
        return importlib.import_module(".cuda", __name__)
    raise ValueError(f"expected device 'cpu', 'cuda' or 'auto', got {device!r}")
