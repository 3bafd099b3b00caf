"""Scratch buffers: one set per thread, bounded by the largest request.

A layer's forward and backward write into workspaces instead of allocating
(``Layer.workspace(name, shape)``), and so do the model (d loss / d logits) and
the CPU backend's k-split GEMMs. Two rules make that safe and bounded:

- **One set per thread.** Threads calling ``predict`` on one model at once each
  get their own buffers (``threading.local``), so no call writes into another's
  intermediate results.
- **One buffer per name, grown geometrically.** All shapes asked for under one
  name share one flat buffer, made for the first request and at least doubled when
  a larger one comes; a request gets a C-contiguous view of its first elements.
  Requests of 1, 2, ..., 300 rows therefore hold at most twice the memory of 300
  rows, not the sum of all of them, and a training step of one batch size holds
  exactly its own. The views are cached by shape, so a repeated shape costs one
  dict lookup.

A buffer that grows leaves the old one to whoever still holds a view of it (a
captured CUDA graph keeps its own); nothing reads a workspace across two calls
of different shapes.
"""
import threading

_MAX_VIEWS = 64   # cached views per thread and owner before the cache starts afresh


class WorkspacePool:
    """The workspaces of one owner (a layer, a model), per thread."""

    def __init__(self):
        self._local = threading.local()

    def _mine(self):
        local = self._local
        try:
            return local.views, local.buffers
        except AttributeError:
            local.views, local.buffers = {}, {}
            return local.views, local.buffers

    def get(self, be, name, shape, dtype):
        """A C-contiguous array of ``shape`` and ``dtype``, this thread's; ``be`` (a backend, or
        anything with ``empty(shape, dtype)``) makes the buffers."""
        local = self._local
        try:
            views = local.views
        except AttributeError:
            views = self._mine()[0]
        key = (name, shape, dtype)
        view = views.get(key)
        if view is not None:
            return view
        return self._grow(be, key)

    def _grow(self, be, key):
        views, buffers = self._mine()
        name, shape, dtype = key
        size = 1
        for s in shape:
            size *= int(s)
        flat = buffers.get((name, dtype))
        if flat is None or flat.size < size:
            capacity = size if flat is None else max(size, 2 * flat.size)
            flat = buffers[(name, dtype)] = be.empty(capacity, dtype)
            for k in [k for k in views if k[0] == name and k[2] == dtype]:
                del views[k]   # views of the old buffer
        if len(views) >= _MAX_VIEWS:
            views.clear()
        view = views[key] = flat[:size].reshape(shape)
        return view

    def arrays(self):
        """This thread's buffers (for keeping them alive, or counting their bytes)."""
        return list(self._mine()[1].values())

    def nbytes(self):
        return sum(int(a.nbytes) for a in self.arrays())
