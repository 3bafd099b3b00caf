"""Training history and callbacks (the Keras names and behaviour).

fit calls, on every callback: ``on_train_begin``, then per epoch ``on_epoch_begin`` and
``on_epoch_end(epoch, logs)``, then ``on_train_end``. The batch-level hooks
``on_train_batch_begin(batch, logs)`` / ``on_train_batch_end(batch, logs)`` are called
only on the callbacks whose class (or instance, for LambdaCallback) defines them,
decided once per fit: without one, a step pays nothing for them. A batch-end hook's
logs hold the mean loss and accuracy of the epoch so far, which costs a host read of
the device's running sums (a synchronisation on the GPU).
"""
import csv
import math
import os

from .validation import check_count, check_real


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf; the model kept its last finite weights."""

    def __init__(self, message, epoch, step, history=None):
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


class Callback:
    """Base class. A callback that reads a metric names it in ``monitor`` (or overrides
    ``check_logs``): fit then checks it against the keys it will log before the first step."""
    model = None

    def set_model(self, model):
        self.model = model

    def check_logs(self, keys):
        """ValueError unless what this callback monitors is among ``keys``, the metrics fit
        will log each epoch (called by fit before anything changes)."""
        monitor = getattr(self, "monitor", None)
        if monitor is not None and monitor not in keys:
            raise ValueError(f"{type(self).__name__}: expected monitor to be a metric that fit logs, one of "
                             f"{list(keys)}, got {monitor!r} (val_* needs validation_data or "
                             "validation_split, test_* needs test_data)")

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


def overrides(cb, hook):
    """Whether callback ``cb`` does something at ``hook``: its class overrides the base
    method, or the instance holds its own (LambdaCallback)."""
    return getattr(type(cb), hook) is not getattr(Callback, hook) or hook in vars(cb)


def _mode(owner, mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: expected mode 'auto', 'min' or 'max', got {mode!r}")
    if not isinstance(monitor, str):
        raise TypeError(f"{owner}: expected monitor as a metric name (a str), got {monitor!r}")
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    return mode


class History(Callback):
    """Per-epoch metrics: ``h.history["loss"]``, ``h["val_accuracy"]``, ``h.epoch``."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def keys(self):
        return self.history.keys()

    def __repr__(self):
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the model ends with exactly the weights of
    its best epoch, and the layer state of that epoch (BatchNorm running
    statistics), as Keras restores them with the weights."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, verbose=0):
        patience = check_count("patience", patience, 0, "EarlyStopping")
        min_delta = abs(check_real("min_delta", min_delta, owner="EarlyStopping"))
        self.mode = _mode("EarlyStopping", mode, monitor)
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.restore_best_weights = restore_best_weights
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_epoch, self.best_weights, self.stopped_epoch = 0, None, None, None
        self.best_states = None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping: expected metric {self.monitor!r} in the epoch logs, "
                             f"got {sorted(logs)} (pass validation_data for val_* metrics)")
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
                # the running statistics evaluation uses belong with these weights
                self.best_states = [layer.get_state() for layer in self.model.layers]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        # epochs are numbered from 1 in what is printed, as Keras prints them
        if self.verbose and self.stopped_epoch is not None:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping ({self.monitor} did not improve for "
                  f"{self.patience} epoch(s))", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            for layer, state in zip(self.model.layers, self.best_states):
                if state:
                    layer.set_state(state)
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1} "
                      f"({self.monitor}={self.best:.6g}).", flush=True)


class TerminateOnNaN(Callback):
    """Kept for Keras users: fastmlp always stops on a non-finite loss, keeping
    the last finite weights and raising ``NonFiniteLossError``. With this
    callback the error is swallowed and ``fit`` returns the history so far."""

    swallow = True


