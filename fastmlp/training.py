"""The epoch and batch loop of ``Sequential.fit``.

``Trainer(model, ...).run()`` splits off the validation set, draws each
epoch's order from the model's generator, gathers each batch into fixed
buffers (fastmlp/batches.py) and calls ``model.train_step`` on it. Around
that loop it keeps: the callbacks (History first, progress output last), the
non-finite check and undo of a diverging step, per-sample weights (gathered
with the targets; fastmlp/sample_weights.py), checkpoints and resuming
(fastmlp/checkpoint.py), the Ctrl-C guard, the full-batch row-space path
(fastmlp/gram.py) and, on the GPU, steps replayed as CUDA graphs.

It goes through the model's public interface only: ``prepare``,
``train_step``, ``evaluate_prepared``, ``flat`` (the flat buffers),
``stats`` (the epoch's running loss sum and correct count, on the device),
``position``, ``save``.
"""
import math
import time

import numpy as np

from . import gram as gram_path
from . import pooling
from .batches import LazyRows
from .callbacks import Callback, History, ModelCheckpoint, NonFiniteLossError, TerminateOnNaN, overrides
from .checkpoint import InterruptGuard, check_checkpoint_args, resume_position
from .conv import Conv2D, Flatten, MaxPool2D
from .layers import Activation, Dense, Layer
from .normalization import BatchNorm
from .optimizers import SGD, Adam, AdamW, RMSprop
from .progress import Progress, resolve_verbose
from .sample_weights import check_sample_weight, sample_weights
from .validation import check_batch_size, check_count, check_real

# layers whose training step is a fixed sequence of launches (no host draws): CUDA-graph safe
GRAPH_SAFE = (Dense, Activation, Conv2D, MaxPool2D, Flatten, BatchNorm) + pooling.LAYERS


