// kernels/pool.cu -- pooling: max pooling (MaxPool2D on its own; after a Conv2D it is fused
// into conv.cu's conv_bias_act_pool_*), average pooling (AvgPool2D), and global average
// and max pooling over each whole plane (GlobalAveragePooling2D, GlobalMaxPooling2D).
//
// Must match (fastmlp/backend/reference.py): maxpool_forward, maxpool_backward,
// avgpool_forward, avgpool_backward, global_avgpool_forward, global_avgpool_backward,
// global_maxpool_forward, global_maxpool_backward.
// CPU twins with the same names: fastmlp/backend/cpu/pool.py.
//
// Global pooling: y, dy, argmax (N, C) seen as (N*C,), one thread a plane in the forward
// passes (the sum in double, in row-major order), one thread a pixel in the backward ones.
// Average pooling sums in double too; its backward gathers like maxpool_backward.
//
// Shapes (row-major): x, dx (N, C, H, W) seen as (N*C, H, W); y, dy, argmax (N, C, OH, OW)
// seen as (N*C, OH, OW), OH = (H - K) / S + 1 (floor), K x K windows, stride S, no
// padding; argmax int32 = ih*W + iw in the image plane, the first maximum in row-major
// window order, a NaN counting as the maximum (window.cuh). T is float or double.
//
// Launch configuration (fastmlp/backend/cuda/pool.py): a 1-D grid-stride loop, 256
// threads a block, one thread an output element (maxpool_forward) or an input pixel
// (maxpool_backward). maxpool_backward gathers: each pixel sums dy over the windows
// whose argmax it is, in row-major window order -- no atomics, bitwise reproducible.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

#include "window.cuh"

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
        const T* xp = x + plane * h * (long long)w;
        T best;
        argmax[e] = window_argmax([xp](int a) { return xp[a]; }, (pix / ow) * stride,
                                  (pix - (pix / ow) * ow) * stride, k, w, best);
        y[e] = best;
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
        int p_lo, p_hi, q_lo, q_hi;
        covering_windows(a / w, k, stride, oh, p_lo, p_hi);
        covering_windows(a - (a / w) * w, k, stride, ow, q_lo, q_hi);
        const int* ap = argmax + plane * npix;
        const T* dyp = dy + plane * npix;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                if (ap[p * ow + q] == a) s += dyp[p * ow + q];
        dx[e] = s;
    }
}

template <typename T>
__global__ void avgpool_forward(T* y, const T* x, long long planes, int h, int w, int k, int stride,
                                int oh, int ow) {
    // y (N*C, OH, OW): the mean of each KxK window of x (N*C, H, W), summed in double
    const long long npix = (long long)oh * ow;
    const long long total = planes * npix;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / npix;
        const int pix = (int)(e - plane * npix);
        const int ih0 = (pix / ow) * stride, iw0 = (pix - (pix / ow) * ow) * stride;
        const T* xp = x + plane * h * (long long)w;
        double s = 0.0;
        for (int i = 0; i < k; ++i)
            for (int j = 0; j < k; ++j) s += (double)xp[(ih0 + i) * w + iw0 + j];
        y[e] = (T)(s / ((double)k * k));
    }
}

template <typename T>
__global__ void avgpool_backward(T* dx, const T* dy, long long planes, int h, int w, int k, int stride,
                                 int oh, int ow) {
    // dx (N*C, H, W): each pixel sums dy / K^2 over the windows that cover it, in row-major
    // window order -- a gather, no atomics
    const long long npix = (long long)oh * ow;
    const long long total = planes * h * (long long)w;
    const T scale = T(1.0 / ((double)k * k));
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / ((long long)h * w);
        const int a = (int)(e - plane * h * (long long)w);
        int p_lo, p_hi, q_lo, q_hi;
        covering_windows(a / w, k, stride, oh, p_lo, p_hi);
        covering_windows(a - (a / w) * w, k, stride, ow, q_lo, q_hi);
        const T* dyp = dy + plane * npix;
        T s = T(0);
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) s += dyp[p * ow + q] * scale;
        dx[e] = s;
    }
}

template <typename T>
__global__ void global_avgpool_forward(T* y, const T* x, long long planes, long long hw) {
    // y (N*C,): the mean of each plane of x (N*C, H*W), summed in double
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < planes;
         e += (long long)gridDim.x * blockDim.x) {
        const T* xp = x + e * hw;
        double s = 0.0;
        for (long long t = 0; t < hw; ++t) s += (double)xp[t];
        y[e] = (T)(s / (double)hw);
    }
}

template <typename T>
__global__ void global_avgpool_backward(T* dx, const T* dy, long long planes, long long hw) {
    // dx (N*C, H*W) = dy (N*C,) / (H*W) on every pixel of its plane
    const long long total = planes * hw;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x)
        dx[e] = dy[e / hw] / (T)hw;
}

template <typename T>
__global__ void global_maxpool_forward(T* y, int* argmax, const T* x, long long planes, long long hw) {
    // y, argmax (N*C,): each plane's first maximum and its index ih*W + iw; a NaN counts as
    // the maximum
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < planes;
         e += (long long)gridDim.x * blockDim.x) {
        const T* xp = x + e * hw;
        T best = xp[0];
        int arg = 0;
        for (long long t = 1; t < hw && best == best; ++t) {
            const T v = xp[t];
            if (v > best || v != v) {
                best = v;
                arg = (int)t;
            }
        }
        y[e] = best;
        argmax[e] = arg;
    }
}

template <typename T>
__global__ void global_maxpool_backward(T* dx, const T* dy, const int* argmax, long long planes, long long hw) {
    // dx (N*C, H*W): 0 except at each plane's argmax, which gets its dy
    const long long total = planes * hw;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / hw;
        dx[e] = (e - plane * hw == argmax[plane]) ? dy[plane] : T(0);
    }
}
