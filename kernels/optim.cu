// kernels/optim.cu -- one-launch optimizer steps over the flat parameter buffer.
//
// Must match (fastmlp/backend/reference.py): sgd_update, adam_update,
// add_reg_grad, reg_penalty (torch.optim.SGD with momentum / nesterov and
// dampening 0, and torch.optim.Adam, with the Keras L1/L2 gradient
// l1 * sign(w) + 2 * l2 * w added to the gradient; the penalty is
// l1 * sum |w| + l2 * sum w^2). CPU twins with the same names:
// fastmlp/backend/cpu_kernels.py.
//
// Shapes: params, prev, buf, m, v, grads are (P,) of T (float or double);
// seg_start (S+1,) long long, seg_l1 and seg_l2 (S,) double: segment s covers
// [seg_start[s], seg_start[s+1]) and carries its L1/L2 coefficients; elements
// outside every segment get no regularisation. prev receives the parameters
// before the step; bad (1,) int or long long counts non-finite new parameters
// (added into, with an integer atomicAdd by the threads that saw one; the
// count is exact whatever the order). Update arithmetic runs in double, as in
// the CPU twins, and the new parameter is rounded to T before the finiteness
// test.
//
// Launch configuration (fastmlp/backend/cuda.py): 1-D grid-stride loop over P,
// 256 threads a block. Each thread finds its segment by binary search of the
// small seg_start table (read through the cache; S is a few per layer).
// reg_penalty: G blocks (G a function of P only) each write their fixed-tree
// sum to partial (G,) float64; reg_penalty_finish (one block) sums partial in
// a fixed order into out[0]. No float atomics: the penalty is reproducible.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda_source.py; CUDA built-ins only.

__device__ __forceinline__ int find_segment(const long long* seg_start, long long s, long long i) {
    // the segment s with seg_start[s] <= i < seg_start[s+1], or -1
    if (s <= 0 || i < seg_start[0] || i >= seg_start[s]) return -1;
    long long lo = 0, hi = s - 1;
    while (lo < hi) {  // largest lo with seg_start[lo] <= i
        const long long mid = (lo + hi + 1) / 2;
        if (seg_start[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return (int)lo;
}

__device__ __forceinline__ double reg_grad(double w, double l1, double l2) {
    // d/dw of l1 |w| + l2 w^2, with sign(0) = 0 as np.sign
    const double sign = w > 0.0 ? 1.0 : (w < 0.0 ? -1.0 : 0.0);
    return l1 * sign + 2.0 * l2 * w;
}

__device__ __forceinline__ double reg_grad_at(const long long* seg_start, const double* seg_l1,
                                              const double* seg_l2, long long s, long long i, double w) {
    const int seg = find_segment(seg_start, s, i);
    return seg < 0 ? 0.0 : reg_grad(w, seg_l1[seg], seg_l2[seg]);
}

__device__ __forceinline__ void add_count(int* bad, int k) { atomicAdd(bad, k); }
__device__ __forceinline__ void add_count(long long* bad, int k) {
    atomicAdd(reinterpret_cast<unsigned long long*>(bad), (unsigned long long)(long long)k);
}

template <typename T, typename B>
__global__ void sgd_update(T* params, T* prev, T* buf, B* bad, const T* grads,
                           const long long* seg_start, const double* seg_l1, const double* seg_l2,
                           long long p, long long s, double lr, double momentum, int nesterov) {
    // g = grads + reg; with momentum: buf = momentum * buf + g, g = nesterov ? g + momentum * buf : buf;
    // params = params - lr * g. buf is untouched (may be NULL) when momentum == 0.
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const double w = (double)params[i];
        double g = (double)grads[i] + reg_grad_at(seg_start, seg_l1, seg_l2, s, i, w);
        if (momentum != 0.0) {
            const double b = momentum * (double)buf[i] + g;
            buf[i] = (T)b;
            g = nesterov ? g + momentum * b : b;
        }
        const T wn = (T)(w - lr * g);
        prev[i] = params[i];
        params[i] = wn;
        if (!isfinite(wn)) ++nbad;
    }
    if (nbad) add_count(bad, nbad);
}

template <typename T, typename B>
__global__ void adam_update(T* params, T* prev, T* m, T* v, B* bad, const T* grads,
                            const long long* seg_start, const double* seg_l1, const double* seg_l2,
                            long long p, long long s, double lr, double beta1, double beta2,
                            double eps, const long long* step) {
    // *step: the step's count, from 1 (in device memory: a CUDA graph replays it as it
    // changes); m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    // params -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
    __shared__ double step_size, sqrt_bc2;
    if (threadIdx.x == 0) {  // once a block, not once a thread: pow is dear in double
        const double t = (double)step[0];
        step_size = lr / (1.0 - pow(beta1, t));
        sqrt_bc2 = sqrt(1.0 - pow(beta2, t));
    }
    __syncthreads();
    int nbad = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const double w = (double)params[i];
        const double g = (double)grads[i] + reg_grad_at(seg_start, seg_l1, seg_l2, s, i, w);
        const double mi = beta1 * (double)m[i] + (1.0 - beta1) * g;
        const double vi = beta2 * (double)v[i] + (1.0 - beta2) * g * g;
        m[i] = (T)mi;
        v[i] = (T)vi;
        const T wn = (T)(w - step_size * mi / (sqrt(vi) / sqrt_bc2 + eps));
        prev[i] = params[i];
        params[i] = wn;
        if (!isfinite(wn)) ++nbad;
    }
    if (nbad) add_count(bad, nbad);
}

template <typename T>
__global__ void add_reg_grad(T* grads, const T* params, const long long* seg_start,
                             const double* seg_l1, const double* seg_l2, long long p, long long s) {
    // grads (P,) += l1 * sign(w) + 2 * l2 * w inside the segments; others untouched
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, s, i);
        if (seg < 0) continue;
        const double l1 = seg_l1[seg], l2 = seg_l2[seg];
        if (l1 == 0.0 && l2 == 0.0) continue;
        grads[i] = (T)((double)grads[i] + reg_grad((double)params[i], l1, l2));
    }
}

template <typename T>
__global__ void reg_penalty(double* partial, const T* params, const long long* seg_start,
                            const double* seg_l1, const double* seg_l2, long long p, long long s) {
    // partial (G,) = this block's sum of l1 |w| + l2 w^2 over the elements inside segments
    __shared__ double sums[256];
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p;
         i += (long long)gridDim.x * blockDim.x) {
        const int seg = find_segment(seg_start, s, i);
        if (seg < 0) continue;
        const double w = (double)params[i];
        acc += seg_l1[seg] * fabs(w) + seg_l2[seg] * w * w;
    }
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

__global__ void reg_penalty_finish(double* out, const double* partial, long long g) {
    // out (1,) float64 = sum of partial (G,) (assigned, not added); one block of 256 threads
    __shared__ double sums[256];
    double acc = 0.0;
    for (long long b = threadIdx.x; b < g; b += blockDim.x) acc += partial[b];
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = sums[0];
}
