"""The lean prediction path of an MLP: every layer in one kernel call (Sequential.predict).

A model whose layers are Dense layers, each with its activation (its own or
an activation layer fused into it, fusion.py), and Dropout (nothing at
inference), predicts on the CPU through ``DenseChain``: the input checked
once, no copy of an input that is already C-contiguous in the model's dtype,
then one call of backend/cpu/dense_chain.py per EVAL_BATCH rows, which runs
the GEMMs, the biases, the activations and the output softmax / sigmoid
without coming back to Python. Any other model, device or BLAS takes the
layer-by-layer path (Sequential._predict); both give the same probabilities
to the rounding of the GEMMs. A model whose last layers are such a chain (a
CNN's head after its Flatten) hands them over from that path: the layers
before run one by one, the chain in one kernel call (``plan_tail``, ``finish``).

Threads: a prediction running alone spreads its column parts or row blocks
over the cores (from one Python thread at a time: blas.inference_parallel);
beside other predictions each runs them on its own thread. The arithmetic is
the same either way, so are the bits (dense_chain.py). The layer outputs live
in a scratch buffer per calling thread, sized for the batch.
"""
import threading
import time

import numpy as np

from .backend import get_backend
from .backend.cpu.team_wake import PARALLEL, SERIAL, WAKE, pinned_away, prediction_team
from .backend.cpu.thread_count import is_stall
from .layers import Activation, Dense
from .losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from .normalization import Dropout

# A parallel kernel call stalled by thread_count.is_stall's rule. What it should take: the
# fastest call of its row count so far, and at most its multiply-adds at STALL_MACS_S a second
# (a lower bound for the rate of one core: the first calls of a row count may have stalled
# themselves)
STALL_MACS_S = 5e9


def release_prediction_threads():
    """The calling thread hands the cores over to the next thread that predicts alone.

    Parallel predictions on the CPU run from one Python thread at a time: the first to
    predict alone, while it lives (a second thread starting Numba's parallel regions would
    get an OpenMP team of its own, and two teams on the same cores wake their threads
    through the OS on every region). A server that warms its model up in the main thread
    and then serves from request threads calls this in the main thread after the warm-up:
    its team of worker threads is freed, and the first request thread takes the cores.
    Returns True if the calling thread had them (False: nothing to hand over, as on a GPU)."""
    return get_backend("cpu").release_team()


# what each loss's predict returns, as the chain's last step (dense_chain.OUT_*)
_FINAL = {SoftmaxCrossEntropy: 1, BinaryCrossEntropy: 2, MeanSquaredError: 0}


def _final_step(loss):
    # the chain's last step for this loss, or None when its probabilities are its own (or
    # there is no loss: predict then gives the raw outputs, the identity)
    if loss is None:
        return 0
    for cls, final in _FINAL.items():
        if type(loss).probabilities is cls.probabilities and isinstance(loss, cls):
            return final
    return None


