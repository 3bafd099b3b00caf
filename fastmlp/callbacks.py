"""Training history and callbacks (the Keras names and behaviour)."""
import math

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

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


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
                 restore_best_weights=False):
        patience = check_count("patience", patience, 0, "EarlyStopping")
        min_delta = abs(check_real("min_delta", min_delta, owner="EarlyStopping"))
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: expected mode 'auto', 'min' or 'max', got {mode!r}")
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping: expected monitor as a metric name (a str), got {monitor!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.restore_best_weights = restore_best_weights

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
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            for layer, state in zip(self.model.layers, self.best_states):
                if state:
                    layer.set_state(state)


class TerminateOnNaN(Callback):
    """Kept for Keras users: fastmlp always stops on a non-finite loss, keeping
    the last finite weights and raising ``NonFiniteLossError``. With this
    callback the error is swallowed and ``fit`` returns the history so far."""

    swallow = True
