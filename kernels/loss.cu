// kernels/loss.cu -- the losses, each fused with its gradient, and softmax.
//
// Must match (fastmlp/backend/reference.py): softmax_forward, softmax_xent,
// bce_logits, mse, and the weighted losses softmax_xent_weighted, bce_logits_weighted,
// mse_weighted (sample r's loss and gradient times weights[r], weights (N,) double; the
// correct count unweighted). CPU twins with the same names: fastmlp/backend/cpu/loss.py.
// A loss and its weighted twin share one body, templated on W: with W false the weight
// is the constant 1.0, so the unweighted kernels compute exactly what they would alone.
//
// Shapes: logits, dlogits, p, targets, out, dout are (N, M) row-major; labels (N,)
// int or long long in [0, M); stats (2,) float64 on the device, ADDED into:
// [sum of per-sample losses, number of correct predictions].
// Semantics (see reference.py): dlogits = (softmax - onehot) * scale;
// BCE per-sample loss and correct count are means over M, dlogits carries
// scale / M; MSE per-sample loss is a mean over M, dout = 2 (out - t) scale / M,
// correct is |out - t| < 0.5 when M == 1, equal argmax (first maximum) otherwise.
// As in the CPU twins the loss arithmetic runs in double whatever T is; only
// the gradient is rounded to T.
//
// Launch configuration (fastmlp/backend/cuda/loss.py), 256 threads a block, G blocks
// with G a function of the shape only (so the sums are reproducible):
//   softmax_forward, softmax_xent: one warp per row (8 rows a block, grid-stride
//     over rows), warp shuffles for max / argmax / sum.
//   bce_logits: grid-stride over the N*K elements.
//   mse: one thread per row, grid-stride over rows.
//   Each loss writes its block's [loss, correct] sums (block_sum, reduce.cuh) to
//   partial (G, 2) float64, then loss_stats_finish (one block) sums partial in a
//   fixed order and adds [loss / loss_div, correct / correct_div] into stats.
//   No float atomics.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

#include "reduce.cuh"

#define FASTMLP_WARPS (FASTMLP_THREADS / 32)
#define FASTMLP_FULL_MASK 0xffffffffu

