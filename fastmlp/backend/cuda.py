"""The CUDA backend: CuPy arrays, cuBLAS GEMMs (cuda_blas.py), the kernels of ``kernels/*.cu``.

Exports the names of ``cpu.py`` with the same signatures. Each family of
kernels is compiled once per process (NVRTC through ``cupy.RawModule``, with
the source, options and name expressions of ``cuda_source``) on first use;
the instantiation is picked by dtype. Every op launches on the current stream
and never synchronises with the host: scalars travel as kernel arguments,
``stats`` and ``bad`` stay on the device. Imported only by
``get_backend("cuda")`` once CuPy and a GPU are known to be there.

Reductions (bias gradient, loss sums) are two fixed-order passes through a
float64 workspace cached per (device, stream), with grid sizes that depend on
the shape only: results are bitwise reproducible, and a step allocates
nothing once the workspace has grown to the largest shape seen.
"""
import numpy as np
import cupy

from . import conv_chunks, cuda_blas
from . import cuda_source as src

name = "cuda"
xp = cupy

_THREADS = 256
_MAX_BLOCKS = 1 << 16            # grid-stride loops cover the rest
_MAX_REDUCE_BLOCKS = 1024        # partial sums per loss (a fixed cap keeps results reproducible)
_FLOAT = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INDEX = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}
_GATHER_BITS = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long long"}

_modules = {}     # family -> cupy.RawModule
_kernels = {}     # name expression -> cupy.RawKernel (compiled per device by CuPy)
_workspaces = {}  # (device id, stream ptr) -> float64 cupy array


def _kernel(family, expression):
    k = _kernels.get(expression)
    if k is None:
        mod = _modules.get(family)
        if mod is None:
            mod = _modules[family] = cupy.RawModule(
                code=src.source(family), options=src.options(family),
                name_expressions=src.name_expressions(family))
        k = _kernels[expression] = mod.get_function(expression)
    return k


def _workspace(count):
    """A float64 scratch array of ``count`` elements for this device and stream."""
    key = (cupy.cuda.runtime.getDevice(), cupy.cuda.get_current_stream().ptr)
    buf = _workspaces.get(key)
    if buf is None or buf.size < count:
        size = 1 << max(10, (count - 1).bit_length())
        buf = _workspaces[key] = cupy.empty(size, dtype=cupy.float64)
    return buf[:count]


