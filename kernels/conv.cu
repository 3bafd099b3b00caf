// kernels/conv.cu -- the image layers: convolution by im2col / col2im and its bias,
// max pooling, batch normalisation and dropout.
//
// Must match (fastmlp/backend/reference.py): im2col, col2im, conv_bias_forward,
// conv_bias_backward, maxpool_forward, maxpool_backward, conv_bias_act_pool_forward,
// conv_bias_act_pool_backward, transpose, batchnorm_forward,
// batchnorm_backward, dropout_forward, dropout_backward.
// CPU twins with the same names: fastmlp/backend/cpu_kernels.py. A reference op
// that reduces is split here into passes (conv_bias_backward + column_sums;
// conv_bias_act_pool_backward + channel_sums + column_sums over dzt seen as (N*L, M, 1);
// channel_sums + batchnorm_mean / batchnorm_var + batchnorm_apply; ...) that
// fastmlp/backend/cuda.py launches in order under the reference op's name.
//
// Shapes (row-major): x, dx (N, C, H, W); cols (C*KH*KW, N*L) with column
// n*L + oh*OW + ow and row (c*KH + i)*KW + j, L = OH*OW,
// OH = (H + 2P - KH) / S + 1 (floor); z, dz (M, N*L); y, dy of a convolution
// (N, M, L); max pooling y, dy, argmax (N*C, OH, OW), argmax int32 = ih*W + iw
// in the image plane (fused after a convolution: zt, dzt (N*L, M) = z, dz transposed,
// y, dy, argmax (N, M, PH, PW), argmax = oh*OW + ow in the conv output plane);
// batch norm x, y, dy, dx (N, C, L) (L = 1 for (N, F)
// input), per-channel mean, invstd, running statistics and partial sums
// float64; dropout flat (size,). T is float or double.
//
// Launch configuration (fastmlp/backend/cuda.py): element-wise kernels
// (im2col, col2im, conv_bias_forward, maxpool_*, conv_bias_act_pool_*, transpose, batchnorm_apply,
// batchnorm_backward_apply, dropout_*) run a 1-D grid-stride loop, 256 threads
// a block, one thread an output element, consecutive threads on consecutive
// elements so that writes coalesce. Per-channel reductions (conv_bias_backward,
// channel_sums, batchnorm_backward_sums) run a grid (G, C) of 256 threads, G a
// function of the shape only; block (g, c) sums its share of channel c in a
// fixed tree into partial[g, c]; a second kernel (one thread a channel) adds
// the G partials in order.
//
// Determinism: no atomics anywhere. col2im, maxpool_backward and
// conv_bias_act_pool_backward gather: one
// thread per input pixel sums the windows that cover it, in the CPU twin's
// order (row-major over the kernel, then over the outputs), so results are
// bitwise reproducible for a given shape, and equal to the CPU's for col2im.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda_source.py (e.g. im2col<float>);
// no host headers, CUDA built-ins only.

#define FASTMLP_THREADS 256

__device__ __forceinline__ double block_sum(double* sums, double s) {
    // fixed-order tree over the 256 threads of a block; every thread gets the total
    sums[threadIdx.x] = s;
    __syncthreads();
    for (int half = FASTMLP_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
        __syncthreads();
    }
    const double total = sums[0];
    __syncthreads();
    return total;
}

// --- convolution ------------------------------------------------------------------

template <typename T>
__global__ void im2col(T* cols, const T* x, long long n, int c, int h, int w, int kh, int kw,
                       int stride, int pad, int oh, int ow) {
    // cols (C*KH*KW, N*L) from x (N, C, H, W); zeros in the padding
    const long long npix = (long long)oh * ow;
    const long long ncols = n * npix;
    const long long total = (long long)c * kh * kw * ncols;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long r = e / ncols;
        const long long col = e - r * ncols;
        const long long img = col / npix;
        const int pix = (int)(col - img * npix);
        const int p = pix / ow, q = pix - (pix / ow) * ow;
        const int ch = (int)(r / (kh * kw));
        const int rem = (int)(r - (long long)ch * kh * kw);
        const int i = rem / kw, j = rem - (rem / kw) * kw;
        const int ih = p * stride + i - pad, iw = q * stride + j - pad;
        cols[e] = (ih >= 0 && ih < h && iw >= 0 && iw < w)
                      ? x[((img * c + ch) * h + ih) * (long long)w + iw] : T(0);
    }
}

