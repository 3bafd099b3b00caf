// kernels/optim.cu -- one-launch optimizer steps over the flat parameter buffer.
//
// Must match (fastmlp/backend/reference.py): sgd_update, adam_update,
// add_reg_grad, reg_penalty (torch.optim.SGD with momentum / nesterov and
// dampening 0, and torch.optim.Adam, with the Keras L1/L2 gradient
// l1 * sign(w) + 2 * l2 * w added to the gradient; the penalty is
// l1 * sum |w| + l2 * sum w^2). CPU twins with the same names:
// fastmlp/backend/cpu/optim.py.
//
// Precision: the updates compute in T, the parameter dtype, as torch.optim does (the
// updates are meant to match torch's step by step), and as the CPU twins do,
// operation for operation: the scalars (lr, momentum, betas, eps, l1, 2 * l2, Adam's
// bias-corrected step size and sqrt(1 - beta2^t)) are formed in double and rounded to
// T once, 1 - beta before the rounding; every other operation is one T operation in the
// CPU twin's order. This family is compiled with --fmad=false (cuda/source.py), so no
// a * b + c is contracted into an fma the CPU does not do: float32 updates agree with
// the CPU's to the last bit, up to denormals (flushed to zero on the GPU) and the last
// bit of pow in the bias corrections. reg_penalty is part of the loss and sums in double.
//
// Shapes: params, prev, buf, m, v, grads are (NP,) of T (float or double);
// seg_start and seg_stop (NS,) long long (the starts increasing), seg_l1 and seg_l2
// (NS,) double: segment s covers [seg_start[s], seg_stop[s]) and carries its L1/L2
// coefficients. Elements outside every segment (the alignment padding of
// fastmlp/params.py) are never read or written: the padding stays 0, where an Adam
// step with eps = 0 would compute 0/0. prev receives the parameters
// before the step; bad (1,) int or long long counts non-finite new parameters
// (added into, with an integer atomicAdd by the threads that saw one; the
// count is exact whatever the order).
//
// Launch configuration (fastmlp/backend/cuda/optim.py): 1-D grid-stride loop over NP,
// 256 threads a block. Each thread finds its segment by binary search of the
// small seg_start table (read through the cache; NS is a few per layer).
// reg_penalty: G blocks (G a function of NP only) each write their fixed-tree
// sum to partial (G,) float64; reg_penalty_finish (one block) sums partial in
// a fixed order into out[0]. No float atomics: the penalty is reproducible.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

#include "reduce.cuh"

