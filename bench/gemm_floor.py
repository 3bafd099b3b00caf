"""The GEMM floor of an MLP training step: its GEMMs alone, nothing else.

For an MLP with L dense layers at batch B the step of a from-scratch
implementation runs 3L - 1 GEMMs (the ones bench/flops.py counts), with these
shapes and transposes on row-major arrays:

    forward, layer i   Z_i  = A_i @ W_i        (B, D_i) @ (D_i, M_i)
    weight gradient    dW_i = A_i.T @ dZ_i     (D_i, B) @ (B, M_i)
    input gradient     dA_i = dZ_i @ W_i.T     (B, M_i) @ (M_i, D_i), i > 0

`GemmFloor` preallocates every operand and output once, then runs those GEMMs
in the order a step does (forward 0 .. L-1, then dW and dA from the last layer
down), NumPy `matmul(..., out=)` on the CPU, or `torch.matmul(..., out=)` on a
CUDA device (synchronised at the end of each run). No bias, activation, loss,
update or gather: what a step costs beyond this is the time outside its GEMMs.
A run follows the workload's batch schedule (a short last batch when B does not
divide N), so its time per step is directly comparable with the step's.

`blas_threads(n)` sets the BLAS threads of a run through threadpoolctl; the peers
runner times the floor at every thread count from 1 to --threads, interleaved
with the implementations, and keeps the best.

Shape vocabulary: N samples, B batch, D inputs of a layer, M outputs.
"""
import math

import numpy as np


def step_gemms(sizes, batch):
    """The (rows, inner, cols) of each GEMM of one step, in order: (B, D, M)
    forward per layer, then per layer from the last down (D, B, M) for dW and,
    but for the first layer, (B, M, D) for dA."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    out = [(batch, d, m) for d, m in layers]
    for i in reversed(range(len(layers))):
        d, m = layers[i]
        out.append((d, batch, m))
        if i > 0:
            out.append((batch, m, d))
    return out


class _Buffers:
    """Operands and outputs of one step's GEMMs at one batch size."""

    def __init__(self, sizes, batch, xp, rng):
        layers = list(zip(sizes[:-1], sizes[1:]))
        self.calls = []
        new = (lambda *s: xp(rng.random(s, dtype=np.float32)))
        A = [new(batch, d) for d, _ in layers]
        W = [new(d, m) for d, m in layers]
        Z = [new(batch, m) for _, m in layers]
        dZ = [new(batch, m) for _, m in layers]
        dW = [new(d, m) for d, m in layers]
        dA = [new(batch, d) for d, _ in layers]
        for i in range(len(layers)):
            self.calls.append((A[i], W[i], Z[i]))
        for i in reversed(range(len(layers))):
            self.calls.append((A[i].T, dZ[i], dW[i]))
            if i > 0:
                self.calls.append((dZ[i], W[i].T, dA[i]))


class GemmFloor:
    """The GEMMs of `steps_per_epoch` steps of an MLP (sizes) at batch
    `batch_size` over n samples (None: the full batch), preallocated.

    device "cpu" runs NumPy matmul with out=; "cuda" runs torch.matmul with
    out= on the GPU (torch must be given)."""

    def __init__(self, sizes, n, batch_size=None, device="cpu", torch=None, seed=0):
        rng = np.random.default_rng(seed)
        if device == "cpu":
            self.matmul, xp, self.sync = np.matmul, np.asarray, (lambda: None)
        else:
            dev = torch.device(device)
            self.matmul = torch.matmul
            xp = (lambda a: torch.as_tensor(a).to(dev))
            self.sync = torch.cuda.synchronize
        b = n if batch_size is None or batch_size >= n else batch_size
        full, last = divmod(n, b)
        # the schedule of one epoch: `full` steps at B, then one at n % B
        self.schedule = [(_Buffers(sizes, b, xp, rng), full)]
        if last:
            self.schedule.append((_Buffers(sizes, last, xp, rng), 1))
        self.steps_per_epoch = full + (1 if last else 0)
        assert self.steps_per_epoch == math.ceil(n / b)

    def run(self, epochs=1):
        matmul = self.matmul
        for _ in range(epochs):
            for buffers, count in self.schedule:
                calls = buffers.calls
                for _ in range(count):
                    for a, w, out in calls:
                        matmul(a, w, out=out)
        self.sync()


def blas_threads(n):
    """A context manager that runs the BLAS of NumPy on n threads (threadpoolctl)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n, user_api="blas")
