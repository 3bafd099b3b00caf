"""One rank's part of a data-parallel ``fit``: what the Trainer's hooks call.

Every rank holds the same model (the root's state is broadcast when ``fit``
starts) and draws the same epoch order from the model's generator. Of each
global batch of m rows, rank r takes the rows ``shares(m, P)[r]`` (the first
m % P ranks one more); it scales its loss gradient by 1 / m, and the flat
gradient buffer is summed over the ranks before the update (reduce.py), so the
update is that of one process on the whole batch, the reduction's rounding
aside. Decisions are taken together: the non-finite checks sum each rank's
findings, Ctrl-C stops every rank after the same step. At the end of an epoch
the loss / accuracy sums are added over the ranks and the root's layer state
(BatchNorm running statistics) and generator are broadcast, so every rank's
model and ``History`` are the same. Validation and test sets are split among
the ranks the same way and their sums added.

Random draws inside a step (Dropout, ``augment``) come from the model's
generator on the root and, on rank r > 0, from a generator seeded by
(seed, epoch, step, r), so that the ranks' masks differ and a resumed run
draws them again.
"""
import hashlib
import json
import math
import zlib

import numpy as np

from ..batches import LazyRows
from ..callbacks import NonFiniteLossError
from ..checkpoint import InterruptGuard
from ..conv import Conv2D, Flatten, MaxPool2D
from ..layers import Activation, Dense, Layer
from ..normalization import BatchNorm
from .reduce import gradient_reducer


# layers whose training step draws nothing from the model's generator (Dropout does; a
# layer of the user's may)
DRAW_FREE = (Dense, Activation, Conv2D, MaxPool2D, Flatten, BatchNorm)


def shares(m, size):
    """[(lo, hi) of rank r] of a batch of m rows over ``size`` ranks (the first m % size get one more)."""
    q, extra = divmod(m, size)
    out, lo = [], 0
    for r in range(size):
        hi = lo + q + (r < extra)
        out.append((lo, hi))
        lo = hi
    return out


