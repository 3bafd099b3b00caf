"""The CPU backend: NumPy arrays, BLAS GEMMs through NumPy, Numba kernels.

Every backend package (``cpu``, ``cuda``) exports the same names with the same
signatures, so layers never import numpy or cupy for math. Ops write into
caller-provided outputs; none allocates on the hot path. One module per family
of ops, the Numba twins of ``kernels/<family>.cu`` beside their ops: dense,
loss, optim, data, augment, conv, pool, norm, dropout; conv_act_pool for
Conv2D's fused path; blas for the GEMMs (openblas.py runs big ones on Numba's
threads). jit.py compiles the kernels and picks a twin; activation.py and
reduce.py hold what several families share.
"""
import os
from contextlib import nullcontext

import numba
import numpy as np


def _cache_dir_is_writable():
    here = os.path.dirname(__file__)
    cache = os.path.join(here, "__pycache__")
    return os.access(cache if os.path.isdir(cache) else here, os.W_OK)


# Numba caches the kernels' machine code beside these modules; in an installed, read-only
# package per user instead. Set before any kernel is compiled (the modules below).
if "NUMBA_CACHE_DIR" not in os.environ and not _cache_dir_is_writable():
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(os.path.expanduser("~"), ".cache", "fastmlp", "numba")
    numba.config.reload_config()

from . import cores, openblas  # noqa: E402
from . import team_wake, thread_count  # noqa: E402
from .augment import augment_images  # noqa: E402
from .blas import (begin_inference, end_inference, inference_parallel, matmul, matmul_pair,  # noqa: E402
                   numba_thread_gemms, release_team, use_numba_thread_gemms)
from .conv import (col2im, conv_bias_act_pool_backward, conv_bias_act_pool_forward,  # noqa: E402
                   conv_bias_backward, conv_bias_forward, im2col, transpose)
from .conv_act_pool import conv_act_pool_backward, conv_act_pool_forward  # noqa: E402
from .data import (copy, copy_from_host, empty, gather_rows, random_uniform, synchronize,  # noqa: E402
                   to_device, to_host, zeros)
from . import dense_chain as _dense_chain  # noqa: E402
from . import in_place_sgd  # noqa: E402
from . import zero_tiles  # noqa: E402
from .dense import act_backward, act_backward_bias_grad, act_forward, bias_act_forward  # noqa: E402
from .dropout import dropout_backward, dropout_forward  # noqa: E402
from .loss import (bce_logits, bce_logits_weighted, mse, mse_weighted, softmax_forward, softmax_xent,  # noqa: E402
                   softmax_xent_weighted)  # noqa: E402
from .norm import batchnorm_backward, batchnorm_forward  # noqa: E402
from .optim import (adam_step, adam_update, add_reg_grad, grad_clip_factors, reg_penalty, rmsprop_step,  # noqa: E402
                    sgd_step, sgd_update)
from .pool import (avgpool_backward, avgpool_forward, global_avgpool_backward,  # noqa: E402
                   global_avgpool_forward, global_maxpool_backward, global_maxpool_forward, maxpool_backward,
                   maxpool_forward)
from .reduce import reduction_scratch_nbytes  # noqa: E402

name = "cpu"
xp = np
# Device arrays are host NumPy arrays: a host array is used in place, never staged.
host_arrays = True
# Full-batch SGD on a wide first layer runs in the row space of X by default (fastmlp/gram.py):
# one (N, N) GEMM a step instead of two (N, D) ones.
full_batch_gram = True

# Conv2D cuts its batch into chunks of images whose cols and zt take about this many
# bytes, so that a core's L2 cache holds them from im2col to the pooling; the count is a
# multiple of 4, so 2 or 4 threads get equal shares.
conv_chunk_bytes = 1 << 18
# Whether conv_act_pool_forward / _backward run as one Numba kernel, a chunk per thread
# (conv_act_pool.py); if not (NumPy's OpenBLAS not found), as the ops chunk after chunk.
fused_conv_chunks = openblas.available()


def threads():
    # T: the threads a chunked kernel may run on, one scratch buffer each: the most a step
    # may use (cores.py), whatever count the step runs on now (thread_count.py)
    return max(numba.get_num_threads(), cores.most())


def dense_chain_kernels():
    # an MLP predicts in one kernel call per batch (fastmlp/inference.py) through
    # dense_chain.py's dense_chain_forward and row_edges; None where NumPy's OpenBLAS was not found
    return _dense_chain if openblas.available() else None


def prediction_threads():
    # how many cores a prediction running alone may spread its rows over (thread_count.py)
    return thread_count.prediction_threads()


def prediction_call():
    # a layer-by-layer prediction of the thread that runs parallel ones: on Numba's threads
    # while they are awake, else on this thread (team_wake.py); any other thread: as it is
    return team_wake.prediction_team().call() if inference_parallel() else nullcontext()


def prediction_stalled():
    # a parallel prediction stalled: the next ones run on one thread for a while (thread_count.py)
    thread_count.prediction_stalled()


def step_threads():
    # the thread count of one fit's steps, measured as it trains (thread_count.py)
    return thread_count.StepThreads()


def zero_skip():
    # a first Dense layer's training products without the batch's zeros (zero_tiles.py), or
    # None where its register tiles don't run (no AVX-512)
    return zero_tiles.ZeroSkip() if zero_tiles.available() else None


def undo_free(flat, stats):
    # a fit's plain SGD steps without the undo copy where a bound proves them finite
    # (in_place_sgd.py); stats: the model's running loss sum, read before each update
    return in_place_sgd.UndoFreeSGD(flat, stats)


def step_graphs():
    # no CUDA graphs on the CPU: a step is its ops, run eagerly
    return None