template <typename T>
__global__ void col2im(T* dx, const T* cols, long long n, int c, int h, int w, int kh, int kw,
                       int stride, int pad, int oh, int ow) {
    // dx (N, C, H, W): each pixel sums the entries of cols (C*KH*KW, N*L) that im2col
    // copied from it, in (i, j) order -- a gather, no atomics
    const long long npix = (long long)oh * ow;
    const long long ncols = n * npix;
    const long long total = n * c * (long long)h * w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int iw = (int)(e % w);
        const int ih = (int)((e / w) % h);
        const long long plane = e / ((long long)h * w);
        const int ch = (int)(plane % c);
        const long long img = plane / c;
        T s = T(0);
        for (int i = 0; i < kh; ++i) {
            const int py = ih + pad - i;
            if (py < 0 || py % stride != 0) continue;
            const int p = py / stride;
            if (p >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int px = iw + pad - j;
                if (px < 0 || px % stride != 0) continue;
                const int q = px / stride;
                if (q >= ow) continue;
                const long long r = ((long long)ch * kh + i) * kw + j;
                s += cols[r * ncols + img * npix + (long long)p * ow + q];
            }
        }
        dx[e] = s;
    }
}

template <typename T>
__global__ void conv_bias_forward(T* y, const T* z, const T* b, long long n, long long m, long long l) {
    // y (N, M, L) = z (M, N*L) laid out per image, plus b (M,)
    const long long total = n * m * l;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long t = e % l;
        const long long ch = (e / l) % m;
        const long long img = e / (l * m);
        y[e] = z[ch * n * l + img * l + t] + b[ch];
    }
}

template <typename T>
__global__ void conv_bias_backward(T* dz, double* partial, const T* dy, long long n, long long m, long long l) {
    // dz (M, N*L) = dy (N, M, L) laid out as z; partial (G, M) float64: block (g, ch)
    // sums its share of channel ch (finished by column_sums into db)
    __shared__ double sums[FASTMLP_THREADS];
    const long long ch = blockIdx.y;
    const long long count = n * l;
    double s = 0.0;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (long long)gridDim.x * blockDim.x) {
        const long long img = k / l;
        const T v = dy[(img * m + ch) * l + (k - img * l)];
        dz[ch * count + k] = v;
        s += (double)v;
    }
    s = block_sum(sums, s);
    if (threadIdx.x == 0) partial[(long long)blockIdx.x * m + ch] = s;
}

template <typename T>
__global__ void column_sums(T* out, const double* partial, long long g, long long m) {
    // out (M,) = sums over the G rows of partial (G, M), in row order; a thread a column
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    double s = 0.0;
    for (long long r = 0; r < g; ++r) s += partial[r * m + j];
    out[j] = (T)s;
}

// --- max pooling ------------------------------------------------------------------

template <typename T>
__global__ void maxpool_forward(T* y, int* argmax, const T* x, long long planes, int h, int w, int k,
                                int stride, int oh, int ow) {
    // y, argmax (N*C, OH, OW): the max of each KxK window of x (N*C, H, W) and where it is;
    // the first maximum in row-major window order wins ties; a NaN counts as the maximum
    const long long npix = (long long)oh * ow;
    const long long total = planes * npix;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / npix;
        const int pix = (int)(e - plane * npix);
        const int ih0 = (pix / ow) * stride, iw0 = (pix - (pix / ow) * ow) * stride;
        const T* xp = x + plane * h * (long long)w;
        T best = xp[ih0 * w + iw0];
        int arg = ih0 * w + iw0;
        for (int i = 0; i < k; ++i) {
            for (int j = 0; j < k; ++j) {
                const int a = (ih0 + i) * w + iw0 + j;
                const T v = xp[a];
                if (v > best || (v != v && best == best)) {
                    best = v;
                    arg = a;
                }
            }
        }
        y[e] = best;
        argmax[e] = arg;
    }
}

