"""``model.fit(..., comm=comm)``: the checks before a data-parallel run, and its faults.

Before the first step every rank builds its Trainer (which checks the
arguments), then the ranks agree: when any rank refused its input, every rank
raises (the failing rank its own error, the others a ``CollectiveError`` naming
it); then they compare fingerprints of the model, the arguments and the data,
and refuse, naming what differs, when a rank was given something else. Only
then does the root's state go to every rank. An exception that leaves ``fit``
on one rank (anything not raised by every rank at once) ends the world with
that rank's message (faults.py) rather than leaving the others waiting.
"""
import os

from ..training import Trainer
from .comm import Comm, CollectiveError
from .faults import abort_on_error


def fit_data_parallel(model, comm, X, y, kwargs):
    if not isinstance(comm, Comm):
        raise TypeError(f"expected comm from fastmlp.distributed.init(), got {type(comm).__name__}")
    if comm.size == 1:
        return Trainer(model, X, y, **kwargs).run()
    trainer, error = None, None
    try:
        trainer = Trainer(model, X, y, comm=comm, **kwargs)
        resume = kwargs.get("resume")
        if resume is not None and not os.path.isfile(resume):
            raise FileNotFoundError(f"expected the checkpoint to resume from at {os.fspath(resume)} on every "
                                    "rank (a folder every rank sees), got no such file")
    except Exception as e:   # refused here: every rank hears of it
        error = e
    comm.agree(error)
    check_same_everywhere(comm, trainer.dist.fingerprint)
    try:
        trainer.dist.start()
        return trainer.run()
    except KeyboardInterrupt:
        raise   # every rank stopped after the same step (CollectiveGuard)
    except Exception as e:
        if getattr(e, "collective", False):
            raise
        abort_on_error(comm, e)
        raise   # not reached: abort ends the process


def check_same_everywhere(comm, fingerprint):
    """CollectiveError on every rank unless every rank's fingerprint equals the root's."""
    prints = comm.allgather(fingerprint)
    for rank, other in enumerate(prints[1:], start=1):
        for what, digest in prints[0].items():
            if other.get(what) != digest:
                raise CollectiveError(
                    f"rank {rank} was given different {what} from rank 0: expected the same model, data and "
                    f"fit arguments on every rank (each rank trains on its share of every global batch)")
