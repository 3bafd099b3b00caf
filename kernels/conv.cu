// kernels/conv.cu -- convolution by im2col / col2im, its bias, and its epilogue fused with
// the activation and max pooling that follow it (Conv2D -> act -> MaxPool2D).
//
// Must match (fastmlp/backend/reference.py): im2col, col2im, conv_bias_forward,
// conv_bias_backward, conv_bias_act_pool_forward, conv_bias_act_pool_backward, transpose.
// CPU twins with the same names: fastmlp/backend/cpu/conv.py. A reference op that
// reduces is split here into passes that fastmlp/backend/cuda/conv.py launches in order
// under the reference op's name: conv_bias_backward + column_sums;
// conv_bias_act_pool_backward + channel_sums + column_sums over dzt seen as (N*L, M, 1).
//
// Shapes (row-major, the letters of fastmlp/backend/codes.py): x, dx (N, C, H, W);
// cols (C*KH*KW, N*L) with column n*L + oh*OW + ow and row (c*KH + i)*KW + j, L = OH*OW,
// OH = (H + PT + PB - KH) / S + 1 (floor; codes.padded_output_size), PT, PB the zero rows
// above and below, PL, PR the zero columns left and right (the kernels take PT and PL and the
// output size OH, OW, which says how far the padding reaches below and right); z, dz (M, N*L); y, dy of
// a convolution (N, M, L). Fused: zt, dzt (N*L, M) = z, dz transposed; y, dy, argmax
// (N, M, PH, PW), argmax int32 = oh*OW + ow in the conv output plane. T is float or double.
//
// Launch configuration (fastmlp/backend/cuda/conv.py): element-wise kernels (im2col,
// col2im, conv_bias_forward, conv_bias_act_pool_*, transpose) run a 1-D grid-stride
// loop, 256 threads a block, one thread an output element, consecutive threads on
// consecutive elements so that writes coalesce. The per-channel reductions
// (conv_bias_backward, channel_sums) run a grid (G, M) of 256 threads, G a function of
// the shape only; block (g, ch) sums its share of channel ch in a fixed tree
// (block_sum) into partial[g, ch]; column_sums (one thread a channel) adds the G
// partials in order.
//
// Determinism: no atomics anywhere. col2im and conv_bias_act_pool_backward gather: one
// thread per input pixel sums the windows that cover it, in the CPU twin's order
// (row-major over the kernel, then over the outputs), so results are bitwise
// reproducible for a given shape, and equal to the CPU's for col2im.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py (e.g. im2col<float>);
// no host headers, CUDA built-ins only.

#include "reduce.cuh"
#include "channel_sums.cuh"
#include "activation.cuh"
#include "window.cuh"

template <typename T>
__global__ void im2col(T* cols, const T* x, long long n, int c, int h, int w, int kh, int kw,
                       int stride, int pad_top, int pad_left, int oh, int ow) {
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
        const int ih = p * stride + i - pad_top, iw = q * stride + j - pad_left;
        cols[e] = (ih >= 0 && ih < h && iw >= 0 && iw < w)
                      ? x[((img * c + ch) * h + ih) * (long long)w + iw] : T(0);
    }
}

template <typename T>
__global__ void col2im(T* dx, const T* cols, long long n, int c, int h, int w, int kh, int kw,
                       int stride, int pad_top, int pad_left, int oh, int ow) {
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
            const int py = ih + pad_top - i;
            if (py < 0 || py % stride != 0) continue;
            const int p = py / stride;
            if (p >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int px = iw + pad_left - j;
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
    s = block_sum(s);
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

// --- the epilogue fused with the activation and max pooling ------------------------

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
        const T* zp = zt + img * npix * m + ch;      // element a of the plane: zp[a * m]
        const T bias = b[ch];
        T best;
        argmax[e] = window_argmax([=](int a) { return act_value(zp[(long long)a * m] + bias, code, al); },
                                  (pix / pw) * stride, (pix - (pix / pw) * pw) * stride, k, ow, best);
        y[e] = best;
    }
}

template <typename T>
__global__ void conv_bias_act_pool_backward(T* dzt, const T* dy, const T* y, const int* argmax, long long n,
                                            long long m, int ph, int pw, int oh, int ow, int code,
                                            double alpha, int k, int stride) {
    // dzt (N*L, M), dz transposed: each conv output pixel sums dy * act'(y) (dy, y, argmax
    // (N, M, PH, PW)) over the windows whose argmax it is, in row-major window order -- a
    // gather, no atomics; 0 elsewhere. db is then channel_sums + column_sums over dzt (cuda/conv.py).
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
        int p_lo, p_hi, q_lo, q_hi;
        covering_windows(a / ow, k, stride, ph, p_lo, p_hi);
        covering_windows(a - (a / ow) * ow, k, stride, pw, q_lo, q_hi);
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
    // out (nb, na) = a.T for a (na, nb); one thread an element of out
    const long long total = na * nb;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long j = e / na;
        out[e] = a[(e - j * na) * nb + j];
    }
}
