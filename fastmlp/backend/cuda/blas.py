"""GEMMs on the GPU: out = a @ b through cuBLAS, called directly.

CuPy refuses any cuBLAS call while a stream is being captured into a CUDA
graph (``cublas.setStream`` raises NotImplementedError), which would keep
every training step out of a graph (graph.py). cuBLAS itself can
be captured: scalars in host memory are read at capture time (ours are the
constants 1 and 0), and with a workspace set once on the handle it allocates
nothing. So this module calls ``cublasGemmEx`` on CuPy's handle for the
current device through ctypes, on the current stream, eagerly and under
capture alike, which keeps the two bitwise the same.

Row-major C (m, n) = A (m, k) @ B (k, n) is column-major C^T = B^T A^T: one
``gemm(opB, opA, n, m, k, B, A, C)``. A C-contiguous operand is its own
transpose in column-major order (op N, leading dimension its row stride);
a transposed view of one (F-contiguous) takes op T. Anything else (a general
strided view, non-contiguous ``out``) returns False and ``matmul`` uses
``cupy.matmul``. Float32 computes in plain float32 unless CUPY_TF32=1, as
CuPy does; float64 in float64.
"""
import ctypes
import os
import threading

import cupy
import numpy as np

_OP_N, _OP_T = 0, 1
_CUDA_R_32F, _CUDA_R_64F = 0, 1
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70
_GEMM_DEFAULT = -1
_WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper

_lib = None
_local = threading.local()   # .handles: device id -> (CuPy's cuBLAS handle of this thread, its workspace)
_ONE = {np.dtype(np.float32): ctypes.c_float(1.0), np.dtype(np.float64): ctypes.c_double(1.0)}
_ZERO = {np.dtype(np.float32): ctypes.c_float(0.0), np.dtype(np.float64): ctypes.c_double(0.0)}


def _library():
    """The libcublas CuPy loaded (found in this process's memory map), with prototypes."""
    global _lib
    if _lib is None:
        cupy.cuda.device.get_cublas_handle()  # makes CuPy load cuBLAS
        path = None
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(" ", 1)[-1].strip()
                if os.path.basename(name).startswith("libcublas.so"):
                    path = name
                    break
        lib = ctypes.CDLL(path or "libcublas.so")
        vp, i = ctypes.c_void_p, ctypes.c_int
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
        lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
        for f in (lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2, lib.cublasGemmEx):
            f.restype = i
        _lib = lib
    return _lib


def _handle(lib):
    # CuPy keeps a cuBLAS handle per thread; cublasSetStream on a handle shared by two
    # threads would race, so each thread uses its own, with its own workspace
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    dev = cupy.cuda.runtime.getDevice()
    h = handles.get(dev)
    if h is None:
        h = cupy.cuda.device.get_cublas_handle()
        ws = cupy.empty(_WORKSPACE_BYTES, dtype=cupy.uint8)
        _check(lib.cublasSetWorkspace_v2(h, ws.data.ptr, _WORKSPACE_BYTES), "cublasSetWorkspace")
        handles[dev] = (h, ws)   # the workspace lives as long as the thread's handle entry
        return h
    return h[0]


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status}")


def _operand(x):
    """(op, leading dimension) of a row-major 2-D operand in column-major terms, or None."""
    s0, s1 = (s // x.itemsize for s in x.strides)
    rows, cols = x.shape
    if s1 == 1 and s0 >= max(cols, 1):
        return _OP_N, max(s0, 1)
    if s0 == 1 and s1 >= max(rows, 1):
        return _OP_T, max(s1, 1)
    return None


def gemm(out, a, b):
    """out (m, n) = a (m, k) @ b (k, n), all of one float dtype; False when the
    layout is not one cuBLAS takes directly."""
    if not (isinstance(out, cupy.ndarray) and isinstance(a, cupy.ndarray) and isinstance(b, cupy.ndarray)):
        return False
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or not out.flags.c_contiguous:
        return False
    dt = out.dtype
    if dt not in _ONE or a.dtype != dt or b.dtype != dt:
        return False
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return True
    if k == 0:
        out.fill(0)
        return True
    opa, opb = _operand(a), _operand(b)
    if opa is None or opb is None:
        return False
    lib = _library()
    h = _handle(lib)
    _check(lib.cublasSetStream_v2(h, cupy.cuda.get_current_stream().ptr), "cublasSetStream")
    if dt == np.float32:
        rtype = _CUDA_R_32F
        ctype = _COMPUTE_32F_FAST_TF32 if os.environ.get("CUPY_TF32") == "1" else _COMPUTE_32F
    else:
        rtype, ctype = _CUDA_R_64F, _COMPUTE_64F
    one, zero = _ONE[dt], _ZERO[dt]
    _check(lib.cublasGemmEx(h, opb[0], opa[0], n, m, k, ctypes.byref(one),
                            b.data.ptr, rtype, opb[1], a.data.ptr, rtype, opa[1],
                            ctypes.byref(zero), out.data.ptr, rtype, n, ctype, _GEMM_DEFAULT),
           "cublasGemmEx")
    return True


def matmul(out, a, b):
    # out (m, n) = a (m, k) @ b (k, n); a and b may be transposed views. cuBLAS called
    # directly (capturable into a CUDA graph); CuPy for other layouts
    if not gemm(out, a, b):
        cupy.matmul(a, b, out=out)


def matmul_pair(out1, a1, b1, out2, a2, b2):
    # two independent products, one after the other on the stream (the CPU runs them side by side)
    matmul(out1, a1, b1)
    matmul(out2, a2, b2)


def use_numba_thread_gemms(flag):
    # nothing to choose on the GPU: the CPU backend picks the threads of its GEMMs
    pass


def numba_thread_gemms():
    return False


# Predictions from several threads: each has its own workspaces, launch scratch and cuBLAS
# handle, and all launch on the current stream (CuPy's default, shared), which keeps them
# correct; they queue on that stream rather than overlap.
def begin_inference(hold_blas=True):
    pass


def inference_parallel():
    # no host threads to spread a prediction over
    return True


def release_team():
    # no team of host threads to free: predictions launch from any thread
    return False


def end_inference(hold_blas=True):
    pass
