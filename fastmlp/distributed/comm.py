"""The world of processes a data-parallel run spans: ``init()`` and ``Comm``.

Started by ``mpiexec -n P`` (or ``srun``), ``init()`` joins the MPI world
through mpi4py; started alone it returns a world of one, without importing
mpi4py. A ``Comm`` answers rank, size, root, local rank (the rank among the
processes of this node, which picks the GPU) and carries the few collectives
training needs on the host: sums of small arrays, broadcasts, an allgather,
agreement on an error, abort.

``deterministic=True`` makes every sum an allgather followed by a sum in rank
order (0, 1, ..., P-1), so that the bits do not depend on the algorithm the
MPI library (or NCCL) picks; the default lets the library reduce as it likes.
"""
import importlib.util
import os

import numpy as np

_EXTRA = 'pip install "fastmlp[distributed]" (mpi4py and an MPI, or mpi4py built against your site MPI)'

# environment variables through which launchers announce the world size
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


class CollectiveError(ValueError):
    """An error every rank raises at the same point (a refused input, a failing rank's
    message shared with the others): printed once by the root, no abort needed."""
    collective = True


def launched_size(environ=None):
    """The world size a launcher announced in the environment (1 when started alone)."""
    environ = os.environ if environ is None else environ
    for var in _SIZE_VARS:
        value = environ.get(var)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                continue
    return 1


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"this process was started by an MPI launcher (world size {launched_size()}) "
                          f"but mpi4py is missing ({e}); {_EXTRA}") from e
    return MPI


class Comm:
    """rank, size, is_root, local_rank, local_size, deterministic; the host collectives.

    ``Comm()`` is a world of one (every collective returns its input); ``Comm(mpi_comm)``
    wraps an mpi4py communicator."""

    def __init__(self, mpi_comm=None, deterministic=False):
        if not isinstance(deterministic, bool):
            raise TypeError(f"expected deterministic to be a bool, got {deterministic!r}")
        self.mpi = mpi_comm
        self.deterministic = deterministic
        if mpi_comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
            MPI = _import_mpi()
            node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        self.is_root = self.rank == 0

    # ------------------------------------------------------------------ small collectives
    def sum(self, values):
        """Element-wise sum over the ranks of a small float64 array, the same bits on every
        rank (an ordered sum in deterministic mode)."""
        a = np.ascontiguousarray(values, dtype=np.float64)
        if self.size == 1:
            return a.copy()
        if self.deterministic:
            rows = np.empty((self.size,) + a.shape, np.float64)
            self.mpi.Allgather(a, rows)
            return ordered_sum(rows)
        MPI = _import_mpi()
        out = np.empty_like(a)
        self.mpi.Allreduce(a, out, op=MPI.SUM)
        return out

    def any(self, flag):
        """Whether ``flag`` is true on any rank (the same answer everywhere)."""
        if self.size == 1:
            return bool(flag)
        MPI = _import_mpi()
        return bool(self.mpi.allreduce(1 if flag else 0, op=MPI.SUM))

    def bcast(self, obj, root=0):
        """``obj`` of the root on every rank. mpi4py pickles it (MPI-pickle): only between the
        ranks of one job, which trust each other as one program does, never for files; not
        for per-step data."""
        return obj if self.size == 1 else self.mpi.bcast(obj, root=root)

    def allgather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        return [obj] if self.size == 1 else self.mpi.allgather(obj)

    def barrier(self):
        if self.size > 1:
            self.mpi.Barrier()

    def agree(self, error=None):
        """Collective: every rank says whether it failed (``error``, an exception or None).
        When any rank failed, every rank raises; a rank that failed raises its own
        exception, the others a ``CollectiveError`` naming the failing rank and its message."""
        message = None if error is None else f"{type(error).__name__}: {error}"
        messages = self.allgather(message)
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if not failed:
            return
        if error is not None:
            error.collective = True
            raise error
        rank, msg = failed[0]
        raise CollectiveError(f"rank {rank} of {self.size} refused to go on: {msg}")

    def abort(self, code=1):
        """End every process of the world now (MPI_Abort); a world of one exits."""
        if self.size > 1:
            self.mpi.Abort(code)
        os._exit(code)

    def __repr__(self):
        mode = ", deterministic" if self.deterministic else ""
        return f"Comm(rank {self.rank} of {self.size}, local rank {self.local_rank}{mode})"


def ordered_sum(rows):
    """rows[0] + rows[1] + ... in that order (rows (P, ...)): the bits depend on nothing else."""
    out = rows[0].copy()
    for r in range(1, rows.shape[0]):
        out += rows[r]
    return out


_WORLD = None


def init(deterministic=False):
    """The world this process belongs to, as a ``Comm``.

    Under ``mpiexec`` / ``srun`` (a launcher that announces a size > 1) it joins
    MPI_COMM_WORLD through mpi4py, installs the fault handlers (an uncaught exception
    on one rank aborts the world with that rank's message: fastmlp/distributed/faults.py)
    and, where CuPy sees GPUs, makes GPU ``local_rank % count`` this process's device.
    Started alone, it is a world of one and imports nothing. Calling it again returns
    the same world (with the ``deterministic`` setting of the last call)."""
    global _WORLD
    if not isinstance(deterministic, bool):
        raise TypeError(f"expected deterministic to be a bool, got {deterministic!r}")
    if _WORLD is not None:
        _WORLD.deterministic = deterministic
        return _WORLD
    if launched_size() <= 1:
        _WORLD = Comm(None, deterministic)
        return _WORLD
    MPI = _import_mpi()
    comm = Comm(MPI.COMM_WORLD, deterministic)
    from .faults import install
    install(comm)
    _select_gpu(comm)
    _WORLD = comm
    return comm


def joined():
    """The world ``init`` joined, or None where no call of it has yet."""
    return _WORLD


def _select_gpu(comm):
    """One GPU per rank: local rank modulo the GPUs CuPy sees (nothing without CuPy)."""
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CuPy installed without a usable driver: a CPU run
        return None
    if count < 1:
        return None
    device = comm.local_rank % count
    cupy.cuda.Device(device).use()
    return device
