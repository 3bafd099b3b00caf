"""Data augmentation on the device: random flips, rotations and shifts of each batch.

``fm.Augment`` is passed to ``Sequential.fit(augment=...)``. For every
gathered batch, the model calls ``augment.apply(be, xb, rng)``: per-sample
transforms are drawn from the model's generator (so the same seed gives the
same augmentation) into small preallocated host buffers, copied to the device
(a few bytes per sample, no synchronisation), and one kernel
(``augment_images``: Numba on the CPU, CUDA C on the GPU) warps the batch in
place through a preallocated scratch copy. After the first batch of a given
shape, nothing is allocated.

Shape vocabulary: N batch, C channels, H x W pixels, F = C*H*W features.
"""
import math

import numpy as np
from numba import njit

from .validation import check_real, is_int

_PARAMS = 6   # the affine map of a sample: sx = p0*j + p1*i + p2, sy = p3*j + p4*i + p5
_DRAWS = 5    # uniforms per sample: flip_h, flip_v, angle, dx, dy


@njit(cache=True, nogil=True)
def _affine_maps(params, u, flip_h, flip_v, max_angle, max_dx, max_dy, cx, cy):
    # params (N, 6) float64 <- the inverse maps of the drawn transforms; u (N, 5) uniforms in [0, 1).
    # The image is flipped, then rotated by the angle (counter-clockwise as displayed,
    # like np.rot90) about its centre (cx, cy), then shifted by (dx, dy) pixels (right, down);
    # the kernel needs the inverse: output pixel (i, j) -> source point (sy, sx).
    for s in range(params.shape[0]):
        fx = -1.0 if flip_h and u[s, 0] < 0.5 else 1.0
        fy = -1.0 if flip_v and u[s, 1] < 0.5 else 1.0
        angle = (2.0 * u[s, 2] - 1.0) * max_angle
        dx = (2.0 * u[s, 3] - 1.0) * max_dx
        dy = (2.0 * u[s, 4] - 1.0) * max_dy
        cos = math.cos(angle)
        sin = math.sin(angle)
        # (u, v) = (j - cx - dx, i - cy - dy); rotate back by -angle; flip back
        params[s, 0] = fx * cos
        params[s, 1] = -fx * sin
        params[s, 2] = cx - fx * (cos * (cx + dx) - sin * (cy + dy))
        params[s, 3] = fy * sin
        params[s, 4] = fy * cos
        params[s, 5] = cy - fy * (sin * (cx + dx) + cos * (cy + dy))


