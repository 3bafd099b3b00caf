"""Image layers on NCHW batches: Conv2D, MaxPool2D, Flatten, each forward directly above its backward.

Conv2D lowers the convolution to one GEMM (im2col, as Caffe does, over the
whole batch): ``cols`` (C*KH*KW, N*L) holds in column n*L + oh*OW + ow the
window under output pixel (oh, ow) of image n, so ``z = W2 @ cols`` with
W2 = W.reshape(M, C*KH*KW) is every output at once, (M, N*L). One kernel then
lays z out as (N, M, OH, OW) and adds the bias. Backward runs the same steps
in reverse: dz from dy (and the bias gradient), dW2 = dz @ cols.T,
dcols = W2.T @ dz, and col2im sums each window back into dx.

When the model finds an activation and a MaxPool2D (or a MaxPool2D alone) right
after a Conv2D, it fuses them into the Conv2D (``fuse_pool``): one kernel then
reads z once and writes only the pooled output and its argmax, and backward
scatters dy straight into dz (``conv_bias_act_pool_forward`` / ``_backward``).
The full-size (N, M, OH, OW) activation is never stored. The fused path keeps z
transposed, zt (N*L, M) = cols.T @ W2.T, and forms dW.T = cols @ dzt (then
``transpose``): OpenBLAS runs these thin products faster than W2 @ cols and
dz @ cols.T (bench/README.md has the figures). This layout keeps
every kernel's inner loop on contiguous memory (a row of an image, a run of
L outputs) and the GEMMs large; (N*L, C*KH*KW) would need a transposing copy
on the way in and out.

The fused path takes the batch in chunks of images (``_chunks``) sized by the
backend's ``conv_chunk_bytes``: on the CPU a chunk's cols and zt fit a core's L2
cache, and ``conv_act_pool_forward`` / ``_backward`` run each chunk on one thread,
in that thread's own scratch (backend/cpu/conv_act_pool.py); backward forms a chunk's cols
again from x instead of keeping the whole batch's. On the GPU the batch is one
chunk and the same ops run as separate kernels (backend/conv_chunks.py). Each
chunk's dW.T and db are summed in chunk order, so the result does not depend on
the thread count.

Shapes: N batch, C input channels, M output channels (filters), H, W input
height and width, KH, KW kernel, S stride, P zero padding (PT, PB, PL, PR on
the top, bottom, left and right when they differ), OH, OW output height and
width (floor((H + PT + PB - KH) / S) + 1, as PyTorch), L = OH * OW.
"""
import math

import numpy as np

from .backend.codes import IDENTITY, padded_output_size, pads4
from .initializers import check_init, initialize
from .keywords import did_you_mean
from .layers import Layer, ParamSpec, _check_coef, _check_size, activation_spec, register
from .validation import is_int

PADDINGS = ("same", "valid")


def _kernel_size(value, owner):
    """(KH, KW) from an int or a pair of ints, each >= 1."""
    pair = (value, value) if is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_int(v) and v >= 1 for v in pair)):
        raise ValueError(f"{owner}: expected the kernel size K as an int >= 1 or a pair (KH, KW) "
                         f"of them, got K={value!r}")
    return int(pair[0]), int(pair[1])


