// kernels/dropout.cu -- inverted dropout.
//
// Must match (fastmlp/backend/reference.py): dropout_forward, dropout_backward.
// CPU twins with the same names: fastmlp/backend/cpu/dropout.py.
//
// Shapes: y, mask, x, dx, dy flat (size,), any layout. mask holds uniform [0, 1) draws
// on entry to dropout_forward (the backend's random_uniform) and the multiplier on exit:
// keep_scale = 1/(1 - rate), computed on the host, where the draw is >= rate, else 0.
// T is float or double; the arithmetic stays in T.
//
// Launch configuration (fastmlp/backend/cuda/dropout.py): a 1-D grid-stride loop, 256
// threads a block, one thread an element.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

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
