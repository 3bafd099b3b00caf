// kernels/optim.cu -- one-launch optimizer steps over the flat parameter buffer.
//
// Must match (fastmlp/backend/reference.py): sgd_update, adam_update,
// add_reg_grad, reg_penalty (torch.optim.SGD with momentum / nesterov and
// dampening 0, and torch.optim.Adam, with the Keras L1/L2 gradient
// l1 * sign(w) + 2 * l2 * w added to the gradient; the penalty is
// l1 * sum |w| + l2 * sum w^2), and the full steps grad_clip_factors, sgd_step,
// adam_step (Adam and AdamW), rmsprop_step (torch.optim.RMSprop): the rate read from
// the device scalar lr (so a replayed CUDA graph sees each step's rate), the gradient
// times its segment's clipping factor, clamped to [-clipvalue, clipvalue], plus
// torch's coupled weight decay. CPU twins with the same names:
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
// grad_clip_factors: grad_sq_norms, one block per segment, writes each segment's sum of
// squares into factor (NS,) float64; grad_clip_finish (one block) turns them into the
// factors (for the global norm it sums them in a fixed order first).
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

// -- full steps: the rate from lr (1,) double on the device, clipping, weight decay ------

template <typename T>
__device__ __forceinline__ T clamp_abs(T g, T c) {
    // g within [-c, c] (c = inf: unchanged); NaN stays NaN
    return g > c ? c : (g < -c ? -c : g);
}

template <typename T>
__device__ __forceinline__ T step_grad(T g, T w, double l1, double l2, const double* factor, int seg,
                                       T clipvalue, T weight_decay) {
    // the gradient a full step applies, in T: (g + L1/L2) * factor, clamped, + weight_decay * w
    return clamp_abs((g + reg_grad(w, l1, l2)) * (T)factor[seg], clipvalue) + weight_decay * w;
}

template <typename T>
__global__ void grad_sq_norms(double* factor, const T* grads, const T* params, const long long* seg_start,
                              const long long* seg_stop, const double* seg_l1, const double* seg_l2) {
    // factor[s] = sum over segment s = blockIdx.x of (grads + L1/L2)^2, in double
    const int s = blockIdx.x;
    double acc = 0.0;
    for (long long i = seg_start[s] + threadIdx.x; i < seg_stop[s]; i += blockDim.x) {
        const double g = (double)(grads[i] + reg_grad(params[i], seg_l1[s], seg_l2[s]));
        acc += g * g;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) factor[s] = acc;
}

__global__ void grad_clip_finish(double* factor, long long s, double max_norm, int per_segment) {
    // factor (NS,): sums of squares in, min(1, max_norm / (norm + 1e-6)) out, norm the
    // segment's own (per_segment) or that of all segments; one block of 256 threads
    double total = 0.0;
    for (long long k = threadIdx.x; k < s; k += blockDim.x) total += factor[k];
    total = block_sum(total);  // every thread has read its values before any writes
    for (long long k = threadIdx.x; k < s; k += blockDim.x) {
        const double norm = sqrt(per_segment ? factor[k] : total);
        factor[k] = fmin(1.0, max_norm / (norm + 1e-6));
    }
}

template <typename T, typename B>
__global__ void sgd_step(T* params, T* prev, T* buf, B* bad, const T* grads,
                         const long long* seg_start, const long long* seg_stop,
                         const double* seg_l1, const double* seg_l2, const double* factor, const double* lr,
                         long long p, long long s, double clipvalue, double weight_decay,
                         double momentum, int nesterov) {
    // sgd_update with the rate *lr and the step's gradient (step_grad)
    const T lr_t = (T)lr[0], mom = (T)momentum, cv = (T)clipvalue, wd = (T)weight_decay;
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0) continue;
        const T w = params[i];
        const T g = step_grad(grads[i], w, seg_l1[seg], seg_l2[seg], factor, seg, cv, wd);
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
__global__ void adam_step(T* params, T* prev, T* m, T* v, B* bad, const T* grads,
                          const long long* seg_start, const long long* seg_stop,
                          const double* seg_l1, const double* seg_l2, const double* factor, const double* lr,
                          long long p, long long s, double clipvalue, double weight_decay, int decoupled,
                          double beta1, double beta2, double eps, const long long* step) {
    // adam_update with the rate *lr and the step's gradient; weight decay coupled (in
    // step_grad) or decoupled (AdamW: w * (1 - lr * weight_decay) before the Adam step)
    __shared__ double scalars[3];
    if (threadIdx.x == 0) {
        const double t = (double)step[0], rate = lr[0];
        scalars[0] = rate / (1.0 - pow(beta1, t));
        scalars[1] = sqrt(1.0 - pow(beta2, t));
        scalars[2] = decoupled ? 1.0 - rate * weight_decay : 1.0;
    }
    __syncthreads();
    const T step_size = (T)scalars[0], sqrt_bc2 = (T)scalars[1], decay = (T)scalars[2];
    const T b1 = (T)beta1, b2 = (T)beta2, eps_t = (T)eps, cv = (T)clipvalue;
    const T wd = decoupled ? T(0) : (T)weight_decay;
    const T one_m_b1 = (T)(1.0 - beta1), one_m_b2 = (T)(1.0 - beta2);
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0) continue;
        const T w = params[i];
        const T g = step_grad(grads[i], w, seg_l1[seg], seg_l2[seg], factor, seg, cv, wd);
        const T mi = b1 * m[i] + one_m_b1 * g;
        const T vi = b2 * v[i] + one_m_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const T wn = w * decay - step_size * mi / (sqrt(vi) / sqrt_bc2 + eps_t);
        prev[i] = w;
        params[i] = wn;
        if (!isfinite(wn)) ++nbad;
    }
    if (nbad) add_count(bad, nbad);
}

template <typename T, typename B>
__global__ void rmsprop_step(T* params, T* prev, T* square_avg, T* buf, T* grad_avg, B* bad, const T* grads,
                             const long long* seg_start, const long long* seg_stop,
                             const double* seg_l1, const double* seg_l2, const double* factor,
                             const double* lr, long long p, long long s, double clipvalue,
                             double weight_decay, double alpha, double eps, double momentum, int centered) {
    // torch.optim.RMSprop: sa = alpha sa + (1 - alpha) g^2; centered: ga += (1 - alpha)(g - ga),
    // avg = sqrt(sa - ga^2) + eps, else sqrt(sa) + eps; momentum > 0: buf = momentum buf + g / avg,
    // w -= lr buf; else w -= lr g / avg. buf and grad_avg are not touched unless used.
    const T lr_t = (T)lr[0], a = (T)alpha, one_m_a = (T)(1.0 - alpha), eps_t = (T)eps;
    const T mom = (T)momentum, cv = (T)clipvalue, wd = (T)weight_decay;
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, seg_stop, s, i);
        if (seg < 0) continue;
        const T w = params[i];
        const T g = step_grad(grads[i], w, seg_l1[seg], seg_l2[seg], factor, seg, cv, wd);
        const T si = a * square_avg[i] + one_m_a * g * g;
        square_avg[i] = si;
        T avg;
        if (centered) {
            const T gai = grad_avg[i] + one_m_a * (g - grad_avg[i]);
            grad_avg[i] = gai;
            avg = sqrt(si - gai * gai) + eps_t;
        } else {
            avg = sqrt(si) + eps_t;
        }
        T delta = g / avg;
        if (mom > T(0)) {
            const T b = mom * buf[i] + delta;
            buf[i] = b;
            delta = b;
        }
        const T wn = w - lr_t * delta;
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
