"""Sequential: the layers, the loss, the optimizer, the device and the dtype.

No autograd tape: ``forward`` runs the layers in order, ``backward`` in
reverse, one call per layer. All parameters, gradients and optimizer state
live in one flat buffer each (fastmlp/params.py; layers hold views), so one
kernel launch updates everything. They exist from construction, since every
layer declares its parameter shapes; only the workspaces wait for the input
shape. After the first step of a batch size, a step allocates nothing.

The rest of a model's life lives beside it: the epoch loop in training.py,
data intake in batches.py, fusion planning in fusion.py, the file formats in
files.py and weights_file.py, the summary and memory report in summary.py.
They go through the methods here; none touches this class's private state.
"""
import os
import threading
import warnings

import numpy as np

from . import backend as backends
from . import files, summary, weights_file
from .batches import BatchBuffers, is_lazy_array, prepare_inputs, prepare_targets, rows
from .fusion import plan_fusion
from .inference import DenseChain
from .layers import LAYERS, Dense, Layer
from .losses import LOSSES, MeanSquaredError, get_loss
from .optimizers import OPTIMIZERS, SGD, get_optimizer
from .params import FlatParameters
from .preprocessing import looks_like_raw_pixels, raw_pixel_warning
from .sample_weights import check_sample_weight
from .training import Trainer
from .validation import check_batch_size, check_dtype, check_features, check_fits_dtype
from .backend.workspaces import WorkspacePool