class DataParallel:
    """Built by the Trainer's constructor: checks the world against the batch (before any
    state changes) and keeps this rank's rows of the validation and test sets."""

    def __init__(self, comm, trainer):
        self.comm, self.trainer, self.model = comm, trainer, trainer.model
        n, b, size = trainer.n, trainer.b, comm.size
        if b < size:
            raise ValueError(f"expected a global batch_size of at least the world size {size} (every rank "
                             f"takes a share of each batch), got batch_size={b} (N={n})")
        self._check_batch_statistics(n, b)
        self.draws = trainer.augment is not None or not all(isinstance(l, DRAW_FREE) for l in self.model.layers)
        self.fingerprint = fingerprint(trainer)
        self.n_val = self.n_test = 0
        if trainer.Xv is not None:
            self.n_val = trainer.Xv.shape[0]
            trainer.Xv, trainer.Tv = self._rows(trainer.Xv, trainer.Tv)
        if trainer.Xt is not None:
            self.n_test = trainer.Xt.shape[0]
            trainer.Xt, trainer.Tt = self._rows(trainer.Xt, trainer.Tt)
        if not comm.is_root:
            trainer.verbose = 0   # progress is printed once, by the root
        self.scale, self.reduce = None, None

    def _check_batch_statistics(self, n, b):
        """BatchNorm normalises with each rank's own rows: every non-empty share needs two values
        per feature (a share of 0 rows computes nothing on that rank)."""
        sizes = {hi - lo for m in {b, n % b or b} for lo, hi in shares(m, self.comm.size)} - {0}
        smallest = min(sizes)
        for i, layer in enumerate(self.model.layers):
            if isinstance(layer, BatchNorm):
                per_sample = int(np.prod(layer.input_shape[1:])) if len(layer.input_shape) > 1 else 1
                if smallest * per_sample < 2:
                    raise ValueError(f"layer {i} ({layer!r}): expected at least 2 values per feature in every "
                                     f"rank's share of a batch (BatchNorm uses each rank's own rows), got a "
                                     f"share of {smallest} sample(s) (N={n}, batch_size={b}, "
                                     f"{self.comm.size} ranks); choose a larger batch_size")

    def _rows(self, X, T):
        lo, hi = shares(X.shape[0], self.comm.size)[self.comm.rank]
        return (X.rows(lo, hi) if isinstance(X, LazyRows) else X[lo:hi]), T[lo:hi]

    # ------------------------------------------------------------------ fit starts (collective)
    def start(self):
        """Every rank takes the root's state (weights, optimizer, generator, layer state), as
        PyTorch's DDP does, and the gradient reducer is set up (NCCL: its unique id)."""
        model, comm = self.model, self.comm
        state = comm.bcast(model.state_dict() if comm.is_root else None)
        if not comm.is_root:
            model.load_state_dict(state, source="the root's model")
        self.reduce = gradient_reducer(comm, model.be, model.flat.grads)

    def guard(self):
        return CollectiveGuard(self.comm)

    # ------------------------------------------------------------------ a step
    def full_batch_share(self, X, T):
        """This rank's rows of the one full batch."""
        self.scale = 1.0 / X.shape[0]
        return self._rows(X, T)

    def share(self, idx, host_idx, epoch, step):
        """This rank's share of a global batch (device and host indices); sets the step's scale
        and, where the step draws random numbers, this rank's generator for them."""
        m = idx.shape[0]
        self.scale = 1.0 / m
        if self.draws and self.comm.rank:
            seed = np.random.default_rng([self.model.seed, epoch, step, self.comm.rank])
            self.model.rng.bit_generator.state = seed.bit_generator.state
        lo, hi = shares(m, self.comm.size)[self.comm.rank]
        return idx[lo:hi], host_idx[lo:hi]

    def step(self, trainer, xb, tb, epoch, step):
        """One step on this rank's rows with the summed gradient, then the non-finite checks,
        agreed by every rank (on the CPU; the GPU checks once an epoch, in end_epoch)."""
        model = self.model
        stats = model.stats
        before = float(stats[0]) if trainer.check_each_step else 0.0
        if xb is not None:
            model.train_step(xb, tb, stats, scale=self.scale, reduce=self.reduce)
        else:   # an empty share (a last batch smaller than the world): no gradient of its own
            model.flat.grads[...] = 0
            self.reduce(model.flat.grads)
            model.optimizer.step(model.be, model.flat)
        if trainer.check_each_step:
            self.check_finite(trainer, float(stats[0]) - before, epoch, step, loss_is_total=False)

    def check_finite(self, trainer, loss, epoch, step, loss_is_total):
        """NonFiniteLossError on every rank when any rank saw a non-finite loss, parameter or layer
        state; each rank undoes the step first (trainer._undo_last_update). The same small sum
        carries the ranks' Ctrl-C flags (CollectiveGuard.agreed): one collective, not two."""
        model = self.model
        bad_state = sum(1 for layer in model.layers if type(layer).state_is_finite is not Layer.state_is_finite
                        and not layer.state_is_finite())
        guard = trainer.guard
        found = self.comm.sum([0.0 if loss_is_total else loss, model.flat.nonfinite_count(), bad_state,
                               float(guard.interrupted)])
        guard.agreed = bool(found[3])
        loss = loss if loss_is_total else float(found[0])
        bad, bad_state = int(found[1]), int(found[2])
        if not (bad or bad_state or not math.isfinite(loss)):
            return
        trainer._undo_last_update()
        what = (f"the update made {bad // self.comm.size} parameter(s) NaN or Inf" if bad else
                f"the loss summed over the ranks is {loss}" if not math.isfinite(loss) else
                f"the state of a layer went NaN or Inf on {bad_state} rank(s)")
        error = NonFiniteLossError(f"training diverged at epoch {epoch}, step {step}: {what}; the weights "
                                   "before that update were kept (lower the learning rate?)", epoch, step)
        error.collective = True
        raise error

    # ------------------------------------------------------------------ an epoch ends
    def end_epoch(self, trainer, s, epoch):
        """The epoch's [loss sum, correct count] over the world; the root's layer state and
        generator on every rank; the parameters checked to be the same everywhere."""
        s = self.comm.sum(s)
        if not trainer.check_each_step:
            self.check_finite(trainer, float(s[0]), epoch, "end", loss_is_total=True)
        self.sync_state()
        return s

    def sync_state(self):
        model, comm = self.model, self.comm
        layer_state = {i: layer.get_state() for i, layer in enumerate(model.layers) if layer.get_state()}
        root = comm.bcast((layer_state, model.rng.bit_generator.state) if comm.is_root else None)
        if not comm.is_root:
            for i, st in root[0].items():
                model.layers[i].set_state(st)
            model.rng.bit_generator.state = root[1]
        # MPI and NCCL give every rank the same sum; should a library not, the root's weights win
        digest = zlib.crc32(np.asarray(model.be.to_host(model.flat.params)).view(np.uint8))
        if len(set(comm.allgather(digest))) > 1:
            self.resync_parameters()

    def resync_parameters(self):
        model, comm = self.model, self.comm
        flat = model.flat
        bufs = [flat.params] + list(flat.state)
        host = comm.bcast([np.asarray(model.be.to_host(a)) for a in bufs] if comm.is_root else None)
        if not comm.is_root:
            for dest, a in zip(bufs, host):
                dest[...] = model.be.to_device(a)

    def total_stats(self):
        """model.stats := the sums of every rank (before a mid-epoch checkpoint)."""
        stats = self.model.stats
        stats[...] = self.model.be.to_device(self.comm.sum(self.model.be.to_host(stats)))

    def resumed_stats(self, stats):
        if not self.comm.is_root:
            stats[...] = 0

    def evaluate(self, X, T):
        """{"loss", "accuracy"} of the whole set from each rank's rows (X, T)."""
        model = self.model
        n_r = X.shape[0]
        penalty = model.flat.penalty() if model.flat.has_reg else 0.0
        loss_sum = correct = 0.0
        if n_r:
            r = model.evaluate_prepared(X, T)
            loss_sum, correct = (r["loss"] - penalty) * n_r, r["accuracy"] * n_r
        total = self.comm.sum([loss_sum, correct, n_r])
        n = float(total[2])
        return {"loss": float(total[0]) / n + penalty, "accuracy": float(total[1]) / n}


