// kernels/norm.cu -- batch normalisation, forward (training and evaluation) and backward.
//
// Must match (fastmlp/backend/reference.py): batchnorm_forward, batchnorm_backward.
// CPU twins with the same names: fastmlp/backend/cpu/norm.py. Each reference op is
// split into passes that fastmlp/backend/cuda/norm.py launches in order under its name:
// forward in training channel_sums (of x) + batchnorm_mean + channel_sums (of the squared
// deviations) + batchnorm_var + batchnorm_apply, in evaluation batchnorm_eval_stats +
// batchnorm_apply; backward batchnorm_backward_sums + batchnorm_backward_finish +
// batchnorm_backward_apply.
//
// Shapes (row-major): x, y, dy, dx (N, C, H*W) (H*W = 1 for (N, F) input, F = C); the
// per-channel mean, invstd, running statistics and partial sums are float64, the
// statistics are summed in double; the element-wise passes compute in T (float or double).
//
// Launch configuration (fastmlp/backend/cuda/norm.py): the element-wise passes
// (batchnorm_apply, batchnorm_backward_apply) run a 1-D grid-stride loop, 256 threads a
// block. The per-channel reductions (channel_sums, batchnorm_backward_sums) run a grid
// (G, C) of 256 threads, G a function of the shape only; block (g, ch) sums its share of
// channel ch in a fixed tree (block_sum) into partial[g, ch]; the per-channel passes
// (batchnorm_mean, batchnorm_var, batchnorm_eval_stats, batchnorm_backward_finish), one
// thread a channel, add the G partials in order. No atomics: bitwise reproducible.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

#include "reduce.cuh"
#include "channel_sums.cuh"

__global__ void batchnorm_mean(double* mean, const double* partial, long long g, long long c, long long count) {
    // mean (C,) = the G partial sums of each channel, in order, over N*H*W
    const long long ch = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0;
    for (long long r = 0; r < g; ++r) s += partial[r * c + ch];
    mean[ch] = s / (double)count;
}

__global__ void batchnorm_var(double* invstd, double* running_mean, double* running_var, const double* mean,
                              const double* partial, long long g, long long c, long long count,
                              double momentum, double eps) {
    // from the partial sums of squared deviations: invstd = 1/sqrt(var + eps) (biased var);
    // running = momentum * running + (1 - momentum) * batch, with the unbiased variance
    const long long ch = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0;
    for (long long r = 0; r < g; ++r) s += partial[r * c + ch];
    const double var = s / (double)count;
    const double unbiased = count > 1 ? var * (double)count / (double)(count - 1) : var;
    invstd[ch] = 1.0 / sqrt(var + eps);
    running_mean[ch] = momentum * running_mean[ch] + (1.0 - momentum) * mean[ch];
    running_var[ch] = momentum * running_var[ch] + (1.0 - momentum) * unbiased;
}

__global__ void batchnorm_eval_stats(double* mean, double* invstd, const double* running_mean,
                                     const double* running_var, long long c, double eps) {
    // evaluation: the running statistics, as the mean and invstd that forward and backward use
    const long long ch = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    mean[ch] = running_mean[ch];
    invstd[ch] = 1.0 / sqrt(running_var[ch] + eps);
}

template <typename T>
__global__ void batchnorm_apply(T* y, const T* x, const double* mean, const double* invstd, const T* gamma,
                                const T* beta, long long n, long long c, long long l) {
    // y (N, C, H*W) = (x - mean) * gamma * invstd + beta, per channel, arithmetic in T
    const long long total = n * c * l;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long ch = (e / l) % c;
        const T mu = (T)mean[ch];
        const T scale = gamma[ch] * (T)invstd[ch];
        y[e] = (x[e] - mu) * scale + beta[ch];
    }
}

template <typename T>
__global__ void batchnorm_backward_sums(double* partial, const T* dy, const T* x, const double* mean,
                                        long long n, long long c, long long l) {
    // partial (G, 2C) float64: block (g, ch) sums dy into column ch and dy * (x - mean)
    // into column C + ch over its share of channel ch
    const long long ch = blockIdx.y;
    const long long count = n * l;
    const double mu = mean[ch];
    double s1 = 0.0, s2 = 0.0;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (long long)gridDim.x * blockDim.x) {
        const long long img = k / l;
        const long long at = (img * c + ch) * l + (k - img * l);
        const double g = (double)dy[at];
        s1 += g;
        s2 += g * ((double)x[at] - mu);
    }
    s1 = block_sum(s1);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        partial[(long long)blockIdx.x * 2 * c + ch] = s1;
        partial[(long long)blockIdx.x * 2 * c + c + ch] = s2;
    }
}

template <typename T>
__global__ void batchnorm_backward_finish(T* dgamma, T* dbeta, double* coef, const double* partial,
                                          const double* invstd, long long g, long long c, long long count,
                                          int training) {
    // dbeta = sum dy, dgamma = sum dy * xhat (the G partials in order); coef (2C,) float64
    // receives the per-channel terms of dx: sum dy / (N*H*W) and sum dy * xhat / (N*H*W)
    // in training (the batch statistics depend on x), zeros in evaluation
    const long long ch = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s1 = 0.0, s2 = 0.0;
    for (long long r = 0; r < g; ++r) {
        s1 += partial[r * 2 * c + ch];
        s2 += partial[r * 2 * c + c + ch];
    }
    s2 *= invstd[ch];
    dbeta[ch] = (T)s1;
    dgamma[ch] = (T)s2;
    coef[ch] = training ? s1 / (double)count : 0.0;
    coef[c + ch] = training ? s2 / (double)count : 0.0;
}

template <typename T>
__global__ void batchnorm_backward_apply(T* dx, const T* dy, const T* x, const double* mean,
                                         const double* invstd, const T* gamma, const double* coef,
                                         long long n, long long c, long long l) {
    // dx (N, C, H*W) = gamma * invstd * (dy - coef[ch] - xhat * coef[C + ch]), arithmetic in T
    const long long total = n * c * l;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long ch = (e / l) % c;
        const T inv = (T)invstd[ch];
        const T xhat = (x[e] - (T)mean[ch]) * inv;
        dx[e] = gamma[ch] * inv * (dy[e] - (T)coef[ch] - xhat * (T)coef[c + ch]);
    }
}