class Augment:
    """Random flips, rotations and shifts applied to each training batch.

    flip_h / flip_v: mirror left-right / top-bottom, each with probability 1/2.
    rotate: rotate by an angle drawn uniformly in [-rotate, rotate] degrees
    about the image centre (positive is counter-clockwise, as ``np.rot90``).
    shift: move by up to ``shift`` times the width (horizontally) and height
    (vertically), drawn uniformly per sample; fractions of a pixel included.
    Pixels that come from outside the image are 0 (after your scaling: use
    data whose background is 0, e.g. [0, 1] images, or standardise after).

    image_shape: how to read a batch. Flat (N, F) batches need it: ``(H, W)``
    for images flattened from (N, H, W) or channels-last (N, H, W, C) arrays
    (C = F / (H*W), the layout of ``load_h5`` / ``load_image_folder`` data
    after ``reshape(N, -1)``), or ``(C, H, W)`` for flattened NCHW. Batches of
    shape (N, C, H, W) (a Conv2D model) or (N, H, W) are read as they are.

    interpolation: "bilinear" (default: smooth, each output pixel mixes the
    four source pixels around its preimage) or "nearest" (copies one source
    pixel: exact for flips, whole-pixel shifts and multiples of 90 degrees,
    keeps binary images binary).

    Each sample gets its own transform, drawn from the model's generator at
    every batch: the same seed gives the same augmentation. The flips come
    first, then the rotation, then the shift. Only training batches are
    augmented; evaluate/predict see the data as it is.
    """

    def __init__(self, flip_h=False, flip_v=False, rotate=0.0, shift=0.0, image_shape=None,
                 interpolation="bilinear"):
        for name, v in (("flip_h", flip_h), ("flip_v", flip_v)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"Augment: expected {name} to be a bool, got {v!r}")
        self.flip_h, self.flip_v = bool(flip_h), bool(flip_v)
        self.rotate = check_real("rotate (degrees)", rotate, 0.0, 180.0, owner="Augment")
        self.shift = check_real("shift (a fraction of the image size)", shift, 0.0, 1.0, hi_open=True,
                                owner="Augment")
        if image_shape is not None:
            ok = (isinstance(image_shape, (tuple, list)) and len(image_shape) in (2, 3)
                  and all(is_int(d) and d >= 1 for d in image_shape))
            if not ok:
                raise ValueError(f"Augment: expected image_shape=(H, W) or (C, H, W) of positive ints, "
                                 f"got {image_shape!r}")
            image_shape = tuple(int(d) for d in image_shape)
        self.image_shape = image_shape
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"Augment: expected interpolation 'bilinear' or 'nearest', got {interpolation!r}")
        self.interpolation = interpolation
        self._bufs = {}

    @property
    def is_identity(self):
        """True when nothing is enabled: ``apply`` leaves batches untouched."""
        return not (self.flip_h or self.flip_v or self.rotate or self.shift)

    # ------------------------------------------------------------------ geometry
    def geometry(self, batch_shape):
        """(C, H, W, channels_last) of a batch of this shape, or a ValueError saying why not."""
        shape = tuple(batch_shape)
        per = shape[1:]
        ims = self.image_shape
        if len(per) == 3:                       # (N, C, H, W)
            c, h, w = per
            if ims is not None and ims not in ((c, h, w), (h, w)):
                raise ValueError(f"Augment: image_shape={ims} does not match batches of shape (N, {c}, {h}, {w})")
            return c, h, w, False
        if len(per) == 2 and ims is None:       # (N, H, W)
            return 1, per[0], per[1], False
        f = math.prod(per)
        if ims is None:
            raise ValueError(f"Augment: expected image_shape=(H, W) or (C, H, W) for flat batches "
                             f"of shape (N, {f}), got image_shape=None")
        if len(ims) == 3:
            c, h, w = ims
            if c * h * w != f:
                raise ValueError(f"Augment: image_shape={ims} has {c * h * w} values, "
                                 f"got samples of {f} features")
            return c, h, w, False
        h, w = ims
        if f % (h * w):
            raise ValueError(f"Augment: expected samples of H*W*C features for image_shape={ims} "
                             f"({h * w} per channel), got {f}")
        return f // (h * w), h, w, True

    # ------------------------------------------------------------------ per batch
    def _buffers(self, be, xb):
        key = (be.name, xb.shape, np.dtype(xb.dtype).str)
        bufs = self._bufs.get(key)
        if bufs is None:
            n = xb.shape[0]
            bufs = self._bufs[key] = (np.empty((n, _DRAWS)), np.empty((n, _PARAMS)),
                                      be.empty((n, _PARAMS), np.float64), be.empty(xb.shape, xb.dtype))
        return bufs

    def draw(self, rng, n, h, w):
        """The (N, 6) float64 affine maps ``apply`` would draw from ``rng`` for N images of H x W."""
        u, maps = np.empty((n, _DRAWS)), np.empty((n, _PARAMS))
        self._draw_into(maps, u, rng, h, w)
        return maps

    def _draw_into(self, maps, u, rng, h, w):
        # maps (N, 6), u (N, 5) preallocated float64: no allocation here
        rng.random(out=u)
        _affine_maps(maps, u, self.flip_h, self.flip_v, math.radians(self.rotate),
                     self.shift * w, self.shift * h, (w - 1) / 2.0, (h - 1) / 2.0)

    def apply(self, be, xb, rng):
        """Warp the batch ``xb`` (a device array of backend ``be``) in place; draws from ``rng``."""
        if self.is_identity:
            return xb
        c, h, w, channels_last = self.geometry(xb.shape)
        n = xb.shape[0]
        u, maps, maps_dev, scratch = self._buffers(be, xb)
        self._draw_into(maps, u, rng, h, w)
        be.copy_from_host(maps_dev, maps)
        scratch[...] = xb
        be.augment_images(xb.reshape(n, -1), scratch.reshape(n, -1), maps_dev, c, h, w,
                          int(channels_last), int(self.interpolation == "nearest"))
        return xb

    def __call__(self, X, seed=0, device="cpu"):
        """Augmented copies of a host batch ``X`` (for a look at what training sees)."""
        from .backend import get_backend
        be = get_backend(device)
        X = np.asarray(X)
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float32
        xb = be.to_device(np.array(X, dtype=dtype))
        self.apply(be, xb, np.random.default_rng(seed))
        return np.asarray(be.to_host(xb))

    def get_config(self):
        return {"flip_h": self.flip_h, "flip_v": self.flip_v, "rotate": self.rotate, "shift": self.shift,
                "image_shape": self.image_shape, "interpolation": self.interpolation}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augment({args})"
