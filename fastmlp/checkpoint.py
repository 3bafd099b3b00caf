"""Checkpoints during fit, resuming, and Ctrl-C that never cuts a step in half.

A checkpoint is an ordinary model file (fastmlp/files.py) whose header also
holds the training position: the next epoch, the steps already done in it
and, for a mid-epoch position, the generator state at the epoch's start (to
redraw the same shuffle) and the epoch's running loss/accuracy sums. Resuming
from any checkpoint on the CPU continues bitwise as if never stopped.
"""
import os
import signal
import threading

from .files import read_model_file
from .validation import check_count


class InterruptGuard:
    """Defers SIGINT (Ctrl-C) to the next step boundary of ``fit``.

    Python raises KeyboardInterrupt between any two bytecodes, e.g. after the
    optimizer counted a step but before its kernel ran, or after an update made
    the weights NaN but before the check that undoes it. Inside the guard the
    signal only sets a flag; ``check()`` raises at a point where parameters,
    optimizer state and step count agree. Installed only in the main thread and
    only over Python's default handler (a handler of the user's stays as is)."""

    def __init__(self):
        self.interrupted = False
        self._previous = None

    def _handler(self, signum, frame):
        self.interrupted = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if exc_type is None:
            self.check()  # a Ctrl-C after the last step boundary (say, during the final save)
        return False

    def check(self):
        if self.interrupted:
            self.interrupted = False
            raise KeyboardInterrupt


def check_checkpoint_args(checkpoint, checkpoint_every, resume, initial_epoch):
    """Validated (checkpoint path or None, every, resume path or None, initial_epoch)."""
    checkpoint_every = check_count("checkpoint_every", checkpoint_every, 1)
    initial_epoch = check_count("initial_epoch", initial_epoch, 0)
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"expected checkpoint as a file path, got {type(checkpoint).__name__}")
        folder = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
        if not os.path.isdir(folder):
            raise ValueError(f"expected checkpoint in an existing folder, got {os.fspath(checkpoint)!r} "
                             f"({folder} does not exist)")
        if os.path.isdir(checkpoint):
            raise ValueError(f"expected checkpoint as a file path, got the folder {os.fspath(checkpoint)!r}")
    if resume is not None:
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(f"expected resume as a file path, got {type(resume).__name__}")
        if initial_epoch:
            raise ValueError(f"expected initial_epoch=0 with resume= (the checkpoint says where to "
                             f"continue), got initial_epoch={initial_epoch}")
    return checkpoint, checkpoint_every, resume, initial_epoch


def resume_position(model, path, n, batch_size, shuffle):
    """Load the checkpoint at ``path`` into ``model`` and return where to continue.

    Returns a dict with ``epoch`` (the first epoch to run) and, for a checkpoint
    taken mid-epoch, ``step``, ``epoch_rng``, ``stats`` and ``penalty``. A
    mid-epoch position needs the same number of samples, batch size and shuffle
    setting (else the batches would differ): checked before anything changes."""
    state = read_model_file(path)
    pos = state["training"] or {"epoch": 0, "step": 0}
    try:
        epoch, step = int(pos["epoch"]), int(pos.get("step", 0))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{os.fspath(path)}: expected a training position in the checkpoint, got {pos!r}") from None
    if step:
        same = {"n": n, "batch_size": batch_size, "shuffle": shuffle}
        for key, value in same.items():
            if pos.get(key) != value:
                raise ValueError(f"{os.fspath(path)} was taken in the middle of epoch {epoch} (after step {step}); "
                                 f"resuming there needs the same {key}: expected {pos.get(key)!r}, got {value!r}")
    model.load_state_dict(state, source=os.fspath(path))
    out = {"epoch": epoch, "step": step}
    if step:
        out.update(epoch_rng=pos.get("epoch_rng"), stats=pos.get("stats", [0.0, 0.0]),
                   penalty=float(pos.get("penalty", 0.0)))
    return out
