"""NumPy's BLAS thread count: one setting for the whole process, and who holds it at one.

OpenBLAS keeps a single thread count for the process. A training step chooses
it (``set_count``, from thread_count.py), and three kinds of work need it at
one thread for a while: a small GEMM (blas.matmul), GEMMs cut into blocks on
Numba's threads (openblas.single_threaded) and every prediction
(blas.begin_inference). Each of these holds it (``hold`` / ``release``): the
first hold sets one thread, the last release puts back the chosen count, and a
count chosen while it is held takes effect at that last release. With this one
owner no caller can put back a count that another, in another thread, still
needs at one.

The setter is OpenBLAS's own C function, found once through threadpoolctl
(whose own set_num_threads looks the symbol up on every call); where no BLAS
can be controlled, holding does nothing.
"""
import threading

_found = []              # [set_num_threads or None, the count found at start]
_state = {"count": None, "holds": 0, "before": None}
_lock = threading.Lock()


def _controller():
    """(set_num_threads of NumPy's BLAS or None, its thread count at start, 1 if unknown)."""
    if not _found:
        try:
            from threadpoolctl import ThreadpoolController
            found = ThreadpoolController().select(user_api="blas").lib_controllers
            ctl = found[0] if found else None
            setter = ctl.set_num_threads if ctl is not None else None
            getter = ctl.get_num_threads if ctl is not None else None
            if ctl is not None and ctl.internal_api == "openblas":
                symbol = getattr(ctl, "_get_symbol", lambda name: None)
                setter = symbol("openblas_set_num_threads") or setter
                getter = symbol("openblas_get_num_threads") or getter
            _found.extend([setter, ctl.get_num_threads() if ctl is not None else 1, getter])
        except Exception:  # threadpoolctl missing or BLAS not introspectable
            _found.extend([None, 1, None])
    return _found[0], _found[1]


def use(set_threads, get_threads):
    """Control BLAS through these functions (openblas.py's, typed, of NumPy's own OpenBLAS)."""
    _controller()
    _found[0], _found[2] = set_threads, get_threads


def setter():
    """NumPy's BLAS set_num_threads, or None where it can't be controlled."""
    return _controller()[0]


def count():
    """The chosen thread count (what set_count last set; at first what BLAS started with)."""
    with _lock:
        if _state["count"] is None:
            _state["count"] = _controller()[1]
        return _state["count"]


def set_count(n):
    """NumPy's BLAS on n threads from now on, or from the last release if it is held now."""
    set_threads, _ = _controller()
    with _lock:
        _state["count"] = n
        if _state["holds"]:
            _state["before"] = n
        elif set_threads is not None:
            set_threads(n)


def hold():
    """NumPy's BLAS on one thread until the matching ``release``."""
    set_threads, start = _controller()
    with _lock:
        if _state["count"] is None:
            _state["count"] = start
        if _state["holds"] == 0 and set_threads is not None:
            _state["before"] = current()      # what the last release puts back
            set_threads(1)
        _state["holds"] += 1


def release():
    """The end of a ``hold``: the last one puts back the count BLAS had before the first
    (or the one chosen meanwhile, set_count)."""
    set_threads, _ = _controller()
    with _lock:
        _state["holds"] -= 1
        if _state["holds"] == 0 and set_threads is not None:
            set_threads(_state["before"])


def current():
    """BLAS's own thread count now, read from the library (the chosen one where it can't be)."""
    get = _found[2] if len(_found) > 2 else None
    return get() if get is not None else _state["count"]


def held():
    """Whether some caller holds BLAS at one thread now."""
    return _state["holds"] > 0