class Trainer:
    """One call of ``fit``: arguments checked in the constructor (before any state changes)."""

    def __init__(self, model, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
                 validation_split=0.0, callbacks=None, verbose="auto", test_data=None, augment=None,
                 initial_epoch=0, checkpoint=None, checkpoint_every=1, resume=None, class_weight=None,
                 sample_weight=None, comm=None):
        self.model, self.be = model, model.be
        self.epochs = check_count("epochs", epochs, 0)
        batch_size = check_batch_size(batch_size)
        self.checkpoint, self.checkpoint_every, self.resume, self.initial_epoch = check_checkpoint_args(
            checkpoint, checkpoint_every, resume, initial_epoch)
        validation_split = check_real("validation_split", validation_split, 0.0, 1.0, hi_open=True)
        verbose = resolve_verbose(verbose)
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"expected Callback instances, got {type(cb).__name__}")
        keys = log_keys(validation_data is not None or validation_split > 0, test_data is not None)
        for cb in self.callbacks:
            cb.check_logs(keys)
        if self.checkpoint is not None or any(isinstance(cb, ModelCheckpoint) and not cb.save_weights_only
                                              for cb in self.callbacks):
            model.optimizer.get_config()   # a model file must describe the optimizer: fail now, not later
        self.shuffle, self.augment, self.verbose = bool(shuffle), augment, verbose
        self._split(X, y, validation_split, validation_data, test_data, sample_weight, class_weight)
        n = self.n = self.X.shape[0]
        self.b = n if batch_size is None else min(batch_size, n)
        self.full_batch = self.b == n and augment is None  # augmenting needs a copy: gather it
        self.dist = None
        if comm is not None and comm.size > 1:   # data-parallel: fastmlp/distributed/data_parallel.py
            from .distributed.data_parallel import DataParallel
            self.dist = DataParallel(comm, self)  # checks the shares, takes this rank's val/test rows
        else:
            _check_batch_statistics(model.layers, n, self.b)
        # the CPU's thread count, measured while training (backend/cpu/thread_count.py)
        self.threads = self.be.step_threads() or _NoThreads()

    def _split(self, X, y, validation_split, validation_data, test_data, sample_weight, class_weight):
        model, be = self.model, self.be
        X, T = model.prepare(X, y)
        W = None   # per-sample weights, (N,) float64 on the host until split
        if sample_weight is not None or class_weight is not None:
            W = sample_weights(model.loss, np.asarray(be.to_host(T)), model.output_shape[0], sample_weight,
                               class_weight)
        self.lazy = isinstance(X, LazyRows)
        self.Xv = self.Tv = self.Xt = self.Tt = self.Wv = None
        if validation_split and validation_data is None:
            n_val = int(round(X.shape[0] * validation_split))
            if n_val < 1 or n_val >= X.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves {n_val} validation samples "
                                 f"of {X.shape[0]}; expected at least 1 on each side")
            n_tr = X.shape[0] - n_val
            if self.lazy:
                X, self.Xv = X.rows(0, n_tr), X.rows(n_tr, X.shape[0])
            else:   # contiguous copies: a batch gather reads them as flat rows
                X, self.Xv = be.to_device(X[:n_tr]), X[n_tr:]
            T, self.Tv = be.to_device(T[:n_tr]), T[n_tr:]
            if W is not None:
                W, self.Wv = W[:n_tr], be.to_device(W[n_tr:])
        elif validation_data is not None:
            if isinstance(validation_data, (tuple, list)) and len(validation_data) == 3:
                *validation_data, wv = validation_data
                self.Wv = check_sample_weight(wv, len(validation_data[1]), "the sample weights of validation_data")
            self.Xv, self.Tv = model.prepare(*_pair(validation_data, "validation_data"), what="validation_data")
            if self.Wv is not None:
                self.Wv = be.to_device(self.Wv)
        if test_data is not None:
            self.Xt, self.Tt = model.prepare(*_pair(test_data, "test_data"), what="test_data")
        self.X, self.T = X, T
        self.W = None if W is None else be.to_device(W)

    # ------------------------------------------------------------------ the loop
    def run(self):
        model, be, n, b = self.model, self.be, self.n, self.b
        if self.dist is not None and self.full_batch:   # data-parallel: this rank's rows of the batch
            self.X, self.T = self.dist.full_batch_share(self.X, self.T)
        if self.lazy and self.full_batch:  # the whole set is one batch anyway: read it once
            self.X, self.lazy = be.to_device(self.X.read(0, self.X.shape[0]), model.dtype), False
        start = None
        if self.resume is not None:
            start = resume_position(model, self.resume, n, b, self.shuffle)
            self.initial_epoch = start["epoch"]
        history = History()
        self.progress = Progress(self.verbose, self.epochs, n, 1 if self.full_batch else -(-n // b))
        self.tick = self.progress.tick   # None unless a bar is drawn (then a counter per step)
        cbs = [history] + self.callbacks + [self.progress]
        for cb in cbs:
            cb.set_model(model)
            cb.on_train_begin()
        # batch-level hooks only for the callbacks that define them (decided once: none, no cost)
        self.batch_begin = [cb for cb in cbs if overrides(cb, "on_train_batch_begin")]
        self.batch_end = [cb for cb in cbs if overrides(cb, "on_train_batch_end")]
        model.stop_training = False
        swallow = any(isinstance(cb, TerminateOnNaN) for cb in self.callbacks)
        # a CPU step's loss is read at once (cheap); a GPU's once per epoch (no sync per step)
        self.check_each_step = be.host_arrays
        self.buffers = model.batch_buffers
        # checkpoints must hold W itself, and bitwise resumption the ordinary path
        has_extras = (self.Xv is not None or self.Xt is not None or bool(self.callbacks)
                      or self.checkpoint is not None or self.resume is not None)
        self.gram = None
        if self.dist is None and model.full_batch_gram and self.epochs > self.initial_epoch \
                and model.optimizer.plain \
                and gram_path.eligible(model, n, self.full_batch, has_extras):
            self.gram = gram_path.GramFirstLayer(model, self.X)
        self.graphs = model.step_graphs = self._step_graphs()
        # plain SGD steps without the undo copy where a bound proves them finite
        # (backend/cpu/in_place_sgd.py): only where the trainer reads each step's loss, nothing
        # but the update writes the weights between two steps, and no layer state needs the
        # undo (a callback's weights are read again at each epoch's start)
        user_hooks = any(overrides(cb, "on_train_batch_begin") or overrides(cb, "on_train_batch_end")
                         for cb in self.callbacks)
        stateful = any(type(layer).state_is_finite is not Layer.state_is_finite for layer in model.layers)
        model.flat.undo_free = None
        if self.dist is None and self.gram is None and self.graphs is None and self.check_each_step \
                and not user_hooks and not stateful:
            model.flat.undo_free = be.undo_free(model.flat, model.stats)
        self.saved_at = None
        if self.graphs is not None:
            self.threads = _NoThreads()
        # Ctrl-C waits for the end of the step (data-parallel: of the same step on every rank)
        guard = self.guard = InterruptGuard() if self.dist is None else self.dist.guard()
        # what a step is, for the threads' yardstick of a stalled step (thread_count.py)
        self.threads.start((type(model.optimizer).__name__, str(model.dtype), model.flat.size,
                            tuple(type(layer).__name__ for layer in model.layers)))
        try:
            with guard:
                for epoch in range(self.initial_epoch, self.epochs):
                    for cb in cbs:
                        cb.on_epoch_begin(epoch, {})
                    if model.flat.undo_free is not None:   # callbacks may have written the weights
                        model.flat.undo_free.forget()
                    logs = self._epoch(epoch, start)
                    start = None
                    for cb in cbs:
                        cb.on_epoch_end(epoch, logs)
                    if self.checkpoint is not None and (epoch + 1) % self.checkpoint_every == 0:
                        self._save()
                        self.saved_at = epoch + 1
                    guard.check()
                    if model.stop_training:
                        break
                # the callbacks end first (EarlyStopping may restore the best weights), so that
                # the final checkpoint holds what fit returns; a callback may have changed the model
                self._end_gram()
                for cb in cbs:
                    cb.on_train_end()
                if self.checkpoint is not None and self.epochs > self.initial_epoch \
                        and (self.saved_at != model.position["epoch"] or self.callbacks):
                    self._save()
                    self.saved_at = model.position["epoch"]
        except KeyboardInterrupt:
            if model.flat.nonfinite_count():  # an update went non-finite and was not yet undone
                self._undo_last_update()
                model.position = None
            self._end_gram()
            self.progress.on_train_end()
            pos = model.position
            if self.checkpoint is not None and pos is not None and (pos["step"] or self.saved_at != pos["epoch"]):
                if self.dist is not None and pos["step"]:   # the epoch's running sums of every rank
                    self.dist.total_stats()
                self._save()
            raise
        except NonFiniteLossError as e:
            model.position = None  # the undone step leaves no clean position to resume from
            e.history = history
            self._end_gram()
            for cb in cbs:
                cb.on_train_end()
            if swallow:
                return history
            raise
        finally:
            self._end_gram()
            model.flat.undo_free = None
            self.threads.stop()
            history.threads = getattr(self.threads, "used", {})   # count -> steps run on it
        return history

    def _epoch(self, epoch, start):
        """Run one epoch (from a resumed position when ``start`` says so); returns its logs."""
        model, be, n, b, stats = self.model, self.be, self.n, self.b, self.model.stats
        t0 = time.perf_counter()
        skip, epoch_rng = 0, None
        if start is not None and start["step"]:  # resuming in the middle of this epoch
            skip, epoch_rng, penalty = start["step"], start["epoch_rng"], start["penalty"]
            stats[...] = be.to_device(np.array(start["stats"], dtype=np.float64))
            if self.dist is not None:   # the saved sums are the world's: the root alone carries them
                self.dist.resumed_stats(stats)
        else:
            stats[...] = 0
            penalty = self._penalty() if model.flat.has_reg else 0.0
        pos = model.position = {"epoch": epoch, "step": 0, "n": n, "batch_size": b,
                                "shuffle": self.shuffle, "penalty": penalty, "epoch_rng": None}
        X, T, W = self.X, self.T, self.W
        if self.full_batch:
            if self.batch_begin and not skip:
                self._batch_begin(0, n)
            if self.graphs is not None and not skip:
                self._graph_step(("full",), lambda: model.train_step(X, T, stats, weights=W))
            elif not skip:
                self.threads.begin(n)
                self._checked_step(X, T, epoch, 0, W)
                self.threads.end()
            pos["step"] = 1
            if self.batch_end and not skip:
                self._batch_end(0, n, n)
            self.guard.check()
        else:
            host_order = self._epoch_order(epoch_rng, pos)
            order = be.to_device(host_order)
            for step, first in enumerate(range(0, n, b)):
                if step < skip:
                    continue
                idx, host_idx = order[first:first + b], host_order[first:first + b]
                if self.dist is not None:   # data-parallel: this rank's share of the global batch
                    idx, host_idx = self.dist.share(idx, host_idx, epoch, step)
                    if not idx.shape[0]:    # a last batch smaller than the world: no rows here
                        self.dist.step(self, None, None, epoch, step)
                        pos["step"] = step + 1
                        self.guard.check()
                        continue
                xb, tb = self.buffers.get(idx.shape[0], X, T)
                wb = None if W is None else self.buffers.weights(idx.shape[0])
                if self.batch_begin:
                    self._batch_begin(step, idx.shape[0])
                if self.graphs is not None:
                    self._graph_batch_step(xb, tb, idx, wb)
                else:
                    self.buffers.gather(xb, tb, X, T, idx, host_idx)
                    if wb is not None:
                        be.gather_rows(wb, W, idx)
                    if self.augment is not None:
                        self.augment.apply(be, xb, model.rng)
                    self.threads.begin(idx.shape[0])
                    self._checked_step(xb, tb, epoch, step, wb)
                    self.threads.end()
                pos["step"] = step + 1
                if self.batch_end:
                    self._batch_end(step, idx.shape[0], first + idx.shape[0])
                if self.tick is not None:
                    self.tick(first + idx.shape[0])
                self.guard.check()
        model.position = {"epoch": epoch + 1, "step": 0}
        s = be.to_host(stats)  # the one host read of the epoch
        if self.dist is not None:   # data-parallel: the world's sums; the root's layer state and generator
            s = self.dist.end_epoch(self, s, epoch)
        elif not self.check_each_step:
            self._check_finite(float(s[0]), epoch, "end")
        logs = {"loss": float(s[0]) / n + penalty, "accuracy": float(s[1]) / n}
        if self.Xv is not None:
            logs.update({"val_" + k: v for k, v in self._evaluate(self.Xv, self.Tv, self.Wv).items()})
        if self.Xt is not None:
            logs.update({"test_" + k: v for k, v in self._evaluate(self.Xt, self.Tt).items()})
        logs["lr"] = float(model.optimizer.lr)   # the rate of the epoch's last step
        logs["seconds"] = time.perf_counter() - t0
        return logs

    def _batch_begin(self, step, size):
        for cb in self.batch_begin:
            cb.on_train_batch_begin(step, {"size": size})

    def _batch_end(self, step, size, seen):
        # logs: the batch's size and, as Keras, the mean loss of the epoch so far (a host read)
        s = self.be.to_host(self.model.stats)
        logs = {"size": size, "loss": float(s[0]) / seen, "accuracy": float(s[1]) / seen}
        for cb in self.batch_end:
            cb.on_train_batch_end(step, logs)

    def _epoch_order(self, epoch_rng, pos):
        """The epoch's sample order (host int64). A resumed epoch redraws its shuffle from
        the generator state saved at its start, leaving the generator where it was."""
        rng = self.model.rng
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        if epoch_rng is None:
            pos["epoch_rng"] = rng.bit_generator.state
            return rng.permutation(self.n).astype(np.int64, copy=False)
        now = rng.bit_generator.state
        rng.bit_generator.state = epoch_rng
        order = rng.permutation(self.n).astype(np.int64, copy=False)
        rng.bit_generator.state = now
        pos["epoch_rng"] = epoch_rng
        return order

    # ------------------------------------------------------------------ a diverging step
    def _checked_step(self, xb, tb, epoch, step, weights=None):
        if self.dist is not None:   # data-parallel: reduced gradient, checks agreed by every rank
            return self.dist.step(self, xb, tb, epoch, step)
        stats = self.model.stats
        before = float(stats[0]) if self.check_each_step else 0.0
        self.model.train_step(xb, tb, stats, first=self.gram, weights=weights)
        if self.check_each_step:
            self._check_finite(float(stats[0]) - before, epoch, step)

    def _check_finite(self, loss_value, epoch, step):
        bad = self.model.flat.nonfinite_count()
        if bad:
            # the last update produced non-finite parameters: undo it
            self._undo_last_update()
            raise NonFiniteLossError(f"training diverged at epoch {epoch}, step {step}: the update made "
                                     f"{bad} parameter(s) NaN or Inf; the weights before that update "
                                     "were kept (lower the learning rate?)", epoch, step)
        if not math.isfinite(loss_value):
            # the loss was computed before this step's update; undo the update
            self._undo_last_update()
            raise NonFiniteLossError(f"training diverged at epoch {epoch}, step {step}: the loss is "
                                     f"{loss_value}; the weights it was computed with (those after the last step "
                                     "with a finite loss) were kept "
                                     "(lower the learning rate?)", epoch, step)
        for i, layer in enumerate(self.model.layers):
            if type(layer).state_is_finite is not Layer.state_is_finite and not layer.state_is_finite():
                # e.g. a batch variance that overflowed into BatchNorm's running variance
                self._undo_last_update()
                raise NonFiniteLossError(f"training diverged at epoch {epoch}, step {step}: the state of "
                                         f"layer {i} ({layer!r}) went NaN or Inf; the weights and state "
                                         "before that step were kept (lower the learning rate?)", epoch, step)

    def _undo_last_update(self):
        """Back to the parameters and the layers' state (BatchNorm's running statistics)
        before the last step; the optimizer restarts from zero."""
        self.model.flat.undo()
        if self.gram is not None:
            self.gram.undo()
        for layer in self.model.layers:
            layer.undo_state()
        self.model.optimizer.t = 0

    def _penalty(self):
        """The L1/L2 penalty of the current weights (W of the row-space path included)."""
        extra = self.gram.l2_penalty() if self.gram is not None else 0.0
        return self.model.flat.penalty() + extra

    def _save(self):
        """The checkpoint, written by the root alone in a data-parallel run."""
        if self.dist is None or self.dist.comm.is_root:
            self.model.save(self.checkpoint)

    def _evaluate(self, X, T, W=None):
        """evaluate on a prepared set, weighted by W when given (data-parallel: this rank's rows,
        reduced over the ranks; no weights there)."""
        if self.dist is not None:
            return self.dist.evaluate(X, T)
        return self.model.evaluate_prepared(X, T, W=W)

    def _end_gram(self):
        if self.gram is not None:
            self.gram.materialize()
            self.gram = None

    # ------------------------------------------------------------------ CUDA graphs
    def _step_graphs(self):
        """The backend's ``StepGraphs`` when this fit's steps can be replayed as CUDA graphs,
        else None: SGD, Adam, AdamW or RMSprop (fixed scalars; Adam's step count lives on the device), data
        on the device, no host-drawn randomness. A rate that changes (a schedule, a callback)
        is written to the device before each step, outside the graph."""
        model = self.model
        if not (model.cuda_graphs and type(model.optimizer) in (SGD, Adam, AdamW, RMSprop) and self.gram is None
                and self.dist is None
                and self.augment is None and not self.lazy
                and all(isinstance(layer, GRAPH_SAFE) for layer in model.layers)):
            return None
        return self.be.step_graphs()  # None where the backend has no graphs

    def _graph_step(self, key, step):
        """step() through the graph of key (and of the optimizer's scalars, which a
        callback may change between epochs). A replay runs no Python and a capture runs
        it without running the launches, so the optimizer's step count is set here."""
        opt, graphs = self.model.optimizer, self.graphs
        t = opt.t
        opt.prepare_step(self.be)  # eager host work, never inside a capture
        before = graphs.captured
        graphs.run(key + opt.graph_key(), step)
        opt.set_step(t + 1)
        if graphs.captured != before:
            graphs.keep.append([layer.workspaces() for layer in self.model.layers])

    def _graph_batch_step(self, xb, tb, idx, wb=None):
        """Gather + step of one mini-batch as a graph: the batch's indices are copied into a
        fixed buffer first, which the graph's gathers read (the weights' too, into wb)."""
        model, X, T, W = self.model, self.X, self.T, self.W
        ib = self.buffers.indices(idx)

        def step():
            self.be.gather_rows(xb, X, ib)
            self.be.gather_rows(tb, T, ib)
            if wb is not None:
                self.be.gather_rows(wb, W, ib)
            model.train_step(xb, tb, model.stats, weights=wb)
        self._graph_step(("batch", xb.shape[0]), step)


class _NoThreads:
    """No thread count to choose (the GPU, or steps replayed as CUDA graphs)."""

    def start(self, kind=None):
        pass

    def begin(self, rows):
        pass

    def end(self):
        pass

    stop = end


def log_keys(validation, test):
    """The keys of the logs that each epoch of fit hands the callbacks (``_epoch``)."""
    metrics = ("loss", "accuracy")   # what train_step counts and evaluate returns
    return (list(metrics) + [f"val_{k}" for k in metrics if validation]
            + [f"test_{k}" for k in metrics if test] + ["lr", "seconds"])


def _pair(data, what):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"expected {what} as a pair (X, y), got {type(data).__name__}")
    return data


def _check_batch_statistics(layers, n, b):
    """BatchNorm in training needs two values per feature in every batch, the last
    (partial) one included: refuse before the first step rather than in the middle."""
    smallest = n % b or b
    for i, layer in enumerate(layers):
        if isinstance(layer, BatchNorm):
            per_sample = int(np.prod(layer.input_shape[1:])) if len(layer.input_shape) > 1 else 1
            if smallest * per_sample < 2:
                raise ValueError(f"layer {i} ({layer!r}): expected at least 2 values per feature in every "
                                 f"training batch, got a batch of {smallest} sample(s) (N={n}, "
                                 f"batch_size={b}); choose a batch_size that does not leave 1 sample")
