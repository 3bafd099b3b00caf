"""Sequential: owns the layers, the loss, the optimizer, the device and the dtype.

No autograd tape: ``_forward`` runs the layers in order, ``_backward`` in
reverse, one call per layer. All parameters, gradients and optimizer state
live in one flat buffer each (layers hold views), so one kernel launch
updates everything. After the first step of a batch size, a step allocates
nothing.
"""
import math
import sys
import time

import numpy as np

from . import backend as backends
from . import gram as gram_path
from . import io as fio
from .callbacks import Callback, History, NonFiniteLossError, TerminateOnNaN
from .checkpoint import InterruptGuard, check_checkpoint_args, resume_position
from .conv import Conv2D, Flatten, MaxPool2D
from .layers import Activation, Dense, Layer
from .losses import Loss, SoftmaxCrossEntropy, get_loss
from .normalization import BatchNorm
from .optimizers import SGD, Adam, get_optimizer
from .validation import (all_finite, check_batch_size, check_count, check_dtype, check_features,
                         check_fits_dtype, check_lazy_features, check_same_length)

# layers whose training step is a fixed sequence of launches (no host draws): CUDA-graph safe
_GRAPH_SAFE = (Dense, Activation, Conv2D, MaxPool2D, Flatten, BatchNorm)
_ALIGN = 16  # elements: every parameter starts on a 64-byte boundary (float32)
EVAL_BATCH = 1024