__device__ __forceinline__ int find_segment(const long long* seg_start, const long long* seg_stop,
                                            long long s, long long i) {
    // the segment k with seg_start[k] <= i < seg_stop[k], or -1
    if (s <= 0 || i < seg_start[0]) return -1;
    long long lo = 0, hi = s - 1;
    while (lo < hi) {  // largest lo with seg_start[lo] <= i
        const long long mid = (lo + hi + 1) / 2;
        if (seg_start[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return i < seg_stop[lo] ? (int)lo : -1;
}

template <typename T>
__device__ __forceinline__ T reg_grad(T w, double l1, double l2) {
    // d/dw of l1 |w| + l2 w^2 in T: l1 * sign(w) + (2 l2) * w, sign(0) = 0 as np.sign;
    // exactly 0 for a finite w when l1 = l2 = 0
    const T sign = w > T(0) ? T(1) : (w < T(0) ? T(-1) : T(0));
    return (T)l1 * sign + (T)(2.0 * l2) * w;
}

__device__ __forceinline__ void add_count(int* bad, int k) { atomicAdd(bad, k); }
__device__ __forceinline__ void add_count(long long* bad, int k) {
    atomicAdd(reinterpret_cast<unsigned long long*>(bad), (unsigned long long)(long long)k);
}

template <typename T, typename B>
__global__ void sgd_update(T* params, T* prev, T* buf, B* bad, const T* grads,
                           const long long* seg_start, const long long* seg_stop,
                           const double* seg_l1, const double* seg_l2,
                           long long p, long long s, double lr, double momentum, int nesterov) {
    // g = grads + reg; with momentum: buf = momentum * buf + g, g = nesterov ? g + momentum * buf : buf;
    // params = params - lr * g. buf is untouched (may be NULL) when momentum == 0.
    const T lr_t = (T)lr, mom = (T)momentum;
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0) continue;
        const T w = params[i];
        const T g = grads[i] + reg_grad(w, seg_l1[seg], seg_l2[seg]);
        T step = g;
        if (mom != T(0)) {
            const T b = mom * buf[i] + g;
            buf[i] = b;
            step = nesterov ? g + mom * b : b;
        }
        const T wn = w - lr_t * step;
        prev[i] = w;
        params[i] = wn;
        if (!isfinite(wn)) ++nbad;
    }
    if (nbad) add_count(bad, nbad);
}

template <typename T, typename B>
__global__ void adam_update(T* params, T* prev, T* m, T* v, B* bad, const T* grads,
                            const long long* seg_start, const long long* seg_stop,
                            const double* seg_l1, const double* seg_l2, long long p, long long s,
                            double lr, double beta1, double beta2, double eps, const long long* step) {
    // *step: the step's count, from 1 (in device memory: a CUDA graph replays it as it
    // changes); m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    // params -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
    __shared__ double bias_corrections[2];
    if (threadIdx.x == 0) {  // once a block, not once a thread: pow is dear in double
        const double t = (double)step[0];
        bias_corrections[0] = lr / (1.0 - pow(beta1, t));
        bias_corrections[1] = sqrt(1.0 - pow(beta2, t));
    }
    __syncthreads();
    const T step_size = (T)bias_corrections[0], sqrt_bc2 = (T)bias_corrections[1];
    const T b1 = (T)beta1, b2 = (T)beta2, eps_t = (T)eps;
    const T one_m_b1 = (T)(1.0 - beta1), one_m_b2 = (T)(1.0 - beta2);
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0) continue;
        const T w = params[i];
        const T g = grads[i] + reg_grad(w, seg_l1[seg], seg_l2[seg]);
        const T mi = b1 * m[i] + one_m_b1 * g;
        const T vi = b2 * v[i] + one_m_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const T wn = w - step_size * mi / (sqrt(vi) / sqrt_bc2 + eps_t);
        prev[i] = w;
        params[i] = wn;
        if (!isfinite(wn)) ++nbad;
    }
    if (nbad) add_count(bad, nbad);
}

template <typename T>
__global__ void add_reg_grad(T* grads, const T* params, const long long* seg_start,
                             const long long* seg_stop, const double* seg_l1, const double* seg_l2,
                             long long p, long long s) {
    // grads (NP,) += l1 * sign(w) + 2 * l2 * w inside the regularised segments; others untouched
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0 || (seg_l1[seg] == 0.0 && seg_l2[seg] == 0.0)) continue;
        grads[i] = grads[i] + reg_grad(params[i], seg_l1[seg], seg_l2[seg]);
    }
}

template <typename T>
__global__ void reg_penalty(double* partial, const T* params, const long long* seg_start,
                            const long long* seg_stop, const double* seg_l1, const double* seg_l2,
                            long long p, long long s) {
    // partial (G,) = this block's sum of l1 |w| + l2 w^2 over the elements inside segments
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0) continue;
        const double w = (double)params[i];
        acc += seg_l1[seg] * fabs(w) + seg_l2[seg] * w * w;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void reg_penalty_finish(double* out, const double* partial, long long g) {
    // out (1,) float64 = sum of partial (G,) (assigned, not added); one block of 256 threads
    double acc = 0.0;
    for (long long b = threadIdx.x; b < g; b += blockDim.x) acc += partial[b];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = acc;
}
