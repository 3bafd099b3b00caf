// kernels/dense.cu -- the Dense layer epilogues: bias + activation forward,
// activation backward fused with the bias-gradient column reduction, and the
// standalone activations.
//
// Must match (fastmlp/backend/reference.py): bias_act_forward,
// act_backward_bias_grad, act_forward, act_backward, with the activation codes
// of fastmlp/backend/codes.py (activation.cuh). The derivative is written from the
// output a = act(x) (reference.act_grad_from_output): subgradient at 0 is 0 for ReLU
// and alpha for LeakyReLU. CPU twins with the same names: fastmlp/backend/cpu/dense.py.
//
// Shapes: z, dz, da, a are (N, M) row-major, b and db are (M,); act_forward and
// act_backward see flat arrays of any size. T is float or double; the hot-path
// arithmetic stays in T, only the bias-gradient sums are carried in double.
//
// Launch configuration (fastmlp/backend/cuda/dense.py):
//   bias_act_forward, act_forward, act_backward: 1-D grid-stride loop,
//     256 threads, enough blocks to cover the array (capped).
//   act_backward_bias_grad: block (BX, BY) with BX = min(32, next_pow2(M)),
//     BX * BY = 256; grid (ceil(M / BX), G), G a function of (N, M) only.
//     Block (x, g) writes dz for its BX columns on rows g*BY + ty, stepping
//     by G*BY, and stores its column sums in partial (G, M) float64.
//   bias_grad_reduce: M blocks of 256 threads; block j sums partial[:, j] in a
//     fixed order into db[j].
//   Two passes and fixed trees, no float atomics: db is bitwise reproducible
//   for a given shape, run to run and GPU to GPU.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py (e.g. bias_act_forward<float>);
// no host headers, CUDA built-ins only.

#include "activation.cuh"
#include "reduce.cuh"

template <typename T>
__global__ void bias_act_forward(T* z, const T* b, long long n, long long m, int code, double alpha) {
    // z (N, M) overwritten with act(z + b); b (M,)
    const long long total = n * m;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    // column index carried along the grid-stride loop: one division per thread
    long long j = e % m;
    const long long jstep = stride % m;
    const T al = (T)alpha;
    for (; e < total; e += stride) {
        z[e] = act_value(z[e] + b[j], code, al);
        j += jstep;
        if (j >= m) j -= m;
    }
}

template <typename T>
__global__ void act_backward_bias_grad(T* dz, double* partial, const T* da, const T* a,
                                       long long n, long long m, int code, double alpha) {
    // dz (N, M) = da * act'(a); partial (G, M) float64: partial[g, j] = sum of
    // dz[i, j] over the rows i of block row g (reduced by bias_grad_reduce)
    __shared__ double sums[256];
    const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
    const long long j = (long long)blockIdx.x * bx + tx;
    const T al = (T)alpha;
    double s = 0.0;
    if (j < m) {
        for (long long i = (long long)blockIdx.y * by + ty; i < n; i += (long long)gridDim.y * by) {
            const long long e = i * m + j;
            const T g = da[e] * act_grad(a[e], code, al);
            dz[e] = g;
            s += (double)g;
        }
    }
    sums[ty * bx + tx] = s;
    __syncthreads();
    for (int half = by / 2; half > 0; half /= 2) {  // fixed tree over the rows of the block
        if (ty < half) sums[ty * bx + tx] += sums[(ty + half) * bx + tx];
        __syncthreads();
    }
    if (ty == 0 && j < m) partial[(long long)blockIdx.y * m + j] = sums[tx];
}

template <typename T>
__global__ void bias_grad_reduce(T* db, const double* partial, long long g, long long m) {
    // db (M,) = column sums of partial (G, M); one block of 256 threads per column
    const long long j = blockIdx.x;
    double s = 0.0;
    for (long long r = threadIdx.x; r < g; r += blockDim.x) s += partial[r * m + j];
    s = block_sum(s);
    if (threadIdx.x == 0) db[j] = (T)s;
}

template <typename T>
__global__ void act_forward(T* y, const T* x, long long size, int code, double alpha) {
    // y, x flat (size,); y may alias x
    const T al = (T)alpha;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < size;
         e += (long long)gridDim.x * blockDim.x)
        y[e] = act_value(x[e], code, al);
}

template <typename T>
__global__ void act_backward(T* dx, const T* dy, const T* y, long long size, int code, double alpha) {
    // dx = dy * act'(y), flat (size,); y is the forward output
    const T al = (T)alpha;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < size;
         e += (long long)gridDim.x * blockDim.x)
        dx[e] = dy[e] * act_grad(y[e], code, al);
}
