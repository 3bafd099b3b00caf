"""What ``fit`` prints while it trains (its ``verbose`` argument, as in Keras).

    verbose=0       nothing
    verbose=1       on a terminal, a bar per epoch redrawn as the batches run (samples/s,
                    time left, the running loss and accuracy), then the epoch's line;
                    elsewhere (a file, a pipe, a notebook's captured output) the line only
    verbose=2       one line per epoch
    verbose="auto"  1 on a terminal, else 2 (the default)

The bar costs the step almost nothing: ``tick`` counts batches and reads the clock only
every ``every`` batches (``every`` adapts so that the clock is read about every 10 ms),
and redraws at most ten times a second. A redraw reads the epoch's running sums from the
device (a synchronisation on the GPU, at most ten a second).

An epoch's ``loss`` and ``accuracy`` are means over the epoch's batches, each taken in
training mode (Dropout on, augmentation applied) with the weights of that moment, as
Keras reports them; ``evaluate`` after training gives the final weights' figures, which
differ.
"""
import sys
import time

from .callbacks import Callback

BAR_WIDTH = 24
REDRAW_S = 0.1          # at most ten redraws a second
CLOCK_S = 0.01          # read the clock about this often


def resolve_verbose(verbose, stream=None):
    """0, 1 or 2 from fit's ``verbose`` ("auto": 1 on a terminal, else 2)."""
    if isinstance(verbose, str) and verbose == "auto":
        stream = stream or sys.stdout
        return 1 if _isatty(stream) else 2
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"expected verbose 'auto', 0, 1 or 2, got {verbose!r}")
    return int(verbose)


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # a closed or file-less stream
        return False


def epoch_line(epoch, logs, n):
    """'epoch 3: loss=0.4120 accuracy=0.8400 val_loss=... lr=0.001 samples/s=12,345' (from 1)."""
    parts = [f"{k}={v:.4g}" if k == "lr" else f"{k}={v:.4f}" for k, v in logs.items() if k != "seconds"]
    sps = n / logs["seconds"] if logs.get("seconds", 0) > 0 else float("inf")
    return f"epoch {epoch + 1}: " + " ".join(parts) + f" samples/s={sps:,.0f}"


def _duration(seconds):
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


class Progress(Callback):
    """fit's output (the last callback): see the module's docstring. ``verbose`` is already
    0, 1 or 2 (``resolve_verbose``); ``tick`` is None unless a bar is drawn."""

    def __init__(self, verbose, epochs, n, steps_per_epoch):
        self.verbose, self.epochs, self.n = verbose, epochs, n
        self.live = verbose == 1 and _isatty(sys.stdout) and steps_per_epoch > 1
        self.tick = self._tick if self.live else None
        self.last, self.closed, self.width = None, False, 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.live:
            self.epoch = epoch
            self.start = self.checked = time.perf_counter()
            self.drawn = self.start
            self.every = self.countdown = 1

    def _tick(self, seen):
        """After each step of a batch-wise epoch: ``seen`` samples of the epoch done."""
        self.countdown -= 1
        if self.countdown:
            return
        now = time.perf_counter()
        gap, self.checked = now - self.checked, now
        if gap < CLOCK_S / 2:
            self.every = min(2 * self.every, 1 << 16)
        elif gap > 2 * CLOCK_S and self.every > 1:
            self.every //= 2
        self.countdown = self.every
        if now - self.drawn >= REDRAW_S and seen < self.n:
            self.drawn = now
            self._draw(seen, now)

    def _draw(self, seen, now):
        stats = self.model.be.to_host(self.model.stats)   # the epoch's running sums
        elapsed = now - self.start
        rate = seen / elapsed if elapsed > 0 else 0.0
        left = (self.n - seen) / rate if rate > 0 else 0.0
        done = BAR_WIDTH * seen // self.n
        bar = "=" * done + (">" if done < BAR_WIDTH else "") + "." * (BAR_WIDTH - done - 1)
        text = (f"epoch {self.epoch + 1}/{self.epochs} [{bar}] {seen}/{self.n} {rate:,.0f} samples/s "
                f"ETA {_duration(left)} loss={float(stats[0]) / seen:.4f} accuracy={float(stats[1]) / seen:.4f}")
        self._write("\r" + text.ljust(self.width))
        self.width = len(text)

    def _write(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()

    def on_epoch_end(self, epoch, logs=None):
        self.last = (epoch, logs)
        if self.verbose == 0:
            return
        line = epoch_line(epoch, logs, self.n)
        if self.live:
            self._write("\r" + line.ljust(self.width) + "\n")
            self.width = 0
        else:
            print(line, flush=True)

    def on_train_end(self, logs=None):
        if self.closed:
            return
        self.closed = True
        if self.live and self.width:   # stopped mid-epoch (Ctrl-C, a non-finite loss): end the bar's line
            self._write("\n")
            self.width = 0