__device__ __forceinline__ double neg_inf() { return -__longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ double quiet_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

__device__ __forceinline__ double warp_sum(double v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(FASTMLP_FULL_MASK, v, off);
    return v;  // the same value on every lane
}

__device__ __forceinline__ double warp_max(double v) {
    for (int off = 16; off > 0; off /= 2) v = fmax(v, __shfl_xor_sync(FASTMLP_FULL_MASK, v, off));
    return v;
}

__device__ __forceinline__ void warp_argmax(double& v, long long& idx) {
    // the first maximum wins ties, as np.argmax; idx = M marks a lane that saw no column
    for (int off = 16; off > 0; off /= 2) {
        const double ov = __shfl_xor_sync(FASTMLP_FULL_MASK, v, off);
        const long long oi = __shfl_xor_sync(FASTMLP_FULL_MASK, idx, off);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
}

__device__ __forceinline__ void block_sums_to_partial(double* partial, double loss, double correct) {
    // every thread of the block contributes; thread 0 writes the block's sums to partial[blockIdx.x]
    loss = block_sum(loss);
    correct = block_sum(correct);
    if (threadIdx.x == 0) {
        partial[2 * (long long)blockIdx.x] = loss;
        partial[2 * (long long)blockIdx.x + 1] = correct;
    }
}

template <typename T>
__global__ void softmax_forward(T* p, const T* logits, long long n, long long m) {
    // p (N, M) = softmax over each row of logits (N, M)
    const int lane = threadIdx.x % 32;
    const long long rstep = (long long)gridDim.x * FASTMLP_WARPS;
    for (long long r = (long long)blockIdx.x * FASTMLP_WARPS + threadIdx.x / 32; r < n; r += rstep) {
        const T* x = logits + r * m;
        double mx = neg_inf();
        for (long long j = lane; j < m; j += 32) mx = fmax(mx, (double)x[j]);
        mx = warp_max(mx);
        double s = 0.0;
        for (long long j = lane; j < m; j += 32) s += exp((double)x[j] - mx);
        s = warp_sum(s);
        for (long long j = lane; j < m; j += 32) p[r * m + j] = (T)(exp((double)x[j] - mx) / s);
    }
}

template <bool W>
__device__ __forceinline__ double sample_weight(const double* weights, long long r) {
    return W ? weights[r] : 1.0;
}

template <typename T, typename L, bool W>
__device__ __forceinline__ void softmax_xent_rows(T* dlogits, double* partial, const T* logits, const L* labels,
                                                  const double* weights, long long n, long long m, double scale) {
    // dlogits (N, M) = (softmax(logits) - onehot(labels)) * scale;
    // partial (G, 2) = this block's [sum of -log softmax[label], correct argmax count].
    // A label outside [0, M) gives a NaN loss (the reference raises IndexError).
    const int lane = threadIdx.x % 32;
    const long long rstep = (long long)gridDim.x * FASTMLP_WARPS;
    double loss = 0.0, correct = 0.0;
    for (long long r = (long long)blockIdx.x * FASTMLP_WARPS + threadIdx.x / 32; r < n; r += rstep) {
        const T* x = logits + r * m;
        double mx = neg_inf();
        long long arg = m;
        for (long long j = lane; j < m; j += 32) {
            const double v = (double)x[j];
            if (v > mx || arg == m) { mx = v; arg = j; }
        }
        warp_argmax(mx, arg);
        double s = 0.0;
        for (long long j = lane; j < m; j += 32) s += exp((double)x[j] - mx);
        s = warp_sum(s);
        const long long y = (long long)labels[r];
        const bool valid = y >= 0 && y < m;
        const double wr = sample_weight<W>(weights, r);
        for (long long j = lane; j < m; j += 32) {
            const double pj = exp((double)x[j] - mx) / s - (j == y ? 1.0 : 0.0);
            dlogits[r * m + j] = (T)(pj * scale * wr);
        }
        if (lane == 0) {
            loss += valid ? wr * (log(s) - ((double)x[y] - mx)) : quiet_nan();
            correct += (arg == y) ? 1.0 : 0.0;
        }
    }
    block_sums_to_partial(partial, loss, correct);
}

template <typename T, typename L>
__global__ void softmax_xent(T* dlogits, double* partial, const T* logits, const L* labels,
                             long long n, long long m, double scale) {
    softmax_xent_rows<T, L, false>(dlogits, partial, logits, labels, nullptr, n, m, scale);
}

template <typename T, typename L>
__global__ void softmax_xent_weighted(T* dlogits, double* partial, const T* logits, const L* labels,
                                      const double* weights, long long n, long long m, double scale) {
    softmax_xent_rows<T, L, true>(dlogits, partial, logits, labels, weights, n, m, scale);
}

template <typename T, bool W>
__device__ __forceinline__ void bce_logits_elements(T* dlogits, double* partial, const T* logits, const T* targets,
                                                    const double* weights, long long total, long long m, double scale) {
    // logits, targets, dlogits (N, M) seen flat (total = N*M,);
    // loss max(x, 0) - x y + log1p(exp(-|x|)), dlogits = (sigmoid(x) - y) * scale / M;
    // partial (G, 2) = this block's [sum of element losses, count of (x > 0) == (y > 0.5)]
    // (loss_stats_finish divides both by M)
    const double sm = scale / (double)m;
    double loss = 0.0, correct = 0.0;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const double x = (double)logits[e];
        const double y = (double)targets[e];
        const double we = sample_weight<W>(weights, e / m);
        loss += we * (fmax(x, 0.0) - x * y + log1p(exp(-fabs(x))));
        dlogits[e] = (T)((0.5 * (1.0 + tanh(0.5 * x)) - y) * sm * we);
        correct += ((x > 0.0) == (y > 0.5)) ? 1.0 : 0.0;
    }
    block_sums_to_partial(partial, loss, correct);
}

template <typename T>
__global__ void bce_logits(T* dlogits, double* partial, const T* logits, const T* targets,
                           long long total, long long m, double scale) {
    bce_logits_elements<T, false>(dlogits, partial, logits, targets, nullptr, total, m, scale);
}

template <typename T>
__global__ void bce_logits_weighted(T* dlogits, double* partial, const T* logits, const T* targets,
                                    const double* weights, long long total, long long m, double scale) {
    bce_logits_elements<T, true>(dlogits, partial, logits, targets, weights, total, m, scale);
}

template <typename T, bool W>
__device__ __forceinline__ void mse_rows(T* dout, double* partial, const T* out, const T* targets,
                                         const double* weights, long long n, long long m, double scale) {
    // out, targets, dout (N, M); dout = 2 (out - t) * scale / M;
    // partial (G, 2) = this block's [sum of (out - t)^2, correct count]
    // (loss_stats_finish divides the loss by M)
    const double sm = 2.0 * scale / (double)m;
    double loss = 0.0, correct = 0.0;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < n;
         r += (long long)gridDim.x * blockDim.x) {
        const T* o = out + r * m;
        const T* t = targets + r * m;
        long long ao = 0, at = 0;
        const double wr = sample_weight<W>(weights, r);
        double row = 0.0;
        for (long long j = 0; j < m; ++j) {
            const double d = (double)o[j] - (double)t[j];
            row += d * d;
            dout[r * m + j] = (T)(d * sm * wr);
            if (o[j] > o[ao]) ao = j;
            if (t[j] > t[at]) at = j;
        }
        loss += wr * row;
        if (m == 1) correct += fabs((double)o[0] - (double)t[0]) < 0.5 ? 1.0 : 0.0;
        else correct += (ao == at) ? 1.0 : 0.0;
    }
    block_sums_to_partial(partial, loss, correct);
}

template <typename T>
__global__ void mse(T* dout, double* partial, const T* out, const T* targets,
                    long long n, long long m, double scale) {
    mse_rows<T, false>(dout, partial, out, targets, nullptr, n, m, scale);
}

template <typename T>
__global__ void mse_weighted(T* dout, double* partial, const T* out, const T* targets, const double* weights,
                             long long n, long long m, double scale) {
    mse_rows<T, true>(dout, partial, out, targets, weights, n, m, scale);
}

__global__ void loss_stats_finish(double* stats, const double* partial, long long g,
                                  double loss_div, double correct_div) {
    // stats (2,) += [sum of partial[:, 0] / loss_div, sum of partial[:, 1] / correct_div];
    // one block of 256 threads, fixed order
    double loss = 0.0, correct = 0.0;
    for (long long b = threadIdx.x; b < g; b += FASTMLP_THREADS) {
        loss += partial[2 * b];
        correct += partial[2 * b + 1];
    }
    loss = block_sum(loss);
    correct = block_sum(correct);
    if (threadIdx.x == 0) {
        stats[0] += loss / loss_div;
        stats[1] += correct / correct_div;
    }
}