def check_pool_size(value, owner):
    """K from a pooling window's side: an int >= 1, or a pair (K, K) (Keras's pool_size=(2, 2));
    the windows are square."""
    pair = value if isinstance(value, (tuple, list)) and len(value) == 2 else (value, value)
    if not all(is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{owner}: expected pool_size K to be an int >= 1 (or a pair (K, K)), got K={value!r}")
    if pair[0] != pair[1]:
        raise ValueError(f"{owner}: expected a square window, pool_size (K, K), got {tuple(value)}: "
                         "non-square pooling windows are not supported")
    return int(pair[0])


def check_geometry(owner, h, w, kh, kw, stride, pad):
    """(OH, OW) of a KHxKW window sliding by S over an HxW image padded by P (each side, or
    (PT, PB, PL, PR)), or a ValueError naming H, W, K, P and S. H and W are None before the
    layer is built."""
    shown = pad[0] if isinstance(pad, tuple) and len(set(pad)) == 1 else pad   # P=1, or P=(PT, PB, PL, PR)
    where = f"H={h}, W={w}, K=({kh}, {kw}), P={shown}, S={stride}"
    if not is_int(stride) or stride < 1:
        raise ValueError(f"{owner}: expected the stride S to be an int >= 1, got {where}")
    pads = pad if isinstance(pad, tuple) else (pad,)
    if not all(is_int(p) and p >= 0 for p in pads):
        raise ValueError(f"{owner}: expected the padding P to be an int >= 0, got {where}")
    if h is None:
        return None
    pt, pb, pl, pr = pads4(pad)
    if h + pt + pb < kh or w + pl + pr < kw:
        raise ValueError(f"{owner}: the kernel does not fit the padded image: expected "
                         f"H + PT + PB >= KH and W + PL + PR >= KW, got {where}")
    return padded_output_size(h, kh, stride, pt, pb), padded_output_size(w, kw, stride, pl, pr)


def _padding(value, owner, where=""):
    """A padding argument as given: "same", "valid", an int P >= 0 or a pair (top and bottom,
    left and right) of them; returns "same", an int, or a pair of ints. ``where`` is added
    to the error (the rest of the geometry)."""
    if isinstance(value, str) and value.lower() in PADDINGS:
        return value.lower()
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) and v >= 0 for v in value):
        return int(value[0]) if value[0] == value[1] else (int(value[0]), int(value[1]))
    if is_int(value) and value >= 0:
        return int(value)
    hint = did_you_mean(value, PADDINGS) if isinstance(value, str) else ""
    raise ValueError(f"{owner}: expected padding to be 'same', 'valid', an int P >= 0 or a pair "
                     f"(top and bottom, left and right) of them, got P={value!r}{where}{hint}")


def same_pads(size, k, stride):
    """(before, after): the zeros around ``size`` values that make OH = ceil(size / S), as
    Keras's and PyTorch's padding="same" (PyTorch: stride 1 only); the odd one of an odd
    total, which an even kernel at stride 1 has, goes after (below, right)."""
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _image_shape(owner, input_shape, channels=None):
    if len(input_shape) != 3 or (channels is not None and input_shape[0] != channels):
        want = f"({channels}, H, W)" if channels is not None else "(C, H, W)"
        raise ValueError(f"{owner}: expected input of shape (N, {want[1:]}, got "
                         f"(N, {', '.join(map(str, input_shape))})")
    return input_shape