template <typename T>
__global__ void maxpool_backward(T* dx, const T* dy, const int* argmax, long long planes, int h, int w,
                                 int k, int stride, int oh, int ow) {
    // dx (N*C, H, W): each pixel sums dy over the windows whose argmax it is, in
    // row-major window order -- a gather, no atomics
    const long long npix = (long long)oh * ow;
    const long long total = planes * h * (long long)w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / ((long long)h * w);
        const int a = (int)(e - plane * h * (long long)w);
        const int ih = a / w, iw = a - (a / w) * w;
        // windows p with p*S <= ih < p*S + K, likewise q
        const int p_lo = ih - k + 1 <= 0 ? 0 : (ih - k + stride) / stride;
        const int q_lo = iw - k + 1 <= 0 ? 0 : (iw - k + stride) / stride;
        const int p_hi = min(oh - 1, ih / stride), q_hi = min(ow - 1, iw / stride);
        const int* ap = argmax + plane * npix;
        const T* dyp = dy + plane * npix;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                if (ap[p * ow + q] == a) s += dyp[p * ow + q];
        dx[e] = s;
    }
}

// --- convolution epilogue fused with its activation and max pooling -----------------
// Activation codes and derivatives: kernels/activation.cuh, shared with dense.cu.

#include "activation.cuh"

template <typename T>
__global__ void conv_bias_act_pool_forward(T* y, int* argmax, const T* zt, const T* b, long long n,
                                           long long m, int ph, int pw, int oh, int ow, int code,
                                           double alpha, int k, int stride) {
    // y, argmax (N, M, PH, PW): the max of each KxK window (stride S) of act(z + b), with
    // zt (N*L, M) = z transposed seen as (N, M, OH, OW), and where it is (oh*OW + ow); the
    // first maximum in row-major window order wins ties; a NaN counts as the maximum
    const long long npix = (long long)oh * ow;
    const long long nout = (long long)ph * pw;
    const long long total = n * m * nout;
    const T al = (T)alpha;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / nout;            // img * M + ch
        const int pix = (int)(e - plane * nout);
        const long long ch = plane % m, img = plane / m;
        const int ih0 = (pix / pw) * stride, iw0 = (pix - (pix / pw) * pw) * stride;
        const T* zp = zt + img * npix * m + ch;      // element a of the plane: zp[a * m]
        const T bias = b[ch];
        int arg = ih0 * ow + iw0;
        T best = act_value(zp[(long long)arg * m] + bias, code, al);
        for (int i = 0; i < k; ++i) {
            for (int j = 0; j < k; ++j) {
                const int a = (ih0 + i) * ow + iw0 + j;
                const T v = act_value(zp[(long long)a * m] + bias, code, al);
                if (v > best || (v != v && best == best)) {
                    best = v;
                    arg = a;
                }
            }
        }
        y[e] = best;
        argmax[e] = arg;
    }
}