def _cdiv(a, b):
    return -(-a // b)


def _blocks(work):
    return min(max(1, _cdiv(work, _THREADS)), _MAX_BLOCKS)


def _ftype(*arrays):
    """The kernel type name for arrays that must share one float dtype and be C-contiguous."""
    dt = arrays[0].dtype
    t = _FLOAT.get(dt)
    if t is None:
        raise TypeError(f"expected float32 or float64 arrays, got {dt}")
    for a in arrays:
        if a.dtype != dt:
            raise TypeError(f"expected all arrays of dtype {dt}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"expected C-contiguous arrays, got strides {a.strides} "
                             f"for shape {a.shape}")
    return t


def _itype(a, what):
    t = _INDEX.get(a.dtype)
    if t is None:
        raise TypeError(f"expected {what} of dtype int32 or int64, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"expected {what} C-contiguous, got strides {a.strides}")
    return t


def _same_shape(what, a, shape):
    if a.shape != shape:
        raise ValueError(f"expected {what} of shape {shape}, got {a.shape}")


def _check_stats(stats):
    if stats.dtype != np.float64 or stats.size != 2:
        raise TypeError(f"expected stats as a float64 device array of 2, "
                        f"got {stats.dtype} {stats.shape}")


def empty(shape, dtype):
    return cupy.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return cupy.zeros(shape, dtype=dtype)


def to_device(host, dtype=None):
    """A C-contiguous array of ``dtype`` on this device (no copy when it already is one)."""
    a = cupy.asarray(host, dtype=dtype)
    return a if a.flags.c_contiguous else cupy.ascontiguousarray(a)


def to_host(a):
    return cupy.asnumpy(a)


def synchronize():
    cupy.cuda.Device().synchronize()


# --- Conv2D's fused path --------------------------------------------------------

# None: Conv2D takes the whole batch as one chunk (the GPU wants large launches)
conv_chunk_bytes = None
# no single chunked kernel here: im2col, matmul and the fused pooling kernels (conv_chunks.py)
fused_conv_chunks = False


def threads():
    # T: one scratch buffer for the kernels (the host thread launches them all)
    return 1


class _OwnOps:
    # this module's ops, looked up when called (so a test can replace one): conv_chunks runs them
    def __getattr__(self, name):
        return globals()[name]


_OWN_OPS = _OwnOps()


def conv_act_pool_forward(y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha,
                          k, pstride):
    # y, argmax (N, M, PH, PW); cols, zt (1, ...) scratch; x (N, C, H, W); w2 (M, C*KH*KW)
    conv_chunks.forward(_OWN_OPS, y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow,
                        code, alpha, k, pstride)


def conv_act_pool_backward(dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
                           code, alpha, k, pstride):
    # dx (N, C, H, W) or None; dwt (chunks, C*KH*KW, M), db (chunks, M); the rest as forward
    conv_chunks.backward(_OWN_OPS, dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw,
                         stride, pad, oh, ow, code, alpha, k, pstride)


# --- GEMM: out = a @ b (a, b may be transposed views) ---------------------------

def gemm_on_kernel_threads(flag):
    # nothing to choose on the GPU (the CPU backend picks the threads of its GEMMs)
    pass


def matmul(out, a, b):
    # cuBLAS called directly (capturable into a CUDA graph); CuPy for other layouts
    if not cuda_blas.gemm(out, a, b):
        cupy.matmul(a, b, out=out)


# --- dense: bias + activation, activation backward + bias gradient ------------

def bias_act_forward(z, b, code, alpha):
    # z (N, M) in place; b (M,)
    n, m = z.shape
    _same_shape("b", b, (m,))
    t = _ftype(z, b)
    if z.size == 0:
        return
    _kernel("dense", src.expr("bias_act_forward", t))(
        (_blocks(z.size),), (_THREADS,),
        (z, b, np.int64(n), np.int64(m), np.int32(code), np.float64(alpha)))


def act_backward_bias_grad(dz, db, da, a, code, alpha):
    # dz, da, a (N, M); db (M,)
    n, m = dz.shape
    _same_shape("da", da, (n, m))
    _same_shape("a", a, (n, m))
    _same_shape("db", db, (m,))
    t = _ftype(dz, db, da, a)
    if m == 0:
        return
    bx = min(32, 1 << (m - 1).bit_length())   # a warp spans whole rows when M < 32
    by = _THREADS // bx
    tiles = _cdiv(m, bx)
    g = max(1, min(_cdiv(n, 4 * by), 2048 // tiles))  # >= 4 rows a thread, ~2048 blocks
    partial = _workspace(g * m)
    _kernel("dense", src.expr("act_backward_bias_grad", t))(
        (tiles, g), (bx, by),
        (dz, partial, da, a, np.int64(n), np.int64(m), np.int32(code), np.float64(alpha)))
    _kernel("dense", src.expr("bias_grad_reduce", t))(
        (m,), (_THREADS,), (db, partial, np.int64(g), np.int64(m)))


def act_forward(y, x, code, alpha):
    _same_shape("y", y, x.shape)
    t = _ftype(y, x)
    if x.size == 0:
        return
    _kernel("dense", src.expr("act_forward", t))(
        (_blocks(x.size),), (_THREADS,),
        (y, x, np.int64(x.size), np.int32(code), np.float64(alpha)))


def act_backward(dx, dy, y, code, alpha):
    _same_shape("dy", dy, dx.shape)
    _same_shape("y", y, dx.shape)
    t = _ftype(dx, dy, y)
    if dx.size == 0:
        return
    _kernel("dense", src.expr("act_backward", t))(
        (_blocks(dx.size),), (_THREADS,),
        (dx, dy, y, np.int64(dx.size), np.int32(code), np.float64(alpha)))


# --- losses, each fused with its gradient --------------------------------------

_ROWS_PER_BLOCK = _THREADS // 32   # softmax: one warp a row


def _finish_stats(stats, g, loss_div, correct_div, partial):
    _kernel("loss", "loss_stats_finish")(
        (1,), (_THREADS,),
        (stats, partial, np.int64(g), np.float64(loss_div), np.float64(correct_div)))


def softmax_forward(p, logits):
    n, c = logits.shape
    _same_shape("p", p, (n, c))
    t = _ftype(p, logits)
    if logits.size == 0:
        return
    g = min(_cdiv(n, _ROWS_PER_BLOCK), _MAX_BLOCKS)
    _kernel("loss", src.expr("softmax_forward", t))(
        (g,), (_THREADS,), (p, logits, np.int64(n), np.int64(c)))


def softmax_xent(dlogits, stats, logits, labels, scale):
    n, c = logits.shape
    _same_shape("dlogits", dlogits, (n, c))
    _same_shape("labels", labels, (n,))
    _check_stats(stats)
    t = _ftype(dlogits, logits)
    lt = _itype(labels, "labels")
    if logits.size == 0:
        return
    g = min(_cdiv(n, _ROWS_PER_BLOCK), _MAX_REDUCE_BLOCKS)
    partial = _workspace(2 * g)
    _kernel("loss", src.expr("softmax_xent", t, lt))(
        (g,), (_THREADS,),
        (dlogits, partial, logits, labels, np.int64(n), np.int64(c), np.float64(scale)))
    _finish_stats(stats, g, 1.0, 1.0, partial)


def bce_logits(dlogits, stats, logits, targets, scale):
    n, k = logits.shape
    _same_shape("dlogits", dlogits, (n, k))
    _same_shape("targets", targets, (n, k))
    _check_stats(stats)
    t = _ftype(dlogits, logits, targets)
    if logits.size == 0:
        return
    g = min(_cdiv(logits.size, 4 * _THREADS), _MAX_REDUCE_BLOCKS)
    partial = _workspace(2 * g)
    _kernel("loss", src.expr("bce_logits", t))(
        (g,), (_THREADS,),
        (dlogits, partial, logits, targets, np.int64(logits.size), np.int64(k), np.float64(scale)))
    _finish_stats(stats, g, k, k, partial)


def mse(dout, stats, out, targets, scale):
    n, m = out.shape
    _same_shape("dout", dout, (n, m))
    _same_shape("targets", targets, (n, m))
    _check_stats(stats)
    t = _ftype(dout, out, targets)
    if out.size == 0:
        return
    g = min(_cdiv(n, _THREADS), _MAX_REDUCE_BLOCKS)
    partial = _workspace(2 * g)
    _kernel("loss", src.expr("mse", t))(
        (g,), (_THREADS,),
        (dout, partial, out, targets, np.int64(n), np.int64(m), np.float64(scale)))
    _finish_stats(stats, g, m, 1.0, partial)


# --- optimizers over the flat parameter buffer ----------------------------------

def _segments(seg_start, seg_l1, seg_l2):
    s = seg_l1.size
    if seg_start.dtype != np.int64 or seg_start.size != s + 1:
        raise TypeError(f"expected seg_start int64 of shape ({s + 1},), "
                        f"got {seg_start.dtype} {seg_start.shape}")
    for what, a in (("seg_l1", seg_l1), ("seg_l2", seg_l2)):
        if a.dtype != np.float64 or a.size != s:
            raise TypeError(f"expected {what} float64 of shape ({s},), got {a.dtype} {a.shape}")
    return np.int64(s)


def _bad_type(bad):
    return _itype(bad, "bad")


def sgd_update(params, prev, buf, bad, grads, seg_start, seg_l1, seg_l2,
               lr, momentum, nesterov):
    if momentum != 0.0 and buf is None:
        raise ValueError("expected a momentum buffer buf of shape (P,) when momentum != 0, got None")
    t = _ftype(*((params, prev, grads) if buf is None else (params, prev, buf, grads)))
    for what, a in zip(("prev", "buf", "grads"), (prev, buf, grads)):
        if a is not None:
            _same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_l1, seg_l2)
    bt = _bad_type(bad)
    if params.size == 0:
        return
    _kernel("optim", src.expr("sgd_update", t, bt))(
        (_blocks(params.size),), (_THREADS,),
        (params, prev, buf, bad, grads, seg_start, seg_l1, seg_l2, np.int64(params.size), s,
         np.float64(lr), np.float64(momentum), np.int32(bool(nesterov))))


def adam_update(params, prev, m, v, bad, grads, seg_start, seg_l1, seg_l2,
                lr, beta1, beta2, eps, step):
    t = _ftype(params, prev, m, v, grads)
    for what, a in zip(("prev", "m", "v", "grads"), (prev, m, v, grads)):
        _same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_l1, seg_l2)
    bt = _bad_type(bad)
    if step.dtype != np.int64 or step.shape != (1,):
        raise TypeError(f"expected step as an int64 device array of shape (1,), got {step.dtype} {step.shape}")
    if params.size == 0:
        return
    _kernel("optim", src.expr("adam_update", t, bt))(
        (_blocks(params.size),), (_THREADS,),
        (params, prev, m, v, bad, grads, seg_start, seg_l1, seg_l2, np.int64(params.size), s,
         np.float64(lr), np.float64(beta1), np.float64(beta2), np.float64(eps), step))


def add_reg_grad(grads, params, seg_start, seg_l1, seg_l2):
    t = _ftype(grads, params)
    _same_shape("params", params, grads.shape)
    s = _segments(seg_start, seg_l1, seg_l2)
    if params.size == 0:
        return
    _kernel("optim", src.expr("add_reg_grad", t))(
        (_blocks(params.size),), (_THREADS,),
        (grads, params, seg_start, seg_l1, seg_l2, np.int64(params.size), s))


def reg_penalty(out, params, seg_start, seg_l1, seg_l2):
    # out (1,) float64 = l1 * sum|w| + l2 * sum w^2 over the segments (assigned)
    if out.dtype != np.float64 or out.size != 1:
        raise TypeError(f"expected out as a float64 device array of 1, got {out.dtype} {out.shape}")
    t = _ftype(params)
    s = _segments(seg_start, seg_l1, seg_l2)
    g = min(_cdiv(max(params.size, 1), 4 * _THREADS), _MAX_REDUCE_BLOCKS)
    partial = _workspace(g)
    _kernel("optim", src.expr("reg_penalty", t))(
        (g,), (_THREADS,),
        (partial, params, seg_start, seg_l1, seg_l2, np.int64(params.size), s))
    _kernel("optim", "reg_penalty_finish")((1,), (_THREADS,), (out, partial, np.int64(g)))


# --- data ----------------------------------------------------------------------

def gather_rows(out, x, idx):
    # out (B, ...) = x[idx]; rows are flattened for the kernel
    b = out.shape[0]
    _same_shape("idx", idx, (b,))
    if x.dtype != out.dtype:
        raise TypeError(f"expected x of dtype {out.dtype} (as out), got {x.dtype}")
    if out.shape[1:] != x.shape[1:]:
        raise ValueError(f"expected x rows of shape {out.shape[1:]} (as out), got {x.shape[1:]}")
    if not (out.flags.c_contiguous and x.flags.c_contiguous):
        raise ValueError("expected out and x C-contiguous")
    it = _itype(idx, "idx")
    if out.size == 0:
        return
    et = _FLOAT.get(out.dtype) or _GATHER_BITS.get(out.dtype.itemsize)
    if et is None:
        raise TypeError(f"expected rows of 1, 2, 4 or 8-byte elements, got {out.dtype}")
    _kernel("data", src.expr("gather_rows", et, it))(
        (_blocks(out.size),), (_THREADS,),
        (out, x, idx, np.int64(b), np.int64(out.size // b)))


# --- data augmentation ------------------------------------------------------------

def copy_from_host(out, host):
    # out (any shape) = host, a NumPy array of the same shape and dtype. Asynchronous on the
    # current stream: from pageable memory CUDA stages the bytes before returning, so the
    # host array may be rewritten at once, and the device is not synchronised.
    if out.shape != host.shape or out.dtype != host.dtype:
        raise ValueError(f"expected a host array of shape {out.shape} dtype {out.dtype}, "
                         f"got {host.shape} {host.dtype}")
    out.set(host, stream=cupy.cuda.get_current_stream())


def augment_images(out, x, params, c, h, w, channels_last, nearest):
    # out, x (N, C*H*W) flat images; params (N, 6) float64 per-sample affine maps
    n = x.shape[0]
    _same_shape("out", out, x.shape)
    _same_shape("params", params, (n, 6))
    t = _ftype(out, x)
    if params.dtype != np.float64 or not params.flags.c_contiguous:
        raise TypeError(f"expected params as a C-contiguous float64 array, got {params.dtype}")
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise ValueError(f"expected x of shape (N, {c}*{h}*{w}), got {x.shape}")
    if x.size == 0:
        return
    _kernel("augment", src.expr("augment_images", t))(
        (_blocks(n * h * w),), (_THREADS,),
        (out, x, params, np.int64(n), np.int32(c), np.int32(h), np.int32(w),
         np.int32(bool(channels_last)), np.int32(bool(nearest))))


# --- images (NCHW): im2col convolution, max pooling, batch norm, dropout (kernels/conv.cu)

_CHANNEL_PARTIALS = 1024   # cap on the partial sums of a per-channel reduction, over all channels


def _channel_grid(count, c):
    """G blocks per channel for a reduction of C channels of ``count`` values each:
    at least 4 values a thread, about _CHANNEL_PARTIALS blocks in all; a function
    of the shape only, so results are reproducible."""
    if c > 65535:
        raise ValueError(f"expected at most 65535 channels for a per-channel reduction, got {c}")
    return max(1, min(_cdiv(count, 4 * _THREADS), max(1, _CHANNEL_PARTIALS // c)))


def _check_f64(what, a, size):
    if a.dtype != np.float64 or a.shape != (size,) or not a.flags.c_contiguous:
        raise TypeError(f"expected {what} as a C-contiguous float64 array of shape ({size},), "
                        f"got {a.dtype} {a.shape}")


def _conv_dims(x_shape, kh, kw, stride, pad):
    n, c, h, w = x_shape
    return n, c, h, w, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1


def im2col(cols, x, kh, kw, stride, pad):
    # x (N, C, H, W); cols (C*KH*KW, N*OH*OW)
    n, c, h, w, oh, ow = _conv_dims(x.shape, kh, kw, stride, pad)
    _same_shape("cols", cols, (c * kh * kw, n * oh * ow))
    t = _ftype(cols, x)
    if cols.size == 0:
        return
    _kernel("conv", src.expr("im2col", t))(
        (_blocks(cols.size),), (_THREADS,),
        (cols, x, np.int64(n), np.int32(c), np.int32(h), np.int32(w), np.int32(kh), np.int32(kw),
         np.int32(stride), np.int32(pad), np.int32(oh), np.int32(ow)))


def col2im(dx, cols, kh, kw, stride, pad):
    # cols (C*KH*KW, N*OH*OW); dx (N, C, H, W), overwritten (a gather: no atomics)
    n, c, h, w, oh, ow = _conv_dims(dx.shape, kh, kw, stride, pad)
    _same_shape("cols", cols, (c * kh * kw, n * oh * ow))
    t = _ftype(dx, cols)
    if dx.size == 0:
        return
    _kernel("conv", src.expr("col2im", t))(
        (_blocks(dx.size),), (_THREADS,),
        (dx, cols, np.int64(n), np.int32(c), np.int32(h), np.int32(w), np.int32(kh), np.int32(kw),
         np.int32(stride), np.int32(pad), np.int32(oh), np.int32(ow)))


def conv_bias_forward(y, z, b):
    # z (M, N*L); y (N, M, OH, OW); b (M,)
    n, m = y.shape[:2]
    npix = y.size // max(1, n * m)
    _same_shape("z", z, (m, n * npix))
    _same_shape("b", b, (m,))
    t = _ftype(y, z, b)
    if y.size == 0:
        return
    _kernel("conv", src.expr("conv_bias_forward", t))(
        (_blocks(y.size),), (_THREADS,), (y, z, b, np.int64(n), np.int64(m), np.int64(npix)))


def conv_bias_backward(dz, db, dy):
    # dy (N, M, OH, OW); dz (M, N*L); db (M,) through float64 partial sums
    n, m = dy.shape[:2]
    npix = dy.size // max(1, n * m)
    _same_shape("dz", dz, (m, n * npix))
    _same_shape("db", db, (m,))
    t = _ftype(dz, db, dy)
    if dy.size == 0:
        return
    g = _channel_grid(n * npix, m)
    partial = _workspace(g * m)
    _kernel("conv", src.expr("conv_bias_backward", t))(
        (g, m), (_THREADS,), (dz, partial, dy, np.int64(n), np.int64(m), np.int64(npix)))
    _kernel("conv", src.expr("column_sums", t))(
        (_cdiv(m, _THREADS),), (_THREADS,), (db, partial, np.int64(g), np.int64(m)))


def _check_argmax(argmax, shape):
    _same_shape("argmax", argmax, shape)
    if argmax.dtype != np.int32 or not argmax.flags.c_contiguous:
        raise TypeError(f"expected argmax as a C-contiguous int32 array, got {argmax.dtype}")


def maxpool_forward(y, argmax, x, k, stride):
    # x (N, C, H, W); y, argmax (N, C, OH, OW), argmax int32
    n, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    _same_shape("y", y, (n, c, oh, ow))
    _check_argmax(argmax, y.shape)
    t = _ftype(y, x)
    if y.size == 0:
        return
    _kernel("conv", src.expr("maxpool_forward", t))(
        (_blocks(y.size),), (_THREADS,),
        (y, argmax, x, np.int64(n * c), np.int32(h), np.int32(w), np.int32(k), np.int32(stride),
         np.int32(oh), np.int32(ow)))


def maxpool_backward(dx, dy, argmax, k, stride):
    # dx (N, C, H, W) from dy, argmax (N, C, OH, OW): each pixel gathers its windows' dy
    n, c, h, w = dx.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    _same_shape("dy", dy, (n, c, oh, ow))
    _check_argmax(argmax, dy.shape)
    t = _ftype(dx, dy)
    if dx.size == 0:
        return
    _kernel("conv", src.expr("maxpool_backward", t))(
        (_blocks(dx.size),), (_THREADS,),
        (dx, dy, argmax, np.int64(n * c), np.int32(h), np.int32(w), np.int32(k), np.int32(stride),
         np.int32(oh), np.int32(ow)))


def _pool_dims(y_shape, oh, ow, k, stride):
    # (N, M, PH, PW) of a KxK, stride-S max pooling of an OH x OW conv output, checked
    n, m, ph, pw = y_shape
    if (ph, pw) != ((oh - k) // stride + 1, (ow - k) // stride + 1):
        raise ValueError(f"expected a pooled shape (N, M, {(oh - k) // stride + 1}, "
                         f"{(ow - k) // stride + 1}) for OH={oh}, OW={ow}, K={k}, S={stride}, got {y_shape}")
    return n, m, ph, pw


def conv_bias_act_pool_forward(y, argmax, zt, b, oh, ow, code, alpha, k, stride):
    # zt (N*OH*OW, M), z transposed; b (M,); y, argmax (N, M, PH, PW), argmax int32 = oh*OW + ow
    n, m, ph, pw = _pool_dims(y.shape, oh, ow, k, stride)
    _same_shape("zt", zt, (n * oh * ow, m))
    _same_shape("b", b, (m,))
    _check_argmax(argmax, y.shape)
    t = _ftype(y, zt, b)
    if y.size == 0:
        return
    _kernel("conv", src.expr("conv_bias_act_pool_forward", t))(
        (_blocks(y.size),), (_THREADS,),
        (y, argmax, zt, b, np.int64(n), np.int64(m), np.int32(ph), np.int32(pw), np.int32(oh),
         np.int32(ow), np.int32(code), np.float64(alpha), np.int32(k), np.int32(stride)))


def conv_bias_act_pool_backward(dzt, db, dy, y, argmax, oh, ow, code, alpha, k, stride):
    # dy, y, argmax (N, M, PH, PW); dzt (N*OH*OW, M), a gather; db (M,) = column sums of dzt
    # through float64 partial sums (channel_sums over dzt seen as (N*L, M, 1))
    n, m, ph, pw = _pool_dims(dy.shape, oh, ow, k, stride)
    _same_shape("y", y, dy.shape)
    _same_shape("dzt", dzt, (n * oh * ow, m))
    _same_shape("db", db, (m,))
    _check_argmax(argmax, dy.shape)
    t = _ftype(dzt, db, dy, y)
    if dzt.size == 0:
        return
    _kernel("conv", src.expr("conv_bias_act_pool_backward", t))(
        (_blocks(dzt.size),), (_THREADS,),
        (dzt, dy, y, argmax, np.int64(n), np.int64(m), np.int32(ph), np.int32(pw), np.int32(oh),
         np.int32(ow), np.int32(code), np.float64(alpha), np.int32(k), np.int32(stride)))
    count = n * oh * ow
    g = _channel_grid(count, m)
    scratch = _workspace(g * m + 1)
    partial, center = scratch[:g * m], scratch[g * m:]   # center: unread when not squared
    _kernel("conv", src.expr("channel_sums", t))(
        (g, m), (_THREADS,), (partial, dzt, center, np.int64(count), np.int64(m), np.int64(1), np.int32(0)))
    _kernel("conv", src.expr("column_sums", t))(
        (_cdiv(m, _THREADS),), (_THREADS,), (db, partial, np.int64(g), np.int64(m)))


def transpose(out, a):
    # out (B, A) = a.T for a (A, B)
    na, nb = a.shape
    _same_shape("out", out, (nb, na))
    t = _ftype(out, a)
    if a.size == 0:
        return
    _kernel("conv", src.expr("transpose", t))(
        (_blocks(a.size),), (_THREADS,), (out, a, np.int64(na), np.int64(nb)))


def batchnorm_forward(y, mean, invstd, running_mean, running_var, x, gamma, beta,
                      momentum, eps, training):
    # x, y (N, F) or (N, C, H, W) seen as (N, C, L); mean, invstd, running_* (C,) float64
    n, c = x.shape[:2]
    npix = x.size // max(1, n * c)
    _same_shape("y", y, x.shape)
    for what, a in (("gamma", gamma), ("beta", beta)):
        _same_shape(what, a, (c,))
    for what, a in (("mean", mean), ("invstd", invstd), ("running_mean", running_mean),
                    ("running_var", running_var)):
        _check_f64(what, a, c)
    t = _ftype(y, x, gamma, beta)
    if x.size == 0:
        return
    per_channel = (_cdiv(c, _THREADS),), (_THREADS,)
    if training:
        count = n * npix
        g = _channel_grid(count, c)
        partial = _workspace(g * c)
        sums = _kernel("conv", src.expr("channel_sums", t))
        sums((g, c), (_THREADS,), (partial, x, mean, np.int64(n), np.int64(c), np.int64(npix), np.int32(0)))
        _kernel("conv", "batchnorm_mean")(*per_channel, (mean, partial, np.int64(g), np.int64(c), np.int64(count)))
        sums((g, c), (_THREADS,), (partial, x, mean, np.int64(n), np.int64(c), np.int64(npix), np.int32(1)))
        _kernel("conv", "batchnorm_var")(
            *per_channel, (invstd, running_mean, running_var, mean, partial, np.int64(g), np.int64(c),
                           np.int64(count), np.float64(momentum), np.float64(eps)))
    else:
        _kernel("conv", "batchnorm_eval_stats")(
            *per_channel, (mean, invstd, running_mean, running_var, np.int64(c), np.float64(eps)))
    _kernel("conv", src.expr("batchnorm_apply", t))(
        (_blocks(x.size),), (_THREADS,),
        (y, x, mean, invstd, gamma, beta, np.int64(n), np.int64(c), np.int64(npix)))


def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, training):
    # dx, dy, x (N, C, L) as in forward; dgamma, dbeta, gamma (C,); mean, invstd (C,) float64
    n, c = x.shape[:2]
    npix = x.size // max(1, n * c)
    _same_shape("dx", dx, x.shape)
    _same_shape("dy", dy, x.shape)
    for what, a in (("dgamma", dgamma), ("dbeta", dbeta), ("gamma", gamma)):
        _same_shape(what, a, (c,))
    _check_f64("mean", mean, c)
    _check_f64("invstd", invstd, c)
    t = _ftype(dx, dy, x, dgamma, dbeta, gamma)
    if x.size == 0:
        return
    count = n * npix
    g = _channel_grid(count, c)
    scratch = _workspace(g * 2 * c + 2 * c)
    partial, coef = scratch[:g * 2 * c], scratch[g * 2 * c:]
    _kernel("conv", src.expr("batchnorm_backward_sums", t))(
        (g, c), (_THREADS,), (partial, dy, x, mean, np.int64(n), np.int64(c), np.int64(npix)))
    _kernel("conv", src.expr("batchnorm_backward_finish", t))(
        (_cdiv(c, _THREADS),), (_THREADS,),
        (dgamma, dbeta, coef, partial, invstd, np.int64(g), np.int64(c), np.int64(count),
         np.int32(bool(training))))
    _kernel("conv", src.expr("batchnorm_backward_apply", t))(
        (_blocks(x.size),), (_THREADS,),
        (dx, dy, x, mean, invstd, gamma, coef, np.int64(n), np.int64(c), np.int64(npix)))


def dropout_forward(y, mask, x, rate):
    # any shape; mask: uniform draws in, multiplier 0 or 1/(1 - rate) out
    _same_shape("y", y, x.shape)
    _same_shape("mask", mask, x.shape)
    t = _ftype(y, mask, x)
    if x.size == 0:
        return
    _kernel("conv", src.expr("dropout_forward", t))(
        (_blocks(x.size),), (_THREADS,),
        (y, mask, x, np.int64(x.size), np.float64(rate), np.float64(1.0 / (1.0 - rate))))


def dropout_backward(dx, dy, mask):
    _same_shape("dy", dy, dx.shape)
    _same_shape("mask", mask, dx.shape)
    t = _ftype(dx, dy, mask)
    if dx.size == 0:
        return
    _kernel("conv", src.expr("dropout_backward", t))(
        (_blocks(dx.size),), (_THREADS,), (dx, dy, mask, np.int64(dx.size)))


_device_generators = {}   # id(host generator) -> (host generator, cupy Generator)


def random_uniform(out, rng):
    """Fill out (float32 or float64) with uniform [0, 1) draws, in place, on the device.

    The draws come from a cupy Generator seeded once by the model's generator
    ``rng`` (one 63-bit draw at first use), so the same model seed gives the same
    masks run to run; the values differ from the CPU backend's."""
    entry = _device_generators.get(id(rng))
    if entry is None or entry[0] is not rng:
        seed = int(rng.integers(0, 2**63 - 1))
        entry = _device_generators[id(rng)] = (rng, cupy.random.Generator(cupy.random.XORWOW(seed)))
    entry[1].random(dtype=out.dtype, out=out)
