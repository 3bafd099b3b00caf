"""The cores a CPU step may use: the process's affinity mask, at most Numba's pool."""
import os

import numba


def available_cores():
    """Cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def most():
    """The most threads a step may use: what the work is planned for (scratch rows, GEMM blocks),
    whatever count runs it (thread_count.py)."""
    return max(1, min(numba.config.NUMBA_NUM_THREADS, available_cores()))