class CollectiveGuard(InterruptGuard):
    """Ctrl-C at the same step boundary on every rank: ``check()`` asks them all, or takes
    the answer the step's checks already agreed on (``agreed``)."""

    def __init__(self, comm):
        super().__init__()
        self.comm = comm
        self.agreed = None

    def check(self):
        agreed, self.agreed = self.agreed, None
        if agreed if agreed is not None else self.comm.any(self.interrupted):
            self.interrupted = False
            raise KeyboardInterrupt


def fingerprint(trainer):
    """{what: digest} of what must be the same on every rank: the architecture, the fit
    arguments, and the data (_data_digest)."""
    model = trainer.model
    arch = model.get_config()
    arch.pop("seed", None)   # the root's weights and generator are broadcast anyway
    out = {"model (layers, loss, optimizer, dtype)": _digest(json.dumps(arch, sort_keys=True, default=str)),
           "fit arguments (epochs, batch_size, shuffle, initial_epoch, augment)": _digest(json.dumps(
               [trainer.n, trainer.b, trainer.epochs, trainer.shuffle, trainer.initial_epoch,
                trainer.augment is not None, trainer.checkpoint is not None, trainer.resume is not None]))}
    for what, X, T in (("training data (X, y)", trainer.X, trainer.T),
                       ("validation data", trainer.Xv, trainer.Tv),
                       ("test data", trainer.Xt, trainer.Tt)):
        out[what] = None if X is None else _data_digest(model.be, X, T)
    return out


def _digest(data):
    return hashlib.blake2b(data.encode() if isinstance(data, str) else data, digest_size=12).hexdigest()


def _data_digest(be, X, T, rows=64):
    """Shape, dtype and contents of (X, T): every byte of an in-memory X (CRC-32, about 1 GB/s;
    on a GPU weighted column sums), a sample of ``rows`` rows of an on-disk one, all of T."""
    h = hashlib.blake2b(digest_size=12)
    h.update(repr((tuple(X.shape), str(np.dtype(X.dtype)), tuple(T.shape), str(T.dtype))).encode())
    if isinstance(X, LazyRows):
        n = X.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, rows)).astype(np.int64))
        sample = np.empty((idx.size,) + X.sample_shape, X.dtype)
        X.take(sample, idx)
        h.update(sample.tobytes())
    elif be.host_arrays:
        h.update(zlib.crc32(np.ascontiguousarray(X).view(np.uint8).reshape(-1)).to_bytes(4, "little"))
    else:
        xp = be.xp
        flat = X.reshape(X.shape[0], -1).astype(np.float64)
        weights = xp.arange(1, X.shape[0] + 1, dtype=np.float64)
        h.update(np.asarray(be.to_host(xp.stack([flat.sum(axis=0), weights @ flat]))).tobytes())
    h.update(np.ascontiguousarray(be.to_host(T)).tobytes())
    return h.hexdigest()