class DenseChain:
    """How a model of Dense layers predicts in one kernel call; ``plan(model)`` makes one."""

    def __init__(self, model, dense, final):
        be = model.be
        self.kernels = be.dense_chain_kernels()
        self.empty = be.empty        # its scratch on a cache line (backend/cpu/data.py)
        self.flat, self.loss = model.flat, model.loss
        self.dense = dense
        self.final = final
        self.in_features = dense[0].in_features
        self.out_features = dense[-1].out_features
        self.widest = max([d.out_features for d in dense[:-1]] + [1])
        self.dtype = np.dtype(model.dtype)
        # where the layers' W and b lie in the flat parameter buffer (the model's as long as
        # its flat buffers are: ``current``), and their activations
        self.params = model.flat.params
        self.layout = self.kernels.layer_layout(self.params, dense)
        self.alphas = np.array([d.alpha for d in dense], dtype=np.float64)
        # row blocks planned for the most threads a step may use (backend.threads()), whatever
        # runs them: the same blocks, so the same bits, alone or beside other predictions
        self.threads = be.threads()
        self._edges = {}
        self._fastest = {}               # rows -> the fastest parallel kernel call so far, s
        self._macs = sum(d.in_features * d.out_features for d in dense)   # a row's multiply-adds
        self._stalled = be.prediction_stalled
        self._threads_free = be.prediction_threads
        self._local = threading.local()

    @classmethod
    def plan(cls, model):
        """The DenseChain of ``model``, or None when its layers, loss, device or BLAS can't take it."""
        return cls._of(model, model.layers)

    @classmethod
    def plan_tail(cls, model):
        """(start, the DenseChain of model.layers[start:]) for a model whose last layers, from
        ``start`` > 0 on, are a chain of Dense layers (a CNN's head, after its Flatten): its
        layer-by-layer prediction hands them the (N, D) output of the layers before ``start``
        (``finish``). None when there is no such tail, or it can't run as a chain."""
        for start in range(1, len(model.layers)):      # the longest such tail
            if type(model.layers[start]) is Dense:
                chain = cls._of(model, model.layers[start:])
                if chain is not None:
                    return start, chain
        return None

    @classmethod
    def _of(cls, model, layers):
        # the DenseChain of ``layers`` (the model's, or its last ones), or None
        be = model.be
        if be.dense_chain_kernels() is None:
            return None
        if np.dtype(model.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            return None
        final = _final_step(model.loss)
        if final is None:
            return None
        dense = []
        for layer in layers:
            if type(layer) is Dense:
                dense.append(layer)
            elif isinstance(layer, Activation) and layer.fused:
                continue
            elif type(layer) is Dropout:
                continue
            else:
                return None
        if not dense or layers[0] is not dense[0]:
            return None
        if any(a.out_features != b.in_features for a, b in zip(dense, dense[1:])):
            return None
        return cls(model, dense, final)

    def current(self, model):
        """Whether this plan still describes ``model`` (its buffers and loss are those it was made for)."""
        return model.flat is self.flat and model.loss is self.loss

    def takes(self, X):
        """Whether X goes straight to the kernel: a 2-D C-contiguous array of the model's dtype."""
        return (type(X) is np.ndarray and X.dtype == self.dtype and X.ndim == 2 and
                X.shape[1] == self.in_features and X.shape[0] > 0 and X.flags.c_contiguous)

    def request(self, X, most):
        """Whether X is a request for one kernel call: ``takes`` it, at most ``most`` rows."""
        return self.takes(X) and X.shape[0] <= most

    def _scratch(self, rows):
        buf = getattr(self._local, "scratch", None)
        if buf is None or buf.shape[1] < rows * self.widest:
            buf = self._local.scratch = self.empty((2, rows * self.widest), self.dtype)
        return buf

    def uses_blas(self, X, batch):
        """Whether predicting X ``batch`` rows at a time calls BLAS (else BLAS needn't be held)."""
        try:
            n = len(X)
        except TypeError:
            return True
        return n > 0 and self.plan_rows(min(n, batch))[1]

    def blocks(self, n):
        """How many threads a kernel call of n rows can keep busy (1: nothing to run in parallel)."""
        return self.plan_rows(n)[2]

    def plan_rows(self, n):
        """(the row blocks of an n-row kernel call, whether they call BLAS, how many threads it
        keeps busy: its row blocks, or when it calls no BLAS its layers' column parts or its
        row phase's blocks; the first layer of that row phase, dense_chain.row_phase's)."""
        found = self._edges.get(n)
        if found is None:
            kernels = self.kernels
            edges = kernels.row_edges(n, self.threads)
            blas = kernels.uses_blas(edges)
            first = kernels.row_phase(n, self.layout, self.dtype.itemsize, self.threads)
            busy = edges.size - 1 if blas else kernels.parallel_parts(n, self.layout, self.threads, first)
            found = edges, blas, busy, first
            if len(self._edges) < 64:     # the usual batch sizes, kept
                self._edges[n] = found
        return found

    def run(self, X, plan, parallel):
        """Probabilities of X (a ``request``) in one kernel call: ``predict`` of one batch,
        with its plan_rows and ``parallel`` given."""
        n = X.shape[0]
        out = np.empty((n, self.out_features), dtype=self.dtype)
        self._forward(out, X, self._scratch(n), plan, parallel, 0)
        return out

    def _forward(self, out, xb, scratch, plan, parallel, start):
        # out = the chain on xb (rows start .. of the caller's X) in one kernel call.
        # ``parallel``: the call may run on the caller's team of Numba threads; it does when
        # the team is awake or worth waking (backend/cpu/team_wake.py) and the cores are free
        # (prediction_threads, looked at only then)
        mode = SERIAL
        if parallel:
            team = prediction_team()
            t = time.perf_counter()
            mode = team.plan(t)
            if mode != SERIAL and self._threads_free() <= 1:
                mode = SERIAL
        if mode == WAKE:
            with pinned_away():
                ok = self._kernel(out, xb, scratch, plan, True)
        else:
            ok = self._kernel(out, xb, scratch, plan, mode == PARALLEL)
        if parallel:
            end = time.perf_counter()
            team.done(mode, t, end)
            if mode == PARALLEL:        # a wake is no yardstick, nor a stall
                self.timed(xb.shape[0], end - t)
        if not ok:
            raise ValueError(f"expected finite values in X, got NaN or Inf (in rows {start} to "
                             f"{start + xb.shape[0] - 1})")

    def _kernel(self, out, xb, scratch, plan, parallel):
        edges, blas, _, first = plan
        return self.kernels.dense_chain_forward(out, xb, self.params, self.layout, self.alphas, self.final,
                                                scratch, edges, parallel, blas, self.threads, first)

    def timed(self, n, seconds):
        """A parallel kernel call of n rows took ``seconds``: far longer than it should (is_stall),
        it stalled, and the next predictions run on one thread for a while
        (backend/cpu/thread_count.py, prediction_stalled); else it may be the fastest so far."""
        fastest = self._fastest.get(n)
        should = n * self._macs / STALL_MACS_S
        if fastest is not None and fastest < should:
            should = fastest
        if is_stall(seconds, should) and self._fastest:
            self._stalled()     # (not the chain's first parallel call: Numba's team may be starting)
        elif fastest is None and len(self._fastest) < 64 or fastest is not None and seconds < fastest:
            self._fastest[n] = seconds     # the usual row counts, as plan_rows keeps them

    def finish(self, out, h, parallel):
        """out = the probabilities of the model whose last layers this chain is (plan_tail),
        from h (N, D), the output of the layers before them, in one kernel call (on Numba's
        threads if ``parallel``); False, nothing written, when h holds a NaN or Inf."""
        if not self.takes(h):
            h = np.ascontiguousarray(h, dtype=self.dtype)
        return self._kernel(out, h, self._scratch(h.shape[0]), self.plan_rows(h.shape[0]), parallel)

    def predict(self, X, batch, parallel, read=None):
        """Probabilities (N, M) of X (C-contiguous, the model's dtype; the kernel checks its
        values: a ValueError names the batch of rows with a NaN or Inf), ``batch`` rows a
        kernel call; ``parallel``: each call's blocks or column parts on Numba's threads.
        ``read(start, stop)``: those rows of an X on disk, as such an array."""
        n = X.shape[0]
        out = np.empty((n, self.out_features), dtype=self.dtype)
        b = min(n, batch)
        scratch = self._scratch(b)
        for start in range(0, n, b):
            stop = min(n, start + b)
            xb = X[start:stop] if read is None else read(start, stop)
            self._forward(out[start:stop], xb, scratch, self.plan_rows(stop - start), parallel, start)
        return out