template <typename T>
__global__ void conv_bias_act_pool_backward(T* dzt, const T* dy, const T* y, const int* argmax, long long n,
                                            long long m, int ph, int pw, int oh, int ow, int code,
                                            double alpha, int k, int stride) {
    // dzt (N*L, M), dz transposed: each conv output pixel sums dy * act'(y) (dy, y, argmax
    // (N, M, PH, PW)) over the windows whose argmax it is, in row-major window order -- a
    // gather, no atomics; 0 elsewhere. db is then channel_sums + column_sums over dzt (cuda.py).
    const long long npix = (long long)oh * ow;
    const long long nout = (long long)ph * pw;
    const long long total = n * npix * m;
    const T al = (T)alpha;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long row = e / m;                 // img * L + a
        const long long ch = e - row * m;
        const long long img = row / npix;
        const int a = (int)(row - img * npix);
        const int ih = a / ow, iw = a - (a / ow) * ow;
        // windows p with p*S <= ih < p*S + K, likewise q
        const int p_lo = ih - k + 1 <= 0 ? 0 : (ih - k + stride) / stride;
        const int q_lo = iw - k + 1 <= 0 ? 0 : (iw - k + stride) / stride;
        const int p_hi = min(ph - 1, ih / stride), q_hi = min(pw - 1, iw / stride);
        const long long base = (img * m + ch) * nout;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                const long long o = base + (long long)p * pw + q;
                if (argmax[o] == a) s += dy[o] * act_grad(y[o], code, al);
            }
        dzt[e] = s;
    }
}

template <typename T>
__global__ void transpose(T* out, const T* a, long long na, long long nb) {
    // out (B, A) = a.T for a (A, B); one thread an element of out
    const long long total = na * nb;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long j = e / na;
        out[e] = a[(e - j * na) * nb + j];
    }
}

// --- batch normalisation -----------------------------------------------------------

template <typename T>
__global__ void channel_sums(double* partial, const T* x, const double* center, long long n, long long c,
                             long long l, int squared) {
    // partial (G, C) float64: block (g, ch) sums x over its share of channel ch's N*L
    // values, or (x - center[ch])^2 when squared (center (C,) is read only then)
    __shared__ double sums[FASTMLP_THREADS];
    const long long ch = blockIdx.y;
    const long long count = n * l;
    const double mu = squared ? center[ch] : 0.0;
    double s = 0.0;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (long long)gridDim.x * blockDim.x) {
        const long long img = k / l;
        const double v = (double)x[(img * c + ch) * l + (k - img * l)];
        s += squared ? (v - mu) * (v - mu) : v;
    }
    s = block_sum(sums, s);
    if (threadIdx.x == 0) partial[(long long)blockIdx.x * c + ch] = s;
}

__global__ void batchnorm_mean(double* mean, const double* partial, long long g, long long c, long long count) {
    // mean (C,) = the G partial sums of each channel, in order, over N*L
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
    // y (N, C, L) = (x - mean) * gamma * invstd + beta, per channel, arithmetic in T
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
    __shared__ double sums[FASTMLP_THREADS];
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
    s1 = block_sum(sums, s1);
    s2 = block_sum(sums, s2);
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
    // receives the per-channel terms of dx: sum dy / (N*L) and sum dy * xhat / (N*L)
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
    // dx (N, C, L) = gamma * invstd * (dy - coef[ch] - xhat * coef[C + ch]), arithmetic in T
    const long long total = n * c * l;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long ch = (e / l) % c;
        const T inv = (T)invstd[ch];
        const T xhat = (x[e] - (T)mean[ch]) * inv;
        dx[e] = gamma[ch] * inv * (dy[e] - (T)coef[ch] - xhat * (T)coef[c + ch]);
    }
}

// --- dropout -----------------------------------------------------------------------

template <typename T>
__global__ void dropout_forward(T* y, T* mask, const T* x, long long size, double rate, double keep_scale) {
    // mask: uniform [0, 1) draws in, the multiplier out: keep_scale = 1/(1 - rate) (from
    // the host) where the draw is >= rate, else 0; y = x * mask. Flat (size,).
    const T scale = (T)keep_scale;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < size;
         e += (long long)gridDim.x * blockDim.x) {
        const T m = (double)mask[e] >= rate ? scale : T(0);
        mask[e] = m;
        y[e] = x[e] * m;
    }
}

template <typename T>
__global__ void dropout_backward(T* dx, const T* dy, const T* mask, long long size) {
    // dx = dy * mask, flat (size,)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < size;
         e += (long long)gridDim.x * blockDim.x)
        dx[e] = dy[e] * mask[e];
}
