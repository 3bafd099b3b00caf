"""``fastmlp info``: versions, devices, threads, BLAS and the Numba cache."""
import os
import platform

from . import options


def _version(module):
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as e:  # a broken install (CuPy without a driver) should not stop info
        return f"unusable ({type(e).__name__})"


def run(args):
    """Versions, devices, threads, BLAS and the Numba cache."""
    import numba
    import numpy as np

    import fastmlp as fm
    print(f"fastmlp {fm.__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"numpy {np.__version__}  numba {numba.__version__}")
    print("extras: " + "  ".join(f"{name} {_version(mod)}" for name, mod in
                                 (("cupy", "cupy"), ("matplotlib", "matplotlib"), ("pillow", "PIL"),
                                  ("onnx", "onnx"), ("scikit-learn", "sklearn"), ("mpi4py", "mpi4py"))))
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"BLAS/threads: {pool.get('internal_api')} {pool.get('version')} "
                  f"{pool.get('architecture', '')} threads={pool.get('num_threads')}")
    except ImportError:
        print("BLAS: (install threadpoolctl to show the BLAS library and its threads)")
    print(f"numba threads: {numba.get_num_threads()}  threading layer: {numba.config.THREADING_LAYER}")
    from fastmlp.backend.cpu import openblas as cpu_blas
    print("conv on the CPU: " + ("chunked Numba kernels, GEMMs on Numba's threads (NumPy's OpenBLAS found)"
                                 if cpu_blas.available() else
                                 f"the fast path is off, separate kernels chunk after chunk: {cpu_blas.reason}"))
    from fastmlp.backend.cpu import tile_gemm
    print("MLP predictions: " + ("register tiles for blocks of up to 64 rows (AVX-512), OpenBLAS beyond"
                                 if tile_gemm.available() else
                                 "OpenBLAS (register tiles need AVX-512 and FASTMLP_TILE_GEMM unset or 1)"))
    print("first Dense layer in training: " + (
        "skips the batch's zeros on the register tiles when at most 70 % of each 8-row block's columns "
        "hold a nonzero (backend/cpu/zero_tiles.py), else OpenBLAS" if tile_gemm.available() else
        "OpenBLAS, the whole batch (skipping zeros needs the register tiles: AVX-512)"))
    print("Dense forward in training: " + (
        "register tiles for batches of up to 256 rows into 16 columns or more, OpenBLAS otherwise "
        "(backend/cpu/zero_tiles.py)" if tile_gemm.available() else "OpenBLAS"))
    print(f"numba cache dir: {numba.config.CACHE_DIR or '(beside the package: __pycache__)'}")
    devs = fm.devices()
    print(f"devices: cpu=yes cuda={'yes' if devs['cuda'] else 'no'} ({devs['cuda_reason']})")
    from fastmlp.backend.cpu import thread_count as step_threads
    from fastmlp.backend.cpu.cores import available_cores
    print(f"cpu cores: {os.cpu_count()} ({available_cores()} available to this process)")
    try:
        print(f"training threads: {step_threads.policy()}")
    except ValueError as e:
        print(f"training threads: {e}")
    from fastmlp.backend.cpu import blas_pool
    print(f"BLAS while training: {blas_pool.describe()}")
    return 0


def add(sub):
    i = sub.add_parser("info", help="versions, devices, threads, BLAS and the Numba cache",
                       description=options.plain(run.__doc__))
    i.set_defaults(func=run)
