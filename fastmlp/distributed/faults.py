"""Failure handling of a data-parallel world: one rank's failure ends them all, never a hang.

A rank that leaves a collective (an exception, a crash) leaves the others
waiting in it for ever: MPI has no timeouts, and an exiting process that
calls MPI_Finalize does not end its peers. So:

- ``install(comm)`` (done by ``init()`` for a world of more than one) replaces
  ``sys.excepthook``: an uncaught exception prints that rank's traceback,
  prefixed with its rank, and calls MPI_Abort, which the launcher turns into the
  end of every process. An error that every rank raised at the same point
  (``collective``: a refused input, a diverged run) is printed by the root only.
- ``abort_on_error(comm, exc)``: the same, at once, for an exception that leaves
  ``fit`` on one rank while the others are inside a collective.
- A rank killed outright (SIGKILL, the OOM killer) is the launcher's to handle:
  MPICH's Hydra ends the others at once ("BAD TERMINATION", exit status 9) and
  Open MPI does the same; tests/test_distributed.py measures it.
"""
import sys
import time
import traceback

FORWARD_S = 0.25   # seconds the launcher gets to forward the message before MPI_Abort


def describe(comm, exc):
    """The lines a failing rank prints: its rank, then the traceback."""
    head = f"fastmlp: rank {comm.rank} of {comm.size} failed:\n"
    return head + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def report(comm, exc):
    """Print what ``exc`` says (the root only, for an error every rank raised)."""
    if getattr(exc, "collective", False):
        if comm.is_root:
            print(f"fastmlp: {type(exc).__name__}: {exc}", file=sys.stderr)
    else:
        print(describe(comm, exc), file=sys.stderr, end="")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def end_world(comm, code=1):
    """End the whole world (MPI_Abort) once what this rank printed had time to get out."""
    # the launcher forwards this rank's output through a pipe; MPI_Abort at once can end
    # the forwarding before the message is through (seen under load: an empty stderr)
    time.sleep(FORWARD_S)
    comm.abort(code)


def abort_on_error(comm, exc, code=1):
    """Print ``exc`` as this rank's failure and end the whole world (MPI_Abort)."""
    report(comm, exc)
    end_world(comm, code)


def install(comm):
    """An uncaught exception on any rank ends the world with its message (sys.excepthook)."""
    previous = sys.excepthook

    def hook(kind, exc, tb):
        if exc is None or comm.size == 1:
            previous(kind, exc, tb)
            return
        if exc.__traceback__ is None:
            exc = exc.with_traceback(tb)
        abort_on_error(comm, exc, 130 if isinstance(exc, KeyboardInterrupt) else 1)

    sys.excepthook = hook
    return hook