class ModelCheckpoint(Callback):
    """Keras's ModelCheckpoint: at the end of each epoch, write the model (``model.save``, or
    ``save_weights`` with ``save_weights_only``) to ``path``, formatted with the epoch (from 1)
    and the logs as Keras does: ``"ckpt-{epoch:02d}-{val_loss:.3f}.fmlp"``. With
    ``save_best_only`` only when ``monitor`` improved on its best so far (``mode`` as in
    EarlyStopping). Every write is atomic: a crash leaves the previous file whole."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto", save_weights_only=False,
                 verbose=0):
        self.path = os.fspath(path)
        self.mode = _mode("ModelCheckpoint", mode, monitor)
        self.monitor = monitor
        self.save_best_only, self.save_weights_only = bool(save_best_only), bool(save_weights_only)
        self.verbose = verbose
        self.best = None

    def check_logs(self, keys):
        # the monitor only matters when it decides what is saved
        if self.save_best_only:
            super().check_logs(keys)
        try:   # a path that names a key fit never logs fails now, not after the first epoch
            self.path.format(epoch=1, **{k: 0.0 for k in keys})
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: expected a path whose {{...}} fields are epoch or logged metrics "
                             f"{list(keys)}, got {self.path!r} ({type(e).__name__}: {e})") from None

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = logs[self.monitor]
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}", flush=True)


class ReduceLROnPlateau(Callback):
    """Keras's ReduceLROnPlateau: when ``monitor`` has not improved by ``min_delta`` for
    ``patience`` epochs, multiply the optimizer's rate by ``factor`` (not below ``min_lr``),
    then wait ``cooldown`` epochs before counting again. Needs a number as the rate, not a
    schedule."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        owner = "ReduceLROnPlateau"
        self.factor = check_real("factor", factor, 0.0, 1.0, lo_open=True, hi_open=True, owner=owner)
        self.patience = check_count("patience", patience, 0, owner)
        self.cooldown = check_count("cooldown", cooldown, 0, owner)
        self.min_delta = abs(check_real("min_delta", min_delta, owner=owner))
        self.min_lr = check_real("min_lr", min_lr, 0.0, owner=owner)
        self.mode = _mode(owner, mode, monitor)
        self.monitor, self.verbose = monitor, verbose

    def on_train_begin(self, logs=None):
        if getattr(self.model.optimizer, "schedule", None) is not None:
            raise ValueError(f"ReduceLROnPlateau: expected an optimizer with a number as its rate, got the "
                             f"schedule {self.model.optimizer.schedule!r}")
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_counter = 0

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {})[self.monitor]
        opt = self.model.optimizer
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience and opt.lr > self.min_lr:
                new = max(opt.lr * self.factor, self.min_lr)
                if new > 0:
                    opt.lr = new
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:.6g}.", flush=True)
                self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """Keras's LearningRateScheduler: before each epoch, the optimizer's rate becomes
    ``schedule(epoch, lr)`` (epoch from 0, lr the current rate), checked (finite, > 0)."""

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: expected a callable schedule(epoch, lr), got {schedule!r}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        rate = self.schedule(epoch, opt.lr)
        try:
            opt.lr = rate
        except ValueError as e:
            raise ValueError(f"LearningRateScheduler: {self.schedule!r} returned {rate!r} for epoch {epoch}: {e}; "
                             "no weight was changed") from None
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {opt.lr:.6g}.", flush=True)


class CSVLogger(Callback):
    """Keras's CSVLogger: one row per epoch (epoch from 0, then the logged metrics in sorted
    order) written to ``path`` and flushed; ``append`` adds to an existing file (no second
    header)."""

    def __init__(self, path, separator=",", append=False):
        self.path, self.separator, self.append = os.fspath(path), separator, bool(append)
        self.file = self.writer = self.keys = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        self.header = not exists
        self.file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")
        self.keys = self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            self.writer = csv.DictWriter(self.file, fieldnames=["epoch"] + self.keys, delimiter=self.separator)
            if self.header:
                self.writer.writeheader()
        self.writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self.keys}})
        self.file.flush()

    def on_train_end(self, logs=None):
        if self.file is not None:
            self.file.close()
            self.file = None


class LambdaCallback(Callback):
    """Keras's LambdaCallback: a callback of plain functions, ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_batch_begin(batch, logs)``,
    ``on_train_batch_end(batch, logs)``, ``on_train_begin(logs)``, ``on_train_end(logs)``;
    those not given do nothing (and batch hooks not given cost nothing)."""

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
             "on_train_batch_end")

    def __init__(self, **hooks):
        for name, fn in hooks.items():
            if name not in self.HOOKS:
                raise TypeError(f"LambdaCallback: expected hooks among {list(self.HOOKS)}, got {name!r}")
            if not callable(fn):
                raise TypeError(f"LambdaCallback: expected {name} to be callable, got {fn!r}")
            if name in ("on_train_begin", "on_train_end"):
                hook = lambda logs=None, _fn=fn: _fn(logs if logs is not None else {})  # noqa: E731
            else:
                hook = lambda i, logs=None, _fn=fn: _fn(i, logs if logs is not None else {})  # noqa: E731
            setattr(self, name, hook)
