"""FLOP counts of dense and convolutional training steps, and the machine's sgemm peak.

Counting rule (the same for every implementation, so GFLOP/s figures compare):
a GEMM of (N, D) by (D, M) costs 2*N*D*M. One training step of a dense layer
D -> M on a batch of N runs three GEMMs: forward Z = A_prev @ W, weight
gradient dW = A_prev.T @ dZ and input gradient dA_prev = dZ @ W.T. The first
layer needs no input gradient, so a step of an L-layer net counts 3L - 1
GEMMs. Bias adds, activations, the loss and the update are elementwise and
not counted (they are O(N*M), the GEMMs O(N*D*M)).

A convolution counts as the GEMM it is lowered to (im2col): (M, C*K*K) @
(C*K*K, N*OH*OW), 2*M*C*K*K*OH*OW per sample; its three GEMMs are counted like a
dense layer's. im2col/col2im, pooling and ReLU move data and are not counted.
(fastmlp.compare counts the same way.)

Shape vocabulary: N batch, D inputs of a layer, M outputs of a layer;
`sizes` lists the widths [D_0, M_0 = D_1, ..., M_last]. Images: C channels,
H, W height and width, K kernel side, P padding; `layers` lists tuples
("conv", C, M, K, P), ("pool", K), ("relu",), ("flatten",), ("dense", D, M).
"""
import time

import numpy as np

COUNT_RULE = ("2*N*D*M per GEMM; per dense layer forward X@W and dW = A.T@dZ, "
              "plus dA = dZ@W.T except for the first layer (a conv: its im2col GEMM, "
              "2*M*C*K*K*OH*OW per sample, counted alike); elementwise ops not counted")


def gemm_flops(n, d, m):
    # (N, D) @ (D, M)
    return 2 * n * d * m


def forward_flops(sizes, n):
    # forward pass of the whole net on N samples
    return sum(gemm_flops(n, d, m) for d, m in zip(sizes[:-1], sizes[1:]))


def train_step_flops(sizes, n):
    """FLOPs of one training step (forward + backward) on a batch of N samples."""
    total = 0
    for layer, (d, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += gemm_flops(n, d, m)          # Z = A_prev @ W
        total += gemm_flops(n, d, m)          # dW = A_prev.T @ dZ
        if layer > 0:
            total += gemm_flops(n, d, m)      # dA_prev = dZ @ W.T
    return total


def cnn_gemm_flops(layers, image_shape):
    """Forward FLOPs per sample of each GEMM-like layer (conv, dense), in order.

    image_shape is (C, H, W); convolutions have stride 1, pools stride K."""
    c, h, w = image_shape
    out = []
    for op, *a in layers:
        if op == "conv":
            ci, m, k, p = a
            if ci != c:
                raise ValueError(f"conv expects {ci} channels, gets {c}")
            h, w, c = h + 2 * p - k + 1, w + 2 * p - k + 1, m
            out.append(gemm_flops(h * w, ci * k * k, m))
        elif op == "pool":
            h, w = h // a[0], w // a[0]
        elif op == "dense":
            out.append(gemm_flops(1, a[0], a[1]))
    return out


def cnn_train_step_flops(layers, image_shape, n):
    """FLOPs of one training step of a CNN on N samples: forward, dW, and the
    input gradient of every GEMM-like layer but the first."""
    per = cnn_gemm_flops(layers, image_shape)
    return n * (2 * per[0] + 3 * sum(per[1:]))


def sgemm_peak(n=2048, repeats=10, seed=0):
    """Best GFLOP/s of an n^3 float32 NumPy matmul over `repeats` runs.

    Returns (best_gflops, list of every run's GFLOP/s). The first product is
    an untimed warm-up (thread pool start, page faults of the output)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        runs.append(gemm_flops(n, n, n) / (time.perf_counter() - t0) / 1e9)
    return max(runs), runs


def sgemm_peak_torch_cuda(n=2048, repeats=10, tf32=False):
    """Best GFLOP/s of an n^3 float32 matmul on the GPU through PyTorch.

    TF32 off (the default) gives the peak of plain float32 GEMMs; on, that of the
    tensor cores' TF32 mode."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    c = a @ b
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        runs.append(10 * gemm_flops(n, n, n) / (time.perf_counter() - t0) / 1e9)
    return max(runs), runs