EVAL_BATCH = 1024   # rows per forward pass of evaluate / predict when no batch_size is given
# what predict and loss_and_grads use on a model built without a loss: the raw outputs,
# differentiated through mean squared error
_RAW_OUTPUTS = MeanSquaredError()


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
            layer.check_owner(self, f"layer {i}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"expected seed to be an int >= 0 or None, got {seed!r}")
        self.dtype = check_dtype(dtype)
        self.be = backends.get_backend(device)
        self.device = self.be.name
        self.layers = list(layers)
        # no loss: predict and gradient checks work, fit and evaluate say which losses exist
        self.loss = get_loss(loss) if loss is not None else None
        self.optimizer = get_optimizer(optimizer if optimizer is not None else SGD())
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self.rng = np.random.default_rng(self.seed)
        self.stop_training = False
        # full-batch SGD on a wide first layer runs in the row space of X (fastmlp/gram.py)
        # where the backend gains by it
        self.full_batch_gram = self.be.full_batch_gram
        # on the GPU, replay eligible training steps as CUDA graphs (backend/cuda/graph.py)
        self.cuda_graphs = True
        self.step_graphs = None       # the last fit's StepGraphs, if it used them
        self.position = None          # where training stands: saved in model files, read by fit(resume=)
        self.built = False            # whether the input shape is known (workspaces can be made)
        self.input_shape = self.output_shape = None   # per sample, once built
        self._numba_thread_gemms = bool(plan_fusion(self.layers)) and bool(self.be.fused_conv_chunks)
        self._init_params()
        self._dense_chain = DenseChain.plan(self)   # how predict runs in one kernel call, or None
        # else (start, a DenseChain of the layers from start on): a CNN's head in one kernel call
        self._dense_tail = None if self._dense_chain is not None else DenseChain.plan_tail(self)
        self.stats = self.be.zeros(2, np.float64)   # the epoch's [loss sum, correct count]
        self.batch_buffers = BatchBuffers(self.be, self.dtype)
        self._model_workspaces = WorkspacePool()    # d loss / d logits and probabilities, per thread
        # inference may run in many threads at once; training excludes it (see _enter)
        self._lock = threading.Lock()
        self._inferring = 0
        self._training_thread = None
        if input_shape is None and isinstance(self.layers[0], Dense):
            input_shape = (self.layers[0].in_features,)
        if input_shape is not None:
            self.build(tuple(input_shape))

    # ------------------------------------------------------------------ building
    def _init_params(self):
        """The flat buffers, each layer bound to its views, initial values drawn in layer order."""
        be, dt = self.be, self.dtype
        for layer in self.layers:
            layer.attach(self)
            layer.rng = self.rng
            layer.be, layer.dtype = be, dt
        self.flat = FlatParameters(be, dt, [layer.param_specs() for layer in self.layers],
                                   self.optimizer.state_names)
        legacy = np.random.RandomState(self.seed)
        for i, layer in enumerate(self.layers):
            params, grads = self.flat.layer_views(i)
            layer.bind(params, grads)
            for view, value in zip(params, layer.init_params(self.rng, legacy) if params else []):
                view[...] = be.to_device(value, dt)

    def build(self, input_shape):
        """Check that the layers chain from ``input_shape`` (per sample, no N); the
        workspaces of each layer are then made at the first batch of each size."""
        shape = tuple(input_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.build(shape, self.be, self.dtype)
            except ValueError as e:
                prev = f" after layer {i - 1} ({self.layers[i - 1]!r})" if i else ""
                raise ValueError(f"layer {i}{prev}: {e}") from None
        if len(shape) != 1:
            raise ValueError(f"expected the last layer to output (N, M) logits, got (N, {shape}); add Flatten()")
        self.input_shape, self.output_shape = tuple(input_shape), shape
        self.layers[0].needs_dx = False
        for layer in self.layers[1:]:
            layer.needs_dx = True
        self.built = True
        return self

    def _require_built(self, X_shape=None):
        if not self.built:
            if X_shape is None:
                raise ValueError("the model is not built yet: call fit/predict with data or pass input_shape=")
            with self._lock:     # two threads' first predict: one builds
                if not self.built:
                    self.build(tuple(X_shape[1:]))

    # ------------------------------------------------------------------ the step
    def forward(self, x, training, layers=None):
        """Logits (N, M) of x on the device; each layer keeps what its backward needs.
        ``layers``: those of the model's layers only (x is the input of the first)."""
        self.be.use_numba_thread_gemms(self._numba_thread_gemms)
        for layer in self.layers if layers is None else layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy, first=None):
        """The layers' backward in reverse from d loss / d logits; ``first`` stands in for
        layer 0 (gram.GramFirstLayer)."""
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        (first or self.layers[0]).backward(dy)

    def _dlogits(self, n):
        return self._model_workspaces.get(self.be, "dlogits", (n,) + self.output_shape, self.dtype)

    def workspace_bytes(self):
        """Bytes of this thread's model-level workspaces (d loss / d logits)."""
        return self._model_workspaces.nbytes()

    # ------------------------------------------------------------------ threads
    # Any number of threads may call predict / predict_classes / evaluate on one model at
    # once: each thread computes in its own workspaces (fastmlp/workspaces.py) and the
    # backend's scratch is per thread too. Training writes the weights in place, so fit and
    # loss_and_grads run alone: they refuse to start while another thread is predicting, and
    # a prediction from another thread while one runs is refused (never a mix of weights).
    def _enter(self, training, hold_blas=True):
        me = threading.get_ident()
        with self._lock:
            owner = self._training_thread
            if owner is not None and owner != me:
                raise RuntimeError(f"this model is training in another thread ({owner}); expected no "
                                   f"{'training' if training else 'prediction'} from a second thread "
                                   "until fit returns (predict on a copy: fm.load_model or set_weights)")
            if training:
                if self._inferring:
                    raise RuntimeError(f"{self._inferring} prediction(s) on this model are running in other "
                                       "threads; expected none while it trains (wait for them, or train a copy)")
                self._training_thread = me
                return owner is None   # whether this call must _leave(training=True)
            if owner is None:
                self._inferring += 1
                self.be.begin_inference(hold_blas)
            return owner is None

    def _leave(self, training, hold_blas=True):
        with self._lock:
            if training:
                self._training_thread = None
            else:
                self._inferring -= 1
                self.be.end_inference(hold_blas)

    def train_step(self, xb, tb, stats, first=None, scale=None, reduce=None, weights=None):
        """Forward, fused loss + gradient, backward, one update, on a prepared batch.
        The loss sum and the correct count are added into ``stats`` (2,) on the device.
        ``first`` stands in for layer 0 (the full-batch row-space path, gram.py);
        ``weights`` (N,) float64 weighs each sample's loss (sample_weights.py).
        Data-parallel training (fastmlp/distributed) passes ``scale`` = 1 / (global batch
        size) and ``reduce``, which sums the flat gradient over the ranks before the update
        (the update kernels add the L1/L2 gradient after it, once)."""
        n = xb.shape[0]
        if first is None:
            logits = self.forward(xb, True)
        else:
            self.be.use_numba_thread_gemms(self._numba_thread_gemms)
            logits = first.forward(xb, True)
            for layer in self.layers[1:]:
                logits = layer.forward(logits, True)
        dlogits = self._dlogits(n)
        self.loss.forward_backward(self.be, dlogits, stats, logits, tb, 1.0 / n if scale is None else scale,
                                   weights)
        self.backward(dlogits, first)
        if reduce is not None:   # data-parallel: the gradient summed over the ranks
            reduce(self.flat.grads)
        self.optimizer.step(self.be, self.flat)

    # ------------------------------------------------------------------ data in
    def require_loss(self, action):
        """The model's loss; a ValueError naming the losses when it was built without one."""
        if self.loss is None:
            names = ", ".join(repr(k) for k in sorted(LOSSES))
            raise ValueError(f"{action} needs a loss, and this model has none: pass loss= to Sequential, one of "
                             f"{names}, or a Loss instance (fm.SoftmaxCrossEntropy() for classes 0..K-1 with K "
                             "outputs, fm.BinaryCrossEntropy() for 0/1 labels with one output, "
                             "fm.MeanSquaredError() for regression)")
        return self.loss

    def prepare(self, X, y=None, what="X", loss=None):
        """(X, targets) validated once and converted once to the model dtype on the device
        (fastmlp/batches.py); builds the model from X's shape if needed. An on-disk X
        comes back as ``LazyRows``. The targets are laid out for ``loss`` (default: the model's)."""
        values = True
        if not self.built:
            if len(getattr(X, "shape", ())) >= 2 and is_lazy_array(X):
                self._require_built(tuple(X.shape))
            elif not is_lazy_array(X):   # values checked first, then the shape against the layers
                X, values = check_features(X, None, what), False
                self._require_built(X.shape)
        X = prepare_inputs(self.be, X, self.input_shape, self.dtype, what, values)
        t = None
        if y is not None:
            loss = loss if loss is not None else self.require_loss("training on targets")
            t = prepare_targets(self.be, loss, X, y, self.output_shape[0], self.dtype, what)
        return X, t

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, callbacks=None, verbose="auto", test_data=None, augment=None,
            initial_epoch=0, checkpoint=None, checkpoint_every=1, resume=None, class_weight=None,
            sample_weight=None, comm=None):
        """Train; returns a ``History`` of per-epoch loss/accuracy (and val_*, test_*, lr).

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
        weights of the last completed step), writes the checkpoint, and re-raises.
        ``sample_weight`` (N,) and ``class_weight`` ({class: weight} or "balanced") weigh
        each sample's loss as Keras does (fastmlp/sample_weights.py); validation_data may
        then be (X, y, sample_weight).
        ``comm`` (``fm.distributed.init()``) trains data-parallel over its ranks, with
        ``batch_size`` the global batch (fastmlp/distributed/fit.py).
        ``verbose`` as in Keras (fastmlp/progress.py): "auto" (a bar per epoch redrawn as the
        batches run on a terminal, else a line per epoch), 0 silent, 1 bar, 2 a line per epoch.
        An epoch's ``loss`` and ``accuracy`` are running means over its batches in training
        mode (Dropout on, the weights changing), as Keras logs them; ``evaluate`` gives the
        figures of the final weights. The model needs a loss (a ValueError lists them), and
        X that looks like raw 0..255 pixels gets a warning pointing at ``fm.scale_to_unit``.
        The loop itself is fastmlp/training.py."""
        self.require_loss("fit")
        if looks_like_raw_pixels(X):   # before anything changes; once per place it is called from
            warnings.warn(raw_pixel_warning(), UserWarning, stacklevel=2)
        entered = self._enter(training=True)
        try:
            kwargs = dict(epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                          validation_data=validation_data, validation_split=validation_split,
                          callbacks=callbacks, verbose=verbose, test_data=test_data, augment=augment,
                          initial_epoch=initial_epoch, checkpoint=checkpoint,
                          checkpoint_every=checkpoint_every, resume=resume)
            if comm is not None:   # data-parallel training
                if class_weight is not None or sample_weight is not None:
                    raise ValueError("fit(comm=...): sample_weight and class_weight are not supported in "
                                     "data-parallel training yet; got "
                                     + ("class_weight" if class_weight is not None else "sample_weight"))
                from .distributed.fit import fit_data_parallel
                return fit_data_parallel(self, comm, X, y, kwargs)
            return Trainer(self, X, y, class_weight=class_weight, sample_weight=sample_weight, **kwargs).run()
        finally:
            if entered:
                self._leave(training=True)

    @property
    def cuda_graph_info(self):
        """What the last ``fit`` did with CUDA graphs: {"captured", "replays", "disabled"}
        (disabled: why a capture was refused, else None), or None when it used none."""
        g = self.step_graphs
        return None if g is None else {"captured": g.captured, "replays": g.replays,
                                       "disabled": g.disabled}

    # ------------------------------------------------------------------ inference
    def evaluate_prepared(self, X, T, batch_size=None, W=None):
        """``evaluate`` on data that ``prepare`` returned; W: per-sample weights on the device."""
        be = self.be
        stats = be.zeros(2, np.float64)
        n = X.shape[0]
        b = min(n, batch_size or EVAL_BATCH)
        for start in range(0, n, b):
            xb, tb = rows(be, X, start, start + b, self.dtype), T[start:start + b]
            wb = None if W is None else W[start:start + b]
            logits = self.forward(xb, False)
            self.loss.forward_backward(be, self._dlogits(xb.shape[0]), stats, logits, tb, 1.0 / n, wb)
        s = be.to_host(stats)
        return {"loss": float(s[0]) / n + (self.flat.penalty() if self.flat.has_reg else 0.0),
                "accuracy": float(s[1]) / n}

    def evaluate(self, X, y, batch_size=None, sample_weight=None):
        """{"loss": mean loss + L1/L2 penalty, "accuracy": fraction correct} in evaluation mode.
        ``sample_weight`` (N,) weighs each sample's loss as in fit (the accuracy is not
        weighted, as Keras's metrics). Safe to call from several threads at once."""
        batch_size = check_batch_size(batch_size)
        self.require_loss("evaluate")
        entered = self._enter(training=False)
        try:
            X, T = self.prepare(X, y)
            W = None
            if sample_weight is not None:
                W = self.be.to_device(check_sample_weight(sample_weight, X.shape[0]))
            return self.evaluate_prepared(X, T, batch_size, W)
        finally:
            if entered:
                self._leave(training=False)

    def predict(self, X, batch_size=None):
        """Probabilities (sigmoid / softmax; raw outputs for MSE and for a model without a
        loss) as a host NumPy array.
        Safe to call from several threads at once: each gets what the call gets alone."""
        chain = self._dense_chain
        if batch_size is None and chain is not None and chain.current(self) and chain.request(X, EVAL_BATCH):
            return self._predict_request(chain, X)
        batch_size = check_batch_size(batch_size)
        if chain is not None and not chain.current(self):
            chain = self._dense_chain = DenseChain.plan(self)
        # BLAS held at one thread for the prediction, unless it doesn't call BLAS
        hold_blas = chain is None or chain.uses_blas(X, batch_size or EVAL_BATCH)
        entered = self._enter(training=False, hold_blas=hold_blas)
        try:
            if chain is not None:
                return self._predict_chain(chain, X, batch_size)
            tail = self._dense_tail
            if tail is not None and not tail[1].current(self):
                tail = self._dense_tail = DenseChain.plan_tail(self)
            with self.be.prediction_call():    # on the cores if they're awake (team_wake.py)
                return self._predict(X, batch_size, tail)
        finally:
            if entered:
                self._leave(training=False, hold_blas=hold_blas)

    def _predict_request(self, chain, X):
        # a server's usual request (chain.request): one kernel call, nothing else on the way
        # (P2 at one row, in one process: 21-23 against 25 us through _predict_chain)
        plan = chain.plan_rows(X.shape[0])
        blas = plan[1]
        entered = self._enter(training=False, hold_blas=blas)
        try:
            # on the cores when it may (the chain asks for them only if it would use them)
            return chain.run(X, plan, plan[2] > 1 and self.be.inference_parallel())
        finally:
            if entered:
                self._leave(training=False, hold_blas=blas)

    def _predict_chain(self, chain, X, batch_size):
        # every layer in one kernel call per batch (fastmlp/inference.py); a server's usual
        # request (chain.takes) goes straight to the kernel, which checks its values
        read = None
        if not chain.takes(X):
            X = self.prepare(X)[0]
            if isinstance(X, np.ndarray):
                X = np.ascontiguousarray(X)
            else:                     # on disk (LazyRows): read batch by batch
                read = lambda start, stop: np.ascontiguousarray(rows(self.be, X, start, stop, self.dtype))  # noqa: E731
        self.be.use_numba_thread_gemms(False)   # whose threads run this thread's GEMMs: not Numba's
        batch = batch_size or EVAL_BATCH
        parallel = chain.blocks(min(X.shape[0], batch)) > 1 and self.be.inference_parallel()
        return chain.predict(X, batch, parallel, read)

    def _predict(self, X, batch_size, tail=None):
        # layer by layer; ``tail``: plan_tail's (start, chain), the layers from start on in
        # the chain's one kernel call (unless what reaches them holds a NaN or Inf)
        be = self.be
        X, _ = self.prepare(X)
        n = X.shape[0]
        b = min(n, batch_size or EVAL_BATCH)
        out = np.empty((n,) + self.output_shape, dtype=self.dtype)
        outputs = self.loss if self.loss is not None else _RAW_OUTPUTS
        for start in range(0, n, b):
            xb = rows(be, X, start, start + b, self.dtype)
            if tail is None:
                logits = self.forward(xb, False)
            else:
                h = self.forward(xb, False, self.layers[:tail[0]])
                if tail[1].finish(out[start:start + h.shape[0]], h, be.inference_parallel()):
                    continue
                logits = self.forward(h, False, self.layers[tail[0]:])
            if be.host_arrays:   # straight into the result
                outputs.probabilities(be, out[start:start + logits.shape[0]], logits)
            else:
                probs = self._dlogits(logits.shape[0])
                outputs.probabilities(be, probs, logits)
                out[start:start + b] = be.to_host(probs)
        return out

    def predict_classes(self, X, batch_size=None):
        p = self.predict(X, batch_size)
        return (p[:, 0] > 0.5).astype(np.int64) if p.shape[1] == 1 else np.argmax(p, axis=1)

    def loss_and_grads(self, X, y):
        """(loss, grads) at the current weights on the whole X as one batch, training mode,
        L1/L2 included; grads are host arrays aligned with ``get_weights()``. No update.
        A model without a loss is differentiated through mean squared error against y (a
        gradient check of its layers).
        Runs alone, as fit does (it writes the gradient buffers and the layers' state)."""
        entered = self._enter(training=True)
        try:
            return self._loss_and_grads(X, y)
        finally:
            if entered:
                self._leave(training=True)

    def _loss_and_grads(self, X, y):
        loss = self.loss if self.loss is not None else _RAW_OUTPUTS
        X, T = self.prepare(X, y, loss=loss)
        be, flat = self.be, self.flat
        stats = be.zeros(2, np.float64)
        n = X.shape[0]
        logits = self.forward(rows(be, X, 0, n, self.dtype), True)
        dlogits = self._dlogits(n)
        loss.forward_backward(be, dlogits, stats, logits, T, 1.0 / n)
        self.backward(dlogits)
        if flat.has_reg:
            flat.add_reg_grad()
        loss = float(be.to_host(stats)[0]) / n + (flat.penalty() if flat.has_reg else 0.0)
        return loss, [np.array(be.to_host(g)) for g in flat.grad_views]

    # ------------------------------------------------------------------ weights
    def get_weights(self):
        """Trainable arrays in layer order (W then b), as host NumPy copies."""
        return [np.array(self.be.to_host(v)) for v in self.flat.param_views]

    def set_weights(self, weights):
        """Replace every trainable array; all are checked before any is written."""
        views = self.flat.param_views
        if not isinstance(weights, (list, tuple)) or len(weights) != len(views):
            got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise ValueError(f"expected a list of {len(views)} arrays, got {got}")
        checked = []
        for i, (w, view) in enumerate(zip(weights, views)):
            w = np.asarray(w)
            if w.dtype.kind not in "iuf":
                raise TypeError(f"expected weight {i} to be real numeric, got dtype {w.dtype}")
            if w.shape != view.shape:
                raise ValueError(f"expected weight {i} of shape {view.shape}, got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError(f"expected finite values in weight {i}, got NaN or Inf")
            check_fits_dtype(w, self.dtype, f"weight {i}")
            checked.append(w)
        for w, view in zip(checked, views):
            view[...] = self.be.to_device(w, self.dtype)

    def count_params(self):
        return self.flat.count()

    # ------------------------------------------------------------------ state
    def get_config(self):
        """The architecture as JSON-ready data: layers (registered class name + get_config),
        input shape, loss, optimizer (+ the names of its state buffers), dtype, device, seed."""
        if not self.built:
            raise ValueError("expected a built model (call fit/predict once or pass input_shape=), "
                             "got an unbuilt one")
        opt = _class_entry(self.optimizer, _by_class_name(OPTIMIZERS), "optimizer")
        opt["state_names"] = list(self.optimizer.state_names)
        return {
            "layers": [_class_entry(layer, LAYERS, f"layer {i}") for i, layer in enumerate(self.layers)],
            "input_shape": list(self.input_shape),
            "loss": None if self.loss is None else _class_entry(self.loss, _by_class_name(LOSSES), "loss"),
            "optimizer": opt,
            "dtype": np.dtype(self.dtype).name,
            "device": self.device,
            "seed": int(self.seed),
        }

    @classmethod
    def from_config(cls, config, device=None, source="config"):
        """A new model of the architecture ``get_config`` described (fresh weights).
        ``device`` overrides the saved one."""
        def make(entry, registry, what, factory):
            kind = registry.get(entry.get("class"))
            if kind is None:
                raise ValueError(f"{source}: unknown {what} class {entry.get('class')!r}; expected one of "
                                 f"{sorted(registry)} (a custom class must be registered before load_model)")
            try:
                return factory(kind, entry.get("config", {}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: cannot rebuild {what} {entry.get('class')}: {e}") from None

        layers = [make(e, LAYERS, f"layer {i}", lambda c, cfg: c.from_config(cfg))
                  for i, e in enumerate(config["layers"])]
        loss = None if config["loss"] is None else \
            make(config["loss"], _by_class_name(LOSSES), "loss", lambda c, cfg: c(**cfg))
        opt = make(config["optimizer"], _by_class_name(OPTIMIZERS), "optimizer", lambda c, cfg: c(**cfg))
        try:
            model = cls(layers, loss=loss, optimizer=opt, device=device or config["device"],
                        dtype=config["dtype"], seed=config["seed"], input_shape=tuple(config["input_shape"]))
        except (ImportError, RuntimeError) as e:
            if device is not None:
                raise
            raise type(e)(f"{source} was saved on device {config['device']!r}: {e}; "
                          "pass load_model(path, device='cpu') to load it here") from e
        if model.get_config()["layers"] != config["layers"]:
            raise ValueError(f"{source}: the rebuilt layers do not describe themselves as the file does; "
                             "a layer's get_config/from_config do not round-trip")
        return model

    def state_dict(self):
        """Everything a model file holds, as host data: {"architecture": get_config(),
        "weights": get_weights(), "optimizer": {"step", "state": {name: arrays aligned with
        the weights}}, "layer_state": {layer index: get_state()}, "rng": the generator's
        state, "training": where training stands (None before any fit)}."""
        arch = self.get_config()
        be = self.be
        opt = dict(self.optimizer.state_dict())
        opt["state"] = {name: [np.array(be.to_host(v)) for v in self.flat.state_views(k)]
                        for k, name in enumerate(self.optimizer.state_names)}
        layer_state = {i: {k: np.asarray(v) for k, v in layer.get_state().items()}
                       for i, layer in enumerate(self.layers) if layer.get_state()}
        training = None
        if self.position is not None:
            training = dict(self.position)
            if training.get("step", 0):   # mid-epoch: the epoch's running sums too
                training["stats"] = [float(s) for s in np.asarray(be.to_host(self.stats))]
        return {"architecture": arch, "weights": self.get_weights(), "optimizer": opt,
                "layer_state": layer_state, "rng": self.rng.bit_generator.state, "training": training}

    def load_state_dict(self, state, source="state_dict"):
        """Write a ``state_dict`` into this model (same architecture): everything is checked
        first, then written (all or nothing). The optimizer's hyperparameters (lr, ...) stay
        as they are. ``source`` names where the state came from in error messages."""
        self._check_compatible(state["architecture"], source)
        plan = []  # (destination view, host array)

        def take(a, dest, what):
            a = np.asarray(a)
            if a.shape != tuple(dest.shape):
                raise ValueError(f"{source}: expected {what} of shape {tuple(dest.shape)}, got {a.shape}")
            plan.append((dest, a))

        views = self.flat.param_views
        if len(state["weights"]) != len(views):
            raise ValueError(f"{source}: expected {len(views)} weight arrays, got {len(state['weights'])}")
        for k, (a, v) in enumerate(zip(state["weights"], views)):
            take(a, v, f"weight {k}")
        names = list(self.optimizer.state_names)
        got = state["optimizer"]["state"]
        if sorted(got) != sorted(names):
            raise ValueError(f"{source}: expected optimizer state {names}, got {sorted(got)}")
        for k, name in enumerate(names):
            if len(got[name]) != len(views):
                raise ValueError(f"{source}: expected {len(views)} arrays of optimizer state {name}, "
                                 f"got {len(got[name])}")
            for j, (a, v) in enumerate(zip(got[name], self.flat.state_views(k))):
                take(a, v, f"optimizer state {name} of weight {j}")
        layer_states = {}
        saved_states = {int(i): s for i, s in state["layer_state"].items()}
        for i, layer in enumerate(self.layers):
            want, have = layer.get_state(), saved_states.get(i, {})
            if sorted(want) != sorted(have):
                raise ValueError(f"{source}: layer {i} ({layer!r}): expected state {sorted(want)}, got {sorted(have)}")
            for key, a in have.items():
                if np.shape(a) != np.shape(want[key]):
                    raise ValueError(f"{source}: layer {i} state {key!r}: expected shape {np.shape(want[key])}, "
                                     f"got {np.shape(a)}")
            if have:
                layer_states[i] = have
        step = state["optimizer"].get("step")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"{source}: expected an optimizer step count >= 0, got {step!r}")
        probe = np.random.default_rng()
        try:
            probe.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source}: expected the state of a {type(self.rng.bit_generator).__name__} "
                             f"generator, got {str(state['rng'])[:80]} ({e})") from None
        # everything checked: write
        for dest, a in plan:
            dest[...] = self.be.to_device(a, self.dtype)
        self.optimizer.load_state_dict({"step": int(step)})
        for i, st in layer_states.items():
            self.layers[i].set_state(st)
        self.rng.bit_generator.state = state["rng"]   # in place: the layers share this generator
        self.flat.mark_restored()
        self.seed = int(state["architecture"]["seed"])
        self.position = state.get("training")

    def _check_compatible(self, arch, source):
        """ValueError unless ``arch`` (from a file) describes this model's layers and optimizer."""
        mine = self.get_config()
        for key in ("input_shape", "dtype"):
            if mine[key] != arch[key]:
                raise ValueError(f"{source}: expected a file of a model with {key} {mine[key]}, got {arch[key]}")
        if len(mine["layers"]) != len(arch["layers"]):
            raise ValueError(f"{source}: expected a file of a model with {len(mine['layers'])} layers, "
                             f"got {len(arch['layers'])}")
        for i, (a, b) in enumerate(zip(mine["layers"], arch["layers"])):
            if a != b:
                raise ValueError(f"{source}: layer {i}: expected {a['class']}{a['config']}, "
                                 f"got {b['class']}{b['config']}")
        if mine["optimizer"]["class"] != arch["optimizer"]["class"]:
            raise ValueError(f"{source}: expected optimizer state of {mine['optimizer']['class']}, "
                             f"got {arch['optimizer']['class']}")

    # ------------------------------------------------------------------ files
    def save(self, path):
        """Write the whole model to one file: architecture, weights, optimizer state and step
        count, generator state, layer state (BatchNorm statistics), training position.
        Atomic (a crash leaves the previous file) and checksummed; ``fm.load_model`` reads it."""
        return files.write_model_file(path, self.state_dict())

    def save_weights(self, path):
        """The weights only (HDF5, get_weights() order, checksummed), written atomically."""
        names = [f"{i}:{type(layer).__name__}:{s.name}" for i, layer in enumerate(self.layers)
                 for s in layer.param_specs()]
        return weights_file.write_weights_file(path, self.get_weights(), names, self.dtype)

    def load_weights(self, path):
        """Weights from ``save_weights`` (or a ``save`` file); every shape is checked before
        any weight is written."""
        weights = weights_file.read_weights_file(path)
        expected = [tuple(v.shape) for v in self.flat.param_views]
        if len(weights) != len(expected):
            raise ValueError(f"{os.fspath(path)}: expected {len(expected)} weight arrays for this model, "
                             f"got {len(weights)}")
        for k, (w, shape) in enumerate(zip(weights, expected)):
            if w.shape != shape:
                raise ValueError(f"{os.fspath(path)}: expected weight {k} of shape {shape}, got {w.shape}")
        self.set_weights(weights)

    def to_onnx(self, path, **kw):
        """Write this model as an ONNX file: ``fastmlp.export_onnx(self, path, **kw)``."""
        from .export_onnx import export_onnx
        return export_onnx(self, path, **kw)

    # ------------------------------------------------------------------ summary (summary.py)
    def memory_report(self, batch_size=32):
        """Bytes a training step at ``batch_size`` holds on the device, by part: parameters,
        gradients, undo (the parameters before the last update, to undo a non-finite step),
        optimizer_state, workspaces (layer outputs and input gradients), batch (the gathered
        inputs and targets, d loss / d logits), scratch (reductions, small arrays), total.

        Not counted: the training set (converted once to the model dtype), and the
        workspaces that a last partial batch or evaluate/predict add for their sizes."""
        self._require_built()
        return summary.memory_report(self, batch_size)

    def summary(self, print_fn=print, batch_size=32):
        """A table of layer, output shape and parameter count, and the memory of a training
        step at ``batch_size`` (``memory_report``); returns it as a str. Output shapes and
        memory are shown once the input shape is known."""
        return summary.summary(self, print_fn, batch_size)

    def __repr__(self):
        return f"Sequential({len(self.layers)} layers, device={self.device!r}, dtype={np.dtype(self.dtype).name!r})"


def load_model(path, device=None):
    """The model saved at ``path`` by ``model.save``: same layers, weights, optimizer state,
    generator state, layer state and training position. ``device`` overrides the
    saved one ("cpu", "cuda", "auto"); the dtype is the saved one."""
    state = files.read_model_file(path)
    source = os.fspath(path)
    try:
        model = Sequential.from_config(state["architecture"], device=device, source=source)
        model.load_state_dict(state, source=source)
    except KeyError as e:
        raise ValueError(f"{source} is not a complete fastmlp model file: missing {e}") from None
    return model


def _by_class_name(registry):
    return {kind.__name__: kind for kind in registry.values()}


def _class_entry(obj, registry, what):
    name = type(obj).__name__
    if registry.get(name) is not type(obj):
        raise ValueError(f"cannot save {what} {obj!r}: expected one of the classes load_model knows "
                         f"{sorted(registry)}, got {type(obj).__module__}.{name} (register it first)")
    return {"class": name, "config": files.jsonable(obj.get_config(), f"{what} {obj!r}")}
