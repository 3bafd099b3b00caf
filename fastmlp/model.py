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
from .callbacks import Callback, History, NonFiniteLossError, TerminateOnNaN
from .layers import Activation, Dense, Layer
from .losses import Loss, get_loss
from .optimizers import SGD, get_optimizer
from .validation import (check_batch_size, check_count, check_dtype, check_features,
                         check_same_length)

_ALIGN = 16  # elements: every parameter starts on a 64-byte boundary (float32)
EVAL_BATCH = 1024


class Sequential:
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
        # full-batch SGD on a wide first layer runs in the row space of X (fastmlp/gram.py)
        self.full_batch_gram = True
        self.built = False
        self._stats = None
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
        self._stats = be.zeros(2, np.float64)
        self._penalty_buf = be.zeros(1, np.float64)
        self.built = True
        return self

    def _plan_fusion(self):
        """Fuse an activation that directly follows a Dense into the Dense's kernel."""
        for layer in self.layers:
            if isinstance(layer, Activation):
                layer.fused = False
            if isinstance(layer, Dense):
                layer.act_code, layer.alpha = 0, 0.0
        for prev, layer in zip(self.layers, self.layers[1:]):
            if isinstance(prev, Dense) and isinstance(layer, Activation) and prev.act_code == 0:
                prev.act_code, prev.alpha, layer.fused = layer.code, layer.alpha, True

    def _require_built(self, X_shape=None):
        if not self.built:
            if X_shape is None:
                raise ValueError("the model is not built yet: call fit/predict with data or pass input_shape=")
            self.build(tuple(X_shape[1:]))

    # ------------------------------------------------------------------ the step
    def _forward(self, x, training):
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
        """Validate once; convert once to the model dtype on the device."""
        X = check_features(X, self.input_shape if self.built else None, what)
        self._require_built(X.shape)
        X = check_features(X, self.input_shape, what)
        t = None
        if y is not None:
            check_same_length(X, y, "y" if what == "X" else f"labels of {what}")
            t = self.be.to_device(self.loss.prepare(y, self.output_shape[0], self.dtype))
        return self.be.to_device(X, self.dtype), t

    def _batch_buffers(self, b, X, T):
        key = (b, X.shape[1:], T.shape[1:], T.dtype)
        bufs = self._gather_bufs.get(key)
        if bufs is None:
            bufs = self._gather_bufs[key] = (self.be.empty((b,) + X.shape[1:], self.dtype),
                                             self.be.empty((b,) + T.shape[1:], T.dtype))
        return bufs

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, callbacks=None, verbose=0, test_data=None, augment=None):
        """Train; returns a ``History`` of per-epoch loss/accuracy (and val_*, test_*).

        ``batch_size=None`` (or >= N) is full-batch gradient descent, using X in place.
        ``augment`` (e.g. ``fm.Augment``) transforms each gathered batch on the device:
        ``augment.apply(be, xb, rng)`` in place, draws from the model's generator."""
        epochs = check_count("epochs", epochs, 0)
        batch_size = check_batch_size(batch_size)
        if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"expected validation_split in [0, 1), got {validation_split!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"expected verbose 0, 1 or 2, got {verbose!r}")
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"expected Callback instances, got {type(cb).__name__}")
        X, T = self._prepare(X, y)
        if validation_split and validation_data is None:
            n_val = int(round(X.shape[0] * validation_split))
            if n_val < 1 or n_val >= X.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves {n_val} validation samples "
                                 f"of {X.shape[0]}; expected at least 1 on each side")
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
        has_extras = Xv is not None or test_data is not None or bool(callbacks)
        self._gram = None
        if self.full_batch_gram and epochs and gram_path.eligible(self, n, full_batch, has_extras):
            self._gram = gram_path.GramFirstLayer(self, X)
        try:
            for epoch in range(epochs):
                t0 = time.perf_counter()
                stats[...] = 0
                penalty = self._penalty() if self._has_reg else 0.0
                if full_batch:
                    self._checked_step(X, T, epoch, 0, check_each_step)
                else:
                    order = self.rng.permutation(n) if shuffle else np.arange(n)
                    order = be.to_device(order.astype(np.int64))
                    for step, start in enumerate(range(0, n, b)):
                        idx = order[start:start + b]
                        xb, tb = self._batch_buffers(idx.shape[0], X, T)
                        be.gather_rows(xb, X, idx)
                        be.gather_rows(tb, T, idx)
                        if augment is not None:
                            augment.apply(be, xb, self.rng)
                        self._checked_step(xb, tb, epoch, step, check_each_step)
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
                if self.stop_training:
                    break
        except NonFiniteLossError as e:
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
            xb, tb = X[start:start + b], T[start:start + b]
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
            logits = self._forward(X[start:start + b], False)
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
            if w.dtype == object or not np.issubdtype(w.dtype, np.number):
                raise TypeError(f"expected weight {i} to be numeric, got dtype {w.dtype}")
            if w.shape != view.shape:
                raise ValueError(f"expected weight {i} of shape {view.shape}, got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError(f"expected finite values in weight {i}, got NaN or Inf")
            checked.append(w)
        for w, view in zip(checked, self._param_views):
            view[...] = self.be.to_device(w, self.dtype)

    def count_params(self):
        self._require_built()
        return int(sum(int(np.prod(s.shape)) for _, s in self._specs))

    def summary(self, print_fn=print):
        """A table of layer, output shape and parameter count; returns it as a str."""
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
            f"dtype: {np.dtype(self.dtype).name}"])
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self):
        return f"Sequential({len(self.layers)} layers, device={self.device!r}, dtype={np.dtype(self.dtype).name!r})"


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
