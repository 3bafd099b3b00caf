"""The flat buffers of one model: parameters, gradients, undo copy and optimizer state.

Every trainable array of every layer is a view into one flat parameter buffer
(and its gradient into one flat gradient buffer), so that one kernel launch
updates the whole model. The arrays are laid out in layer order, W then b,
each starting on a multiple of ``ALIGN`` elements; segment k (one per array)
covers [start[k], stop[k]) and carries its own L1 / L2 coefficients, which the
update kernels read from ``seg`` = (start (NS,), stop (NS,), l1 (NS,), l2 (NS,)).
The padding between stop[k] and start[k + 1] lies outside every segment: the
kernels never touch it, so it stays 0 (an Adam step there with eps=0 would be 0/0).

``prev`` holds the parameters before the last update and ``bad`` the number of
parameters it made NaN or Inf (written by the update kernels), so that a
diverging step can be undone. A step proved finite before it runs may update in
place and leave ``prev`` as it was (``undo_free``: the CPU's plain SGD steps,
backend/cpu/in_place_sgd.py): such a step is never undone.
"""
import numpy as np

# elements: every parameter array starts on a 64-byte boundary (float32), the buffers
# themselves starting on one (the CPU backend's zeros, backend/cpu/data.py; CuPy's at 256)
ALIGN = 16


class FlatParameters:
    """The buffers and their views, for ``specs`` = the ParamSpecs of the layers in order."""

    def __init__(self, be, dtype, layer_specs, state_names):
        # layer_specs: one list of ParamSpec per layer
        self.be, self.dtype = be, dtype
        self.specs = [s for specs in layer_specs for s in specs]
        sizes = [int(np.prod(s.shape)) for s in self.specs]
        self.offsets, size = [], 0
        for n in sizes:
            self.offsets.append(size)
            size += -(-n // ALIGN) * ALIGN
        self.size = size                                  # NP, padding included
        self.params = be.zeros(size, dtype)
        self.grads = be.zeros(size, dtype)
        self.prev = be.zeros(size, dtype)
        self.bad = be.zeros(1, np.int64)
        self.state = [be.zeros(size, dtype) for _ in state_names]
        self.state_names = tuple(state_names)
        self.seg = (be.to_device(np.array(self.offsets, dtype=np.int64)),
                    be.to_device(np.array([o + n for o, n in zip(self.offsets, sizes)], dtype=np.int64)),
                    be.to_device(np.array([s.l1 for s in self.specs], dtype=np.float64)),
                    be.to_device(np.array([s.l2 for s in self.specs], dtype=np.float64)))
        self.has_reg = any(s.l1 or s.l2 for s in self.specs)
        self.param_views = self._views(self.params)
        self.grad_views = self._views(self.grads)
        self._penalty = be.zeros(1, np.float64)
        # set by the trainer for a fit whose plain SGD steps may skip the copy to prev where a
        # bound proves them finite (backend/cpu/in_place_sgd.py); None otherwise
        self.undo_free = None
        # per layer: (first, stop) indices into param_views
        self.layer_ranges, k = [], 0
        for specs in layer_specs:
            self.layer_ranges.append((k, k + len(specs)))
            k += len(specs)

    def _views(self, buf):
        return [buf[off:off + int(np.prod(s.shape))].reshape(s.shape)
                for off, s in zip(self.offsets, self.specs)]

    def layer_views(self, i):
        """(parameter views, gradient views) of layer i."""
        lo, hi = self.layer_ranges[i]
        return self.param_views[lo:hi], self.grad_views[lo:hi]

    def state_views(self, k):
        """Views of optimizer-state buffer k aligned with the parameter views."""
        return self._views(self.state[k])

    def count(self):
        """Trainable values (padding not counted)."""
        return int(sum(int(np.prod(s.shape)) for s in self.specs))

    def nbytes(self):
        """Bytes of the small arrays beside the flat buffers (segments, counters)."""
        return int(sum(int(a.nbytes) for a in (self.bad, self._penalty, *self.seg)))

    # -- regularisation (Keras L1/L2 on the weights, biases not regularised) -----------
    def penalty(self):
        """sum over the regularised arrays of l1 * |w| + l2 * w^2, as a host float."""
        self.be.reg_penalty(self._penalty, self.params, *self.seg)
        return float(self.be.to_host(self._penalty)[0])

    def add_reg_grad(self):
        """grads += d penalty / d params (the update kernels add it themselves)."""
        self.be.add_reg_grad(self.grads, self.params, *self.seg)

    # -- a diverging step ----------------------------------------------------------------
    def nonfinite_count(self):
        """How many parameters the last update made NaN or Inf (one host read)."""
        return int(self.be.to_host(self.bad)[0])

    def undo(self):
        """Back to the parameters before the last update. The optimizer state may hold
        NaN by now, so it restarts from zero (as a fresh optimizer's would)."""
        self.params[...] = self.prev
        self.bad[...] = 0
        for buf in self.state:
            buf[...] = 0

    def mark_restored(self):
        """After the parameters were written from outside (a file): nothing to undo."""
        self.bad[...] = 0
        self.prev[...] = self.params
