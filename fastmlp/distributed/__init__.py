"""Data-parallel training over MPI (CPU) and NCCL (GPU).

    comm = fm.distributed.init()          # under mpiexec: the MPI world; alone: a world of one
    model.fit(X, y, batch_size=256, comm=comm)   # 256 is the global batch

One job per file: comm.py (the world, host collectives), reduce.py (the flat
gradient summed over the ranks), data_parallel.py (one rank's part of fit),
fit.py (checks before training), faults.py (one rank's failure ends them all).
docs/distributed.md says what each mode promises.
"""
from .comm import CollectiveError, Comm, init, launched_size
from .data_parallel import shares

__all__ = ["init", "Comm", "CollectiveError", "launched_size", "shares"]
