"""The flat gradient summed over the ranks, once per step, in place.

Every rank's gradient buffer (``FlatParameters.grads``, (NP,), padding included)
holds its share of the batch's gradient, each already scaled by 1 / (global
batch size); after the call every rank holds the sum, so the update equals one
process's on the whole batch. Two engines, two modes each:

- CPU: MPI ``Allreduce`` in place (the library picks the algorithm), or in
  deterministic mode ``Allgather`` into (P, NP) and a sum in rank order.
- GPU: NCCL through ``cupy.cuda.nccl.NcclCommunicator`` (its unique id made by
  the root and broadcast over MPI; one GPU per rank, chosen by ``init()``),
  ``allReduce`` in place on the current stream, or in deterministic mode
  ``allGather`` and the same ordered sum on the device. Nothing synchronises
  with the host.
"""
import numpy as np

from .comm import _import_mpi


def gradient_reducer(comm, be, grads):
    """The reducer for this backend's gradient buffer, or None in a world of one."""
    if comm.size == 1:
        return None
    if be.host_arrays:
        return HostSum(comm, grads)
    return NcclSum(comm, grads)


class HostSum:
    """MPI on host (NumPy) buffers."""

    def __init__(self, comm, grads):
        self.comm, self.MPI = comm, _import_mpi()
        # deterministic: every rank's buffer side by side, (P, NP)
        self.rows = np.empty((comm.size, grads.size), grads.dtype) if comm.deterministic else None

    def __call__(self, grads):
        # grads (NP,) in place
        if self.rows is None:
            self.comm.mpi.Allreduce(self.MPI.IN_PLACE, grads, op=self.MPI.SUM)
            return
        self.comm.mpi.Allgather(grads, self.rows)
        ordered_sum_into(grads, self.rows, np.add)


class NcclSum:
    """NCCL on device (CuPy) buffers; ``nccl`` and ``xp`` may be stand-ins (tests)."""

    def __init__(self, comm, grads, nccl=None, xp=None):
        if nccl is None or xp is None:
            try:
                import cupy
                from cupy.cuda import nccl as cupy_nccl
            except ImportError as e:
                raise ImportError(f"data-parallel training on GPUs needs NCCL through CuPy ({e}); "
                                  'pip install "fastmlp[cuda12]" nvidia-nccl-cu12 (or the cuda13 pair)') from e
            nccl, xp = nccl or cupy_nccl, xp or cupy
        self.nccl, self.xp = nccl, xp
        self.dtype = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                      np.dtype(np.float64): nccl.NCCL_FLOAT64}[np.dtype(grads.dtype)]
        uid = comm.bcast(nccl.get_unique_id() if comm.is_root else None)
        self.communicator = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.rows = xp.empty((comm.size, grads.size), grads.dtype) if comm.deterministic else None

    def __call__(self, grads):
        # grads (NP,) on this rank's GPU, in place, on the current stream
        stream = self.xp.cuda.get_current_stream().ptr
        n = grads.size
        if self.rows is None:
            self.communicator.allReduce(grads.data.ptr, grads.data.ptr, n, self.dtype,
                                        self.nccl.NCCL_SUM, stream)
            return
        self.communicator.allGather(grads.data.ptr, self.rows.data.ptr, n, self.dtype, stream)
        ordered_sum_into(grads, self.rows, self.xp.add)


def ordered_sum_into(out, rows, add):
    """out = rows[0] + rows[1] + ... in rank order; rows (P, NP), out (NP,)."""
    out[...] = rows[0]
    for r in range(1, rows.shape[0]):
        add(out, rows[r], out=out)
