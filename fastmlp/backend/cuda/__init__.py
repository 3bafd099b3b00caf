"""The CUDA backend: CuPy arrays, cuBLAS GEMMs, the kernels of ``kernels/*.cu``.

Exports the names of the CPU backend (``fastmlp.backend.cpu``) with the same
signatures. One module per family of ops, the launchers of ``kernels/<family>.cu``:
dense, loss, optim, data, augment, conv, conv_act_pool, pool, norm, dropout, and
blas for the GEMMs. launch.py compiles and launches the kernels, source.py says
where they are and how NVRTC compiles them, graph.py replays a training step as a
CUDA graph. ``get_backend("cuda")`` imports it once CuPy and a GPU are known to be
there.

Without CuPy only source.py is importable (CI and the packaging checks read the
kernels through it); any op then raises an AttributeError that names the extra.
"""
from contextlib import nullcontext

from .. import _CUDA_EXTRA

try:
    import cupy
except ImportError as e:
    _NO_CUPY = e
else:
    _NO_CUPY = None

if _NO_CUPY is not None:
    def __getattr__(attr):
        raise AttributeError(f"fastmlp.backend.cuda.{attr} needs CuPy ({_NO_CUPY}): {_CUDA_EXTRA}")
else:
    from . import graph
    from .augment import augment_images
    from .blas import (begin_inference, end_inference, inference_parallel, matmul, matmul_pair,
                       numba_thread_gemms, release_team, use_numba_thread_gemms)
    from .conv import (col2im, conv_bias_act_pool_backward, conv_bias_act_pool_forward, conv_bias_backward,
                       conv_bias_forward, im2col, transpose)
    from .conv_act_pool import conv_act_pool_backward, conv_act_pool_forward
    from .data import (copy, copy_from_host, empty, gather_rows, random_uniform, synchronize, to_device,
                       to_host, zeros)
    from .dense import act_backward, act_backward_bias_grad, act_forward, bias_act_forward
    from .dropout import dropout_backward, dropout_forward
    from .loss import (bce_logits, bce_logits_weighted, mse, mse_weighted, softmax_forward, softmax_xent,
                       softmax_xent_weighted)
    from .norm import batchnorm_backward, batchnorm_forward
    from .optim import (adam_step, adam_update, add_reg_grad, grad_clip_factors, reg_penalty, rmsprop_step,
                        sgd_step, sgd_update)
    from .pool import (avgpool_backward, avgpool_forward, global_avgpool_backward, global_avgpool_forward,
                       global_maxpool_backward, global_maxpool_forward, maxpool_backward, maxpool_forward)

    name = "cuda"
    xp = cupy
    # Device arrays live in GPU memory: a host array is staged and copied to the device.
    host_arrays = False
    # Full-batch SGD stays on the ordinary path by default: on the GPU the first layer's two
    # thin GEMMs cost less than the row-space path's extra kernels (fastmlp/gram.py).
    full_batch_gram = False
    # None: Conv2D takes the whole batch as one chunk (the GPU wants large launches)
    conv_chunk_bytes = None
    # no single chunked kernel here: conv_act_pool runs the ops chunk after chunk
    fused_conv_chunks = False

    def threads():
        # T: one scratch buffer for the kernels (the host thread launches them all)
        return 1

    def dense_chain_kernels():
        # no one-call MLP prediction (fastmlp/inference.py): predict runs the layers' ops
        return None

    def prediction_threads():
        # one host thread launches a prediction's kernels
        return 1

    def prediction_call():
        # no team of host threads to wake: the host thread launches the kernels
        return nullcontext()

    def prediction_stalled():
        # nothing to fall back from: predictions launch from one host thread
        return None

    def step_threads():
        # the host thread only launches: no thread count to choose
        return None

    def zero_skip():
        # cuBLAS multiplies the first layer's batch whole: no zeros skipped on the GPU
        return None

    def undo_free(flat, stats):
        # every update keeps its undo copy on the GPU (a device-side bound would cost a sync)
        return None

    def step_graphs():
        # a fresh StepGraphs: a fit's training steps captured and replayed as CUDA graphs
        return graph.StepGraphs()

    def reduction_scratch_nbytes(width):
        # the reductions' workspace is one per (device, stream), shared by every width
        return 0