@register
class Conv2D(Layer):
    """2-D convolution (cross-correlation, as PyTorch and Keras) with zero padding.

    W is (M, C, KH, KW) (the PyTorch layout), b is (M,); W takes l1/l2, b does not.
    ``init`` as for Dense, with fan_in = C*KH*KW and fan_out = M*KH*KW.

    ``padding``: an int P (each side), a pair (top and bottom, left and right), "valid" (0)
    or "same" (OH = ceil(H / S), as Keras; PyTorch's "same" at stride 1): an even kernel
    then pads one more row below and one more column right than above and left, as
    PyTorch and Keras do. ``activation`` as for Dense: it runs in the fused kernels of a
    MaxPool2D that follows, else in place on the output."""
    trainable = True
    example = "Conv2D(3, 16, 3, padding='same')"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, init="glorot",
                 l1=0.0, l2=0.0, activation=None):
        super().__init__()
        self.in_channels = _check_size("in_channels", in_channels, "Conv2D")
        self.out_channels = _check_size("out_channels", out_channels, "Conv2D")
        self.kh, self.kw = _kernel_size(kernel_size, "Conv2D")
        padding = _padding(padding, "Conv2D", f", K=({self.kh}, {self.kw}), S={stride}")
        check_geometry("Conv2D", None, None, self.kh, self.kw, stride, 0)
        self.stride, self.padding = int(stride), (0 if padding == "valid" else padding)
        self.pads = self._pads(None, None)
        self.init = check_init(init)
        self.l1 = _check_coef("l1", l1, "Conv2D")
        self.l2 = _check_coef("l2", l2, "Conv2D")
        self.activation = activation_spec(activation, "Conv2D")
        self.act_code, self.alpha, self.pool = self.activation.code, self.activation.alpha, None
        self._edges = {}

    def _pads(self, h, w):
        # (PT, PB, PL, PR) of the padding for an HxW input ("same" needs H and W unless S = 1)
        p = self.padding
        if p == "same":
            if h is None and self.stride != 1:
                return None
            return same_pads(h or 1, self.kh, self.stride) + same_pads(w or 1, self.kw, self.stride)
        ph, pw = (p, p) if is_int(p) else p
        return ph, ph, pw, pw

    def fuse_pool(self, act_code, alpha, pool):
        """Run the activation (code, alpha) and MaxPool2D ``pool`` that follow in this layer's
        kernels (set by the model; ``pool=None`` undoes it). Forward then returns the pooled
        output (N, M, PH, PW) and backward takes its gradient. With ``pool=None`` the
        activation (this layer's own, or none) runs on the unpooled output."""
        self.act_code, self.alpha, self.pool = act_code, alpha, pool

    def compute_output_shape(self, input_shape):
        _, h, w = _image_shape(repr(self), input_shape, self.in_channels)
        pads = self._pads(h, w)
        oh, ow = check_geometry(repr(self), h, w, self.kh, self.kw, self.stride, pads)
        self.oh, self.ow, self.pads = oh, ow, pads
        return (self.out_channels, oh, ow)

    def param_specs(self):
        return [ParamSpec("W", (self.out_channels, self.in_channels, self.kh, self.kw), self.l1, self.l2),
                ParamSpec("b", (self.out_channels,))]

    def init_params(self, rng, legacy_rng):
        k = self.kh * self.kw
        # "course" draws randn(fan_out, fan_in) laid out as (M, C, KH, KW): its fan_out is M
        fan_out = self.out_channels if self.init == "course" else self.out_channels * k
        w = initialize(self.init, (self.out_channels, self.in_channels, self.kh, self.kw),
                       self.in_channels * k, fan_out, rng, legacy_rng)
        return [w, np.zeros(self.out_channels)]

    def bind(self, params, grads):
        super().bind(params, grads)
        ckk = self.in_channels * self.kh * self.kw
        # (M, C*KH*KW) views of W and dW (the flat buffers are contiguous: no copy)
        self.w2 = params[0].reshape(self.out_channels, ckk)
        self.dw2 = grads[0].reshape(self.out_channels, ckk)

    def _chunks(self, n):
        """(edges, B): the fused path takes images edges[c] .. edges[c + 1] - 1 as chunk c, B
        images at most. A chunk's cols and zt take about the backend's ``conv_chunk_bytes``
        (the whole batch when that is None); their count is a multiple of 4 (at most N) and
        depends on the geometry only, never on the thread count."""
        budget = self.be.conv_chunk_bytes
        key = (n, budget, np.dtype(self.dtype).itemsize)
        found = self._edges.get(key)
        if found is None:
            count = 1
            if budget is not None:
                per_image = (self.w2.shape[1] + self.out_channels) * self.oh * self.ow * key[2]
                count = min(n, -(-n * per_image // budget // 4) * 4)
            edges = np.array([c * n // count for c in range(count + 1)], dtype=np.int64)
            found = self._edges[key] = (edges, int(np.diff(edges).max()))
        return found

    def _scratch(self, n):
        """(cols, zt): per thread, room for the largest chunk's cols (C*KH*KW, B*L) and zt (B*L, M)."""
        _, most = self._chunks(n)
        rows, t = most * self.oh * self.ow, self.be.threads()
        return (self.workspace("cols", (t, self.w2.shape[1] * rows)),
                self.workspace("zt", (t, rows * self.out_channels)))

    def workspace_nbytes(self, n):
        """Bytes of the workspaces a training step on a batch of n holds (memory_report)."""
        item = np.dtype(self.dtype).itemsize
        ckk, m, npix = self.w2.shape[1], self.out_channels, self.oh * self.ow
        dx = n * int(np.prod(self.input_shape)) if self.needs_dx else 0
        if self.pool is None:                               # cols, z, y (+ dx)
            return (ckk * n * npix + 2 * m * n * npix + dx) * item
        edges, most = self._chunks(n)
        count = len(edges) - 1
        scratch = self.be.threads() * most * npix * (ckk + m)      # cols, zt per thread
        pooled = n * int(np.prod(self.pool.output_shape))         # pooled y, int32 argmax
        sums = (ckk * m + count * m) if count > 1 else 0          # dW.T, db summed over the chunks
        return (scratch + pooled + count * ckk * m + sums + dx) * item + pooled * 4

    def forward(self, x, training):
        # x is (N, C, H, W); returns y (N, M, OH, OW), or with a fused pool its output
        # (N, M, PH, PW); keeps cols (C*KH*KW, N*L), or when fused x, the pooled y and argmax
        n = x.shape[0]
        npix = self.oh * self.ow
        be, b, pool = self.be, self.params[1], self.pool
        self.x, self.x_shape = x, x.shape
        if pool is None:
            cols = self.cols = self.workspace("cols", (self.w2.shape[1], n * npix))
            be.im2col(cols, x, self.kh, self.kw, self.stride, self.pads)
            z = self.workspace("z", (self.out_channels, n * npix))
            be.matmul(z, self.w2, cols)
            y = self.workspace("y", (n, self.out_channels, self.oh, self.ow))
            be.conv_bias_forward(y, z, b)
            if self.act_code != IDENTITY:       # this layer's own activation, in place
                be.act_forward(y, y, self.act_code, self.alpha)
                self.y = y
            return y
        # fused, a chunk of images at a time: im2col -> zt = cols.T @ W2.T (z transposed, which
        # BLAS forms faster for these thin products) -> act + pool, while the chunk is in cache
        y = self.workspace("pooled", (n,) + pool.output_shape)
        argmax = self.workspace("argmax", y.shape, np.int32)
        edges, _ = self._chunks(n)
        be.conv_act_pool_forward(y, argmax, *self._scratch(n), x, self.w2, b, edges, self.kh, self.kw,
                                 self.stride, self.pads, self.oh, self.ow, self.act_code, self.alpha, pool.k,
                                 pool.stride)
        self.y, self.argmax = y, argmax
        return y

    def backward(self, dy):
        # dy is (N, M, OH, OW) (the pooled shape when fused); returns dx (N, C, H, W) or None.
        # z's (zt's) workspace becomes dz (dzt), and cols (no longer needed once dW is known)
        # becomes dcols.
        be, pool = self.be, self.pool
        dx = self.workspace("dx", self.x_shape) if self.needs_dx else None
        if pool is None:
            cols = self.cols
            if self.act_code != IDENTITY:       # dy (the next layer's workspace) becomes dy * act'(y)
                be.act_backward(dy, dy, self.y, self.act_code, self.alpha)
            dz = self.workspace("z", (self.out_channels, cols.shape[1]))
            be.conv_bias_backward(dz, self.grads[1], dy)
            be.matmul(self.dw2, dz, cols.T)
            if dx is not None:
                be.matmul(cols, self.w2.T, dz)
                be.col2im(dx, cols, self.kh, self.kw, self.stride, self.pads)
            return dx
        # fused, chunk by chunk: cols again from x (forward's are still there when the batch
        # is one chunk), dzt from dy, dW.T = cols @ dzt (the faster orientation for BLAS),
        # dcols = W2.T @ dz, col2im. Each chunk's dW.T and db go to their own rows, summed in
        # chunk order at the end.
        n, m = dy.shape[0], self.out_channels
        edges, _ = self._chunks(n)
        count = len(edges) - 1
        dwt = self.workspace("dwt", (count, self.w2.shape[1], m))
        db = self.grads[1].reshape(1, m) if count == 1 else self.workspace("db", (count, m))
        be.conv_act_pool_backward(dx, dwt, db, *self._scratch(n), self.x, self.w2, dy, self.y, self.argmax, edges,
                                  self.kh, self.kw, self.stride, self.pads, self.oh, self.ow, self.act_code,
                                  self.alpha, pool.k, pool.stride)
        dw_t = dwt[0]
        if count > 1:
            be.xp.sum(db, axis=0, out=self.grads[1])
            dw_t = be.xp.sum(dwt, axis=0, out=self.workspace("dwt_sum", dw_t.shape))
        be.transpose(self.dw2, dw_t)
        return dx

    def get_config(self):
        cfg = {"in_channels": self.in_channels, "out_channels": self.out_channels,
               "kernel_size": (self.kh, self.kw), "stride": self.stride, "padding": self.padding,
               "init": self.init if isinstance(self.init, str) else "glorot",
               "l1": self.l1, "l2": self.l2}
        if self.activation.code != IDENTITY:     # absent when none: older files read the same
            cfg["activation"] = self.activation.config()
        return cfg

    def __repr__(self):
        k = self.kh if self.kh == self.kw else (self.kh, self.kw)
        extra = "".join(f", {n}={v!r}" for n, v, d in (("stride", self.stride, 1), ("padding", self.padding, 0),
                                                       ("activation", self.activation.config(), "linear"))
                        if v != d)
        return f"Conv2D({self.in_channels}, {self.out_channels}, {k}{extra})"


@register
class MaxPool2D(Layer):
    """The maximum of each KxK window, sliding by S (default K), no padding.

    Backward sends each window's gradient to exactly one input: the first
    maximum in row-major window order (kept as ``argmax`` by forward).
    After a Conv2D (and its activation) the model fuses it into the Conv2D
    (``fused``): forward and backward then pass their input through."""

    example = "MaxPool2D(2)"

    def __init__(self, pool_size, stride=None):
        super().__init__()
        self.k = check_pool_size(pool_size, "MaxPool2D")
        s = self.k if stride is None else stride
        check_geometry("MaxPool2D", None, None, self.k, self.k, s, 0)
        self.stride = int(s)
        self.fused = False

    def compute_output_shape(self, input_shape):
        c, h, w = _image_shape(repr(self), input_shape)
        return (c,) + check_geometry(repr(self), h, w, self.k, self.k, self.stride, 0)

    def forward(self, x, training):
        # x is (N, C, H, W); returns y (N, C, OH, OW); keeps argmax (N, C, OH, OW) int32
        if self.fused:
            return x
        shape = (x.shape[0],) + self.output_shape
        y = self.workspace("y", shape)
        argmax = self.workspace("argmax", shape, np.int32)
        self.be.maxpool_forward(y, argmax, x, self.k, self.stride)
        self.x_shape, self.argmax = x.shape, argmax
        return y

    def workspace_nbytes(self, n):
        # y, int32 argmax (+ dx); nothing when fused into a Conv2D
        out, dx = self._sizes(n)
        return 0 if self.fused else (out + dx) * np.dtype(self.dtype).itemsize + out * 4

    def backward(self, dy):
        # dy is (N, C, OH, OW); returns dx (N, C, H, W) or None
        if self.fused:
            return dy
        if not self.needs_dx:
            return None
        dx = self.workspace("dx", self.x_shape)
        self.be.maxpool_backward(dx, dy, self.argmax, self.k, self.stride)
        return dx

    def get_config(self):
        return {"pool_size": self.k, "stride": self.stride}


@register
class Flatten(Layer):
    """(N, C, H, W) (or any (N, ...)) to (N, C*H*W), row-major: a view, no copy."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.x_shape) if self.needs_dx else None

    def workspace_nbytes(self, n):
        return 0  # views only