class Sequential:
    _kernel_thread_gemms = False     # set by _plan_fusion

    def __init__(self, layers, loss=None, optimizer=None, device="cpu", dtype="float32",
                 seed=None, input_shape=None):
        if not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError(f"expected a non-empty list of layers, got {layers!r}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"expected layer {i} to be a fastmlp Layer, got {type(layer).__name__}")
            if any(layer is other for other in layers[:i]):
                raise ValueError(f"layer {i} ({layer!r}) appears twice; make a new instance")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"expected seed to be an int >= 0 or None, got {seed!r}")
        self.dtype = check_dtype(dtype)
        self.be = backends.get_backend(device)
        self.device = self.be.name
        self.layers = list(layers)
        self.loss = get_loss(loss if loss is not None else "mse")
        self.optimizer = get_optimizer(optimizer if optimizer is not None else SGD())
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self.rng = np.random.default_rng(self.seed)
        self.stop_training = False
        # full-batch SGD on a wide first layer runs in the row space of X (fastmlp/gram.py);
        # on the GPU the two thin GEMMs cost less than the extra kernels (bench/peers.py)
        self.full_batch_gram = self.be.name == "cpu"
        # on the GPU, replay eligible training steps as CUDA graphs (backend/cuda_graph.py)
        self.cuda_graphs = True
        self.built = False
        self._stats = None
        self._position = None  # where training stands: saved in model files, read by fit(resume=)
        if input_shape is None and isinstance(self.layers[0], Dense):
            input_shape = (self.layers[0].in_features,)
        if input_shape is not None:
            self.build(tuple(input_shape))

    # ------------------------------------------------------------------ building
    def build(self, input_shape):
        """Check that the layers chain, plan fusions, allocate and initialise the flat buffers."""
        be, dt = self.be, self.dtype
        shape = tuple(input_shape)
        self.input_shape = shape
        for i, layer in enumerate(self.layers):
            layer.rng = self.rng
            try:
                shape = layer.build(shape, be, dt)
            except ValueError as e:
                prev = f" after layer {i - 1} ({self.layers[i - 1]!r})" if i else ""
                raise ValueError(f"layer {i}{prev}: {e}") from None
        self.output_shape = shape
        if len(shape) != 1:
            raise ValueError(f"expected the last layer to output (N, M) logits, got (N, {shape}); add Flatten()")
        self._plan_fusion()
        self.layers[0].needs_dx = False
        for layer in self.layers[1:]:
            layer.needs_dx = True
        # flat buffers
        specs = [(layer, s) for layer in self.layers for s in layer.param_specs()]
        offsets, p = [], 0
        for _, s in specs:
            offsets.append(p)
            p += -(-int(np.prod(s.shape)) // _ALIGN) * _ALIGN
        self._n_flat = p
        self._params = be.zeros(p, dt)
        self._grads = be.zeros(p, dt)
        self._prev = be.zeros(p, dt)
        self._bad = be.zeros(1, np.int64)
        self._state = [be.zeros(p, dt) for _ in self.optimizer.state_names]
        bounds = offsets + [p]
        self._seg = (be.to_device(np.array(bounds, dtype=np.int64)),
                     be.to_device(np.array([s.l1 for _, s in specs], dtype=np.float64)),
                     be.to_device(np.array([s.l2 for _, s in specs], dtype=np.float64)))
        self._has_reg = any(s.l1 or s.l2 for _, s in specs)
        self._param_views = []
        k = 0
        legacy = np.random.RandomState(self.seed)
        for layer in self.layers:
            n = len(layer.param_specs())
            pv, gv = [], []
            for (_, s), off in zip(specs[k:k + n], offsets[k:k + n]):
                size = int(np.prod(s.shape))
                pv.append(self._params[off:off + size].reshape(s.shape))
                gv.append(self._grads[off:off + size].reshape(s.shape))
            layer.bind(pv, gv)
            self._param_views.extend(pv)
            if n:
                for view, value in zip(pv, layer.init_params(self.rng, legacy)):
                    view[...] = be.to_device(value, dt)
            k += n
        self._specs = specs
        self._offsets = offsets
        self._stats = be.zeros(2, np.float64)
        self._penalty_buf = be.zeros(1, np.float64)
        self.built = True
        return self

    def _plan_fusion(self):
        """Fuse an activation that directly follows a Dense into the Dense's kernel, and an
        activation + MaxPool2D (or a MaxPool2D alone) that follows a Conv2D into the Conv2D's."""
        for layer in self.layers:
            if isinstance(layer, (Activation, MaxPool2D)):
                layer.fused = False
            if isinstance(layer, Dense):
                layer.act_code, layer.alpha = 0, 0.0
            if isinstance(layer, Conv2D):
                layer.fuse_pool(0, 0.0, None)
        for i, (prev, layer) in enumerate(zip(self.layers, self.layers[1:])):
            if isinstance(prev, Dense) and isinstance(layer, Activation) and prev.act_code == 0:
                prev.act_code, prev.alpha, layer.fused = layer.code, layer.alpha, True
            if isinstance(prev, Conv2D):
                after = self.layers[i + 2] if i + 2 < len(self.layers) else None
                if isinstance(layer, MaxPool2D):
                    prev.fuse_pool(0, 0.0, layer)
                    layer.fused = True
                elif isinstance(layer, Activation) and isinstance(after, MaxPool2D):
                    prev.fuse_pool(layer.code, layer.alpha, after)
                    layer.fused = after.fused = True
        # a fused Conv2D runs as chunked Numba kernels on the CPU: its GEMMs must share their threads
        self._kernel_thread_gemms = bool(self.be.fused_conv_chunks) and any(
            isinstance(layer, Conv2D) and layer.pool is not None for layer in self.layers)

    def _require_built(self, X_shape=None):
        if not self.built:
            if X_shape is None:
                raise ValueError("the model is not built yet: call fit/predict with data or pass input_shape=")
            self.build(tuple(X_shape[1:]))

    # ------------------------------------------------------------------ the step
    def _forward(self, x, training):
        self.be.gemm_on_kernel_threads(self._kernel_thread_gemms)
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def _backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)

    def _dlogits(self, n):
        buf = self._dlogits_bufs.get(n) if hasattr(self, "_dlogits_bufs") else None
        if buf is None:
            if not hasattr(self, "_dlogits_bufs"):
                self._dlogits_bufs = {}
            buf = self._dlogits_bufs[n] = self.be.empty((n,) + self.output_shape, self.dtype)
        return buf

    def _train_step(self, xb, tb):
        """Forward, fused loss + gradient, backward, one update. Returns nothing:
        the loss and the correct count accumulate in ``self._stats`` on the device."""
        n = xb.shape[0]
        logits = self._forward(xb, True)
        dlogits = self._dlogits(n)
        self.loss.forward_backward(self.be, dlogits, self._stats, logits, tb, 1.0 / n)
        self._backward(dlogits)
        self.optimizer.step(self.be, self._params, self._prev, self._bad, self._grads,
                            self._state, self._seg)

    def _gram_step(self, X, T):
        """``_train_step`` for the full-batch row-space path of fastmlp/gram.py:
        the first layer's X @ W comes from the (N, N) Gram matrix, its dW is never formed."""
        be, first, n = self.be, self.layers[0], X.shape[0]
        be.gemm_on_kernel_threads(self._kernel_thread_gemms)
        a = first.workspace("a", (n, first.out_features))
        self._gram.forward(a)
        be.bias_act_forward(a, first.params[1], first.act_code, first.alpha)
        first.x, first.a = X, a
        x = a
        for layer in self.layers[1:]:
            x = layer.forward(x, True)
        dlogits = self._dlogits(n)
        self.loss.forward_backward(be, dlogits, self._stats, x, T, 1.0 / n)
        dy = dlogits
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        be.act_backward_bias_grad(dy, first.grads[1], dy, a, first.act_code, first.alpha)
        self._gram.update(dy)
        self.optimizer.step(be, self._params, self._prev, self._bad, self._grads,
                            self._state, self._seg)

    # ------------------------------------------------------------------ data in
    def _prepare(self, X, y=None, what="X"):
        """Validate once; convert once to the model dtype on the device.

        An on-disk X (``h5py.Dataset``, ...) is checked by a scan in chunks and comes
        back as ``fio.LazyRows``, read a batch at a time later."""
        lazy = fio.is_lazy_array(X)
        if lazy:
            if not self.built and len(X.shape) >= 2:
                self._require_built(tuple(X.shape))
            X = check_lazy_features(X, self.input_shape if self.built else None, self.dtype, what)
        else:
            built = self.built
            X = check_features(X, self.input_shape if built else None, what)
            if not built:  # the values are checked; now the shape against the new layers
                self._require_built(X.shape)
                X = check_features(X, self.input_shape, what, values=False)
            check_fits_dtype(X, self.dtype, what)
        t = None
        if y is not None:
            label = "y" if what == "X" else f"labels of {what}"
            check_same_length(X, y, label)
            if getattr(getattr(y, "dtype", None), "kind", "") in ("c", "m", "M"):
                raise TypeError(f"expected real numbers in {label}, got dtype {y.dtype}")
            t = self.loss.prepare(y, self.output_shape[0], self.dtype)
            if not all_finite(t):  # finite as given, but overflowed in the model dtype
                raise ValueError(f"expected values of {label} within the {np.dtype(self.dtype).name} range, "
                                 "got values that overflow to Inf")
            t = self.be.to_device(t)
        return (X if lazy else self.be.to_device(X, self.dtype)), t

    def _rows(self, X, start, stop):
        """Rows [start, stop) of a prepared X on the device (read from disk for LazyRows)."""
        if isinstance(X, fio.LazyRows):
            return self.be.to_device(X.read(start, stop), self.dtype)
        return X[start:stop]

    def _read_rows(self, xb, X, idx):
        """xb = X[idx] for an on-disk X, converted into the preallocated batch buffer."""
        if self.be.name == "cpu":
            X.take(xb, idx)
            return
        key = ("host", xb.shape)
        stage = self._gather_bufs.get(key)
        if stage is None:
            stage = self._gather_bufs[key] = np.empty(xb.shape, dtype=self.dtype)
        X.take(stage, idx)
        xb[...] = self.be.to_device(stage)

    def _batch_buffers(self, b, X, T):
        key = (b, X.shape[1:], T.shape[1:], T.dtype)
        bufs = self._gather_bufs.get(key)
        if bufs is None:
            bufs = self._gather_bufs[key] = (self.be.empty((b,) + X.shape[1:], self.dtype),
                                             self.be.empty((b,) + T.shape[1:], T.dtype))
        return bufs

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, callbacks=None, verbose=0, test_data=None, augment=None,
            initial_epoch=0, checkpoint=None, checkpoint_every=1, resume=None):
        """Train; returns a ``History`` of per-epoch loss/accuracy (and val_*, test_*).

        ``batch_size=None`` (or >= N) is full-batch gradient descent, using X in place.
        ``augment`` (e.g. ``fm.Augment``) transforms each gathered batch on the device:
        ``augment.apply(be, xb, rng)`` in place, draws from the model's generator.
        X may be an on-disk array (``h5py.Dataset`` or any non-ndarray with shape, dtype
        and ``X[sorted int array]``): batches are read from it into the batch buffer;
        y is read whole.

        Epochs count as in Keras: epochs ``initial_epoch`` .. ``epochs - 1`` run.
        ``checkpoint=path`` writes a model file (``fm.load_model``) every
        ``checkpoint_every`` epochs, when fit ends, and on Ctrl-C. ``resume=path`` loads
        such a file (weights, optimizer state, generator, position, even mid-epoch) and
        continues to ``epochs``: on the CPU the result is bitwise that of an uninterrupted
        run. Ctrl-C stops after the current step, leaves the model consistent (the
        weights of the last completed step), writes the checkpoint, and re-raises."""
        epochs = check_count("epochs", epochs, 0)
        batch_size = check_batch_size(batch_size)
        checkpoint, checkpoint_every, resume, initial_epoch = check_checkpoint_args(
            checkpoint, checkpoint_every, resume, initial_epoch)
        if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"expected validation_split in [0, 1), got {validation_split!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"expected verbose 0, 1 or 2, got {verbose!r}")
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"expected Callback instances, got {type(cb).__name__}")
        X, T = self._prepare(X, y)
        lazy = isinstance(X, fio.LazyRows)
        if validation_split and validation_data is None:
            n_val = int(round(X.shape[0] * validation_split))
            if n_val < 1 or n_val >= X.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves {n_val} validation samples "
                                 f"of {X.shape[0]}; expected at least 1 on each side")
            if lazy:
                n_tr = X.shape[0] - n_val
                X, T, Xv, Tv = X.rows(0, n_tr), T[:-n_val], X.rows(n_tr, X.shape[0]), T[-n_val:]
                T = self.be.to_device(T)
            else:
                X, T, Xv, Tv = X[:-n_val], T[:-n_val], X[-n_val:], T[-n_val:]
                X, T = self.be.to_device(X), self.be.to_device(T)
        elif validation_data is not None:
            Xv, Tv = self._prepare(*self._pair(validation_data, "validation_data"), what="validation_data")
        else:
            Xv = Tv = None
        if test_data is not None:
            Xt, Tt = self._prepare(*self._pair(test_data, "test_data"), what="test_data")
        n = X.shape[0]
        b = n if batch_size is None else min(batch_size, n)
        full_batch = b == n and augment is None  # augmenting needs a copy: gather it
        self._check_batch_statistics(n, b)
        if lazy and full_batch:  # the whole set is one batch anyway: read it once
            X, lazy = self.be.to_device(X.read(0, n), self.dtype), False
        start = resume_position(self, resume, n, b, bool(shuffle)) if resume is not None else None
        if start is not None:
            initial_epoch = start["epoch"]
        self._gather_bufs = getattr(self, "_gather_bufs", {})
        history = History()
        cbs = [history] + callbacks
        for cb in cbs:
            cb.set_model(self)
            cb.on_train_begin()
        self.stop_training = False
        swallow = any(isinstance(cb, TerminateOnNaN) for cb in callbacks)
        be, stats = self.be, self._stats
        check_each_step = be.name == "cpu"
        progress = _Progress(verbose, epochs, n)
        # checkpoints must hold W itself, and bitwise resumption the ordinary path
        has_extras = (Xv is not None or test_data is not None or bool(callbacks)
                      or checkpoint is not None or resume is not None)
        self._gram = None
        if self.full_batch_gram and epochs > initial_epoch \
                and gram_path.eligible(self, n, full_batch, has_extras):
            self._gram = gram_path.GramFirstLayer(self, X)
        graphs = self._step_graphs(lazy, augment)
        guard = InterruptGuard()  # Ctrl-C waits for the end of the step
        saved_at = None
        try:
            with guard:
                for epoch in range(initial_epoch, epochs):
                    t0 = time.perf_counter()
                    skip, epoch_rng = 0, None
                    if start is not None and start["step"]:  # resuming in the middle of this epoch
                        skip, epoch_rng, penalty = start["step"], start["epoch_rng"], start["penalty"]
                        stats[...] = be.to_device(np.array(start["stats"], dtype=np.float64))
                    else:
                        stats[...] = 0
                        penalty = self._penalty() if self._has_reg else 0.0
                    start = None
                    pos = self._position = {"epoch": epoch, "step": 0, "n": n, "batch_size": b,
                                            "shuffle": bool(shuffle), "penalty": penalty, "epoch_rng": None}
                    if full_batch:
                        if graphs is not None and not skip:
                            self._graph_step(graphs, ("full",), lambda: self._train_step(X, T))
                        elif not skip:
                            self._checked_step(X, T, epoch, 0, check_each_step)
                        pos["step"] = 1
                        guard.check()
                    else:
                        host_order = self._epoch_order(n, shuffle, epoch_rng, pos)
                        order = be.to_device(host_order)
                        for step, first in enumerate(range(0, n, b)):
                            if step < skip:
                                continue
                            idx = order[first:first + b]
                            xb, tb = self._batch_buffers(idx.shape[0], X, T)
                            if graphs is not None:
                                self._graph_batch_step(graphs, X, T, xb, tb, idx)
                                pos["step"] = step + 1
                                guard.check()
                                continue
                            if lazy:
                                self._read_rows(xb, X, host_order[first:first + b])
                            else:
                                be.gather_rows(xb, X, idx)
                            be.gather_rows(tb, T, idx)
                            if augment is not None:
                                augment.apply(be, xb, self.rng)
                            self._checked_step(xb, tb, epoch, step, check_each_step)
                            pos["step"] = step + 1
                            guard.check()
                    self._position = {"epoch": epoch + 1, "step": 0}
                    s = be.to_host(stats)  # the one host read of the epoch
                    if not check_each_step:
                        self._check_finite(float(s[0]), epoch, "end")
                    logs = {"loss": float(s[0]) / n + penalty, "accuracy": float(s[1]) / n}
                    if Xv is not None:
                        logs.update({"val_" + k: v for k, v in self._evaluate(Xv, Tv).items()})
                    if test_data is not None:
                        logs.update({"test_" + k: v for k, v in self._evaluate(Xt, Tt).items()})
                    logs["seconds"] = time.perf_counter() - t0
                    for cb in cbs:
                        cb.on_epoch_end(epoch, logs)
                    progress.epoch(epoch, logs)
                    if checkpoint is not None and (epoch + 1) % checkpoint_every == 0:
                        self.save(checkpoint)
                        saved_at = epoch + 1
                    guard.check()
                    if self.stop_training:
                        break
                if checkpoint is not None and epochs > initial_epoch and saved_at != self._position["epoch"]:
                    self.save(checkpoint)
                    saved_at = self._position["epoch"]
        except KeyboardInterrupt:
            if int(be.to_host(self._bad)[0]):  # an update went non-finite and was not yet undone
                self._undo_last_update()
                self._position = None
            self._end_gram()
            progress.close()
            pos = self._position
            if checkpoint is not None and pos is not None and (pos["step"] or saved_at != pos["epoch"]):
                self.save(checkpoint)
            raise
        except NonFiniteLossError as e:
            self._position = None  # the undone step leaves no clean position to resume from
            e.history = history
            self._end_gram()
            progress.close()
            for cb in cbs:
                cb.on_train_end()
            if swallow:
                return history
            raise
        finally:
            self._end_gram()
        progress.close()
        for cb in cbs:
            cb.on_train_end()
        return history

    # ------------------------------------------------------------------ CUDA graphs
    def _step_graphs(self, lazy, augment):
        """A ``StepGraphs`` when this fit's steps can be replayed as CUDA graphs, else None:
        on the GPU, SGD or Adam (fixed scalars; Adam's step count lives on the device),
        data on the device, no host-drawn randomness."""
        if not (self.be.name == "cuda" and self.cuda_graphs and type(self.optimizer) in (SGD, Adam)
                and self._gram is None and augment is None and not lazy
                and all(isinstance(layer, _GRAPH_SAFE) for layer in self.layers)):
            self._graphs = None
            return None
        from .backend.cuda_graph import StepGraphs
        self._graphs = StepGraphs()  # kept after fit for inspection (captured, replays, disabled)
        return self._graphs

    @property
    def cuda_graph_info(self):
        """What the last ``fit`` did with CUDA graphs: {"captured", "replays", "disabled"}
        (disabled: why a capture was refused, else None), or None when it used none."""
        g = getattr(self, "_graphs", None)
        return None if g is None else {"captured": g.captured, "replays": g.replays,
                                       "disabled": g.disabled}

    def _graph_step(self, graphs, key, step):
        """step() through the graph of key (and of the optimizer's scalars, which a
        callback may change between epochs). A replay runs no Python and a capture runs
        it without running the launches, so the optimizer's step count is set here."""
        opt = self.optimizer
        t = opt.t
        opt.prepare_step(self.be)  # eager host work, never inside a capture
        before = graphs.captured
        graphs.run(key + tuple(sorted(opt.get_config().items())), step)
        opt.set_step(t + 1)
        if graphs.captured != before:
            graphs.keep.append([list(layer._ws.values()) for layer in self.layers])

    def _graph_batch_step(self, graphs, X, T, xb, tb, idx):
        """Gather + step of one mini-batch as a graph: the batch's indices are copied into a
        fixed buffer first, which the graph's gathers read."""
        key = ("idx", idx.shape[0])
        ib = self._gather_bufs.get(key)
        if ib is None:
            ib = self._gather_bufs[key] = self.be.empty(idx.shape, idx.dtype)
        ib.data.copy_from_device_async(idx.data, idx.nbytes)

        def step():
            self.be.gather_rows(xb, X, ib)
            self.be.gather_rows(tb, T, ib)
            self._train_step(xb, tb)
        self._graph_step(graphs, ("batch", xb.shape[0]), step)

    def _check_batch_statistics(self, n, b):
        """BatchNorm in training needs two values per feature in every batch, the last
        (partial) one included: refuse before the first step rather than in the middle."""
        smallest = n % b or b
        for i, layer in enumerate(self.layers):
            if type(layer).__name__ == "BatchNorm":
                per_sample = int(np.prod(layer.input_shape[1:])) if len(layer.input_shape) > 1 else 1
                if smallest * per_sample < 2:
                    raise ValueError(f"layer {i} ({layer!r}): expected at least 2 values per feature in every "
                                     f"training batch, got a batch of {smallest} sample(s) (N={n}, "
                                     f"batch_size={b}); choose a batch_size that does not leave 1 sample")

    def _epoch_order(self, n, shuffle, epoch_rng, pos):
        """The epoch's sample order (host int64). A resumed epoch redraws its shuffle from
        the generator state saved at its start, leaving the generator where it was."""
        if not shuffle:
            return np.arange(n, dtype=np.int64)
        if epoch_rng is None:
            pos["epoch_rng"] = self.rng.bit_generator.state
            return self.rng.permutation(n).astype(np.int64, copy=False)
        now = self.rng.bit_generator.state
        self.rng.bit_generator.state = epoch_rng
        order = self.rng.permutation(n).astype(np.int64, copy=False)
        self.rng.bit_generator.state = now
        pos["epoch_rng"] = epoch_rng
        return order

    def _end_gram(self):
        if self._gram is not None:
            self._gram.materialize()
            self._gram = None

    def _checked_step(self, xb, tb, epoch, step, check_each_step):
        before = float(self._stats[0]) if check_each_step else 0.0
        if self._gram is not None:
            self._gram_step(xb, tb)
        else:
            self._train_step(xb, tb)
        if check_each_step:
            self._check_finite(float(self._stats[0]) - before, epoch, step)

    def _check_finite(self, loss_value, epoch, step):
        bad = int(self.be.to_host(self._bad)[0])
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

    def _undo_last_update(self):
        """Back to the parameters before the last update. The optimizer state may
        hold NaN by now, so it restarts from zero (as a fresh optimizer would)."""
        self._params[...] = self._prev
        self._bad[...] = 0
        if getattr(self, "_gram", None) is not None:
            self._gram.undo()
            self._gram.b = self._gram.d = 0.0   # its momentum restarts from zero too
            self._gram.E[...] = 0
        for buf in self._state:
            buf[...] = 0
        self.optimizer.t = 0

    @staticmethod
    def _pair(data, what):
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(f"expected {what} as a pair (X, y), got {type(data).__name__}")
        return data

    def _penalty(self):
        """Keras L1/L2: sum over regularised weights of l1*|w| + l2*w^2 (a host float)."""
        self.be.reg_penalty(self._penalty_buf, self._params, *self._seg)
        extra = self._gram.l2_penalty() if getattr(self, "_gram", None) is not None else 0.0
        return float(self.be.to_host(self._penalty_buf)[0]) + extra

    # ------------------------------------------------------------------ inference
    def _evaluate(self, X, T, batch_size=None):
        be = self.be
        stats = be.zeros(2, np.float64)
        n = X.shape[0]
        b = min(n, batch_size or EVAL_BATCH)
        for start in range(0, n, b):
            xb, tb = self._rows(X, start, start + b), T[start:start + b]
            logits = self._forward(xb, False)
            self.loss.forward_backward(be, self._dlogits(xb.shape[0]), stats, logits, tb, 1.0 / n)
        s = be.to_host(stats)
        return {"loss": float(s[0]) / n + (self._penalty() if self._has_reg else 0.0),
                "accuracy": float(s[1]) / n}

    def evaluate(self, X, y, batch_size=None):
        """{"loss": mean loss + L1/L2 penalty, "accuracy": fraction correct} in evaluation mode."""
        batch_size = check_batch_size(batch_size)
        X, T = self._prepare(X, y)
        return self._evaluate(X, T, batch_size)

    def predict(self, X, batch_size=None):
        """Probabilities (sigmoid / softmax; raw outputs for MSE) as a host NumPy array."""
        batch_size = check_batch_size(batch_size)
        X, _ = self._prepare(X)
        n = X.shape[0]
        b = min(n, batch_size or EVAL_BATCH)
        out = np.empty((n,) + self.output_shape, dtype=self.dtype)
        for start in range(0, n, b):
            logits = self._forward(self._rows(X, start, start + b), False)
            probs = self._dlogits(logits.shape[0])
            self.loss.probabilities(self.be, probs, logits)
            out[start:start + b] = self.be.to_host(probs)
        return out

    def predict_classes(self, X, batch_size=None):
        p = self.predict(X, batch_size)
        return (p[:, 0] > 0.5).astype(np.int64) if p.shape[1] == 1 else np.argmax(p, axis=1)

    def loss_and_grads(self, X, y):
        """(loss, grads) at the current weights on the whole X as one batch, training mode,
        L1/L2 included; grads are host arrays aligned with ``get_weights()``. No update."""
        X, T = self._prepare(X, y)
        be = self.be
        stats = be.zeros(2, np.float64)
        n = X.shape[0]
        X = self._rows(X, 0, n)
        logits = self._forward(X, True)
        dlogits = self._dlogits(n)
        self.loss.forward_backward(be, dlogits, stats, logits, T, 1.0 / n)
        self._backward(dlogits)
        if self._has_reg:
            be.add_reg_grad(self._grads, self._params, *self._seg)
        loss = float(be.to_host(stats)[0]) / n + (self._penalty() if self._has_reg else 0.0)
        return loss, [np.array(be.to_host(g)) for layer in self.layers for g in layer.grads]

    # ------------------------------------------------------------------ weights
    def get_weights(self):
        """Trainable arrays in layer order (W then b), as host NumPy copies."""
        self._require_built()
        return [np.array(self.be.to_host(v)) for v in self._param_views]

    def set_weights(self, weights):
        """Replace every trainable array; all are checked before any is written."""
        self._require_built()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(self._param_views):
            got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise ValueError(f"expected a list of {len(self._param_views)} arrays, got {got}")
        checked = []
        for i, (w, view) in enumerate(zip(weights, self._param_views)):
            w = np.asarray(w)
            if w.dtype.kind not in "iuf":
                raise TypeError(f"expected weight {i} to be real numeric, got dtype {w.dtype}")
            if w.shape != view.shape:
                raise ValueError(f"expected weight {i} of shape {view.shape}, got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError(f"expected finite values in weight {i}, got NaN or Inf")
            check_fits_dtype(w, self.dtype, f"weight {i}")
            checked.append(w)
        for w, view in zip(checked, self._param_views):
            view[...] = self.be.to_device(w, self.dtype)

    # ------------------------------------------------------------------ files (fastmlp/io.py)
    def save(self, path):
        """Write the whole model to one file: architecture, weights, optimizer state and step
        count, generator state, layer state (BatchNorm statistics), training position.
        Atomic (a crash leaves the previous file) and checksummed; ``fm.load_model`` reads it."""
        return fio.save_model(self, path)

    def save_weights(self, path):
        """The weights only (HDF5, get_weights() order, checksummed), written atomically."""
        self._require_built()
        return fio.save_weights(self, path)

    def load_weights(self, path):
        """Weights from ``save_weights`` (or a ``save`` file); every shape is checked before
        any weight is written."""
        self._require_built()
        fio.load_weights(self, path)

    # ------------------------------------------------------------------ memory
    def memory_report(self, batch_size=32):
        """Bytes a training step at ``batch_size`` holds on the device, by part: parameters,
        gradients, undo (the parameters before the last update, to undo a non-finite step),
        optimizer_state, workspaces (layer outputs and input gradients), batch (the gathered
        inputs and targets, d loss / d logits), scratch (reductions, small arrays), total.

        Not counted: the training set (converted once to the model dtype), and the
        workspaces that a last partial batch or evaluate/predict add for their sizes."""
        self._require_built()
        n = check_batch_size(batch_size)
        if n is None:
            raise ValueError("expected batch_size to be an int >= 1, got None")
        item = np.dtype(self.dtype).itemsize
        flat = self._n_flat * item
        work = sum(_workspace_bytes(layer, n, item) for layer in self.layers)
        per_out = int(np.prod(self.output_shape))
        target = n * 8 if isinstance(self.loss, SoftmaxCrossEntropy) else n * per_out * item
        batch = n * int(np.prod(self.input_shape)) * item + target + n * per_out * item
        small = [self._stats, self._bad, self._penalty_buf, *self._seg]
        scratch = sum(int(a.nbytes) for a in small)
        if self.be.name == "cpu":  # bias-gradient partial sums, one (64, M) float64 per width
            from .backend.cpu_kernels import BIAS_GRAD_BLOCKS
            widths = {layer.out_features for layer in self.layers if isinstance(layer, Dense)}
            widths |= {w * layer.features for layer in self.layers if type(layer).__name__ == "BatchNorm"
                       for w in (1, 2)}
            widths |= {layer.out_channels for layer in self.layers          # fused conv epilogues
                       if isinstance(layer, Conv2D) and layer.pool is not None}
            scratch += sum(BIAS_GRAD_BLOCKS * w * 8 for w in widths)
        report = {"batch_size": n, "parameters": flat, "gradients": flat, "undo": flat,
                  "optimizer_state": flat * len(self._state), "workspaces": work,
                  "batch": batch, "scratch": scratch}
        report["total"] = sum(v for k, v in report.items() if k != "batch_size")
        return report

    def count_params(self):
        self._require_built()
        return int(sum(int(np.prod(s.shape)) for _, s in self._specs))

    def summary(self, print_fn=print, batch_size=32):
        """A table of layer, output shape and parameter count, and the memory of a training
        step at ``batch_size`` (``memory_report``); returns it as a str."""
        self._require_built()
        rows = [("Layer", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            n = sum(int(np.prod(s.shape)) for s in layer.param_specs())
            name = repr(layer) + (" (fused)" if getattr(layer, "fused", False) else "")
            rows.append((f"{i}: {name}", str((None,) + tuple(layer.output_shape)), f"{n:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 4)
        fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
        text = "\n".join([fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [
            line, f"Total params: {self.count_params():,}",
            f"Loss: {self.loss!r}  Optimizer: {self.optimizer!r}  Device: {self.device}  "
            f"dtype: {np.dtype(self.dtype).name}", self._memory_line(batch_size)])
        if print_fn is not None:
            print_fn(text)
        return text

    def _memory_line(self, batch_size):
        r = self.memory_report(batch_size)
        state = r["parameters"] + r["gradients"] + r["undo"] + r["optimizer_state"]
        return (f"Training memory at batch_size={r['batch_size']}: {_mib(r['total'])} "
                f"(parameters, gradients, optimizer state {_mib(state)}; "
                f"workspaces and batch {_mib(r['workspaces'] + r['batch'] + r['scratch'])})")

    def __repr__(self):
        return f"Sequential({len(self.layers)} layers, device={self.device!r}, dtype={np.dtype(self.dtype).name!r})"


def _mib(nbytes):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes} B"


def _workspace_bytes(layer, n, item):
    """Bytes of the workspaces ``layer`` holds for a training step on a batch of n.

    A layer may say itself (``workspace_nbytes(n)``); the built-in ones are known here;
    any other is assumed to keep its output and its input gradient."""
    own = getattr(layer, "workspace_nbytes", None)
    if own is not None:
        return int(own(n))
    size = lambda shape: n * int(np.prod(shape))  # noqa: E731
    out, inp = size(layer.output_shape), size(layer.input_shape)
    dx = inp if layer.needs_dx else 0
    kind = type(layer).__name__
    if getattr(layer, "fused", False) or kind == "Flatten":
        return 0
    if kind == "MaxPool2D":
        return (out + dx) * item + out * 4               # y, int32 argmax (+ dx)
    if kind == "BatchNorm":
        return (out + inp) * item + 2 * layer.features * 8   # y, dx always, mean and invstd
    if kind == "Dropout":
        return 0 if layer.rate == 0.0 else (2 * out + dx) * item   # mask, y (+ dx)
    return (out + dx) * item


class _Progress:
    """verbose=1: a tqdm bar on a terminal, else only the final line; verbose=2: a line per epoch."""

    def __init__(self, verbose, epochs, n):
        self.verbose, self.epochs, self.n = verbose, epochs, n
        self.bar, self.last = None, None
        if verbose == 1 and sys.stdout.isatty():
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=epochs, unit="epoch")
            except ImportError:
                pass

    @staticmethod
    def _fmt(epoch, logs, n):
        parts = [f"{k}={v:.4f}" for k, v in logs.items() if k != "seconds"]
        sps = n / logs["seconds"] if logs["seconds"] > 0 else float("inf")
        return f"epoch {epoch + 1}: " + " ".join(parts) + f" samples/s={sps:,.0f}"

    def epoch(self, epoch, logs):
        self.last = (epoch, logs)
        if self.verbose == 2:
            print(self._fmt(epoch, logs, self.n), flush=True)
        elif self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "seconds"})

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.verbose == 1 and self.last is not None:
            print(self._fmt(*self.last, self.n), flush=True)
