// kernels/window.cuh -- the max-pooling windows, shared by pool.cu (max pooling) and
// conv.cu (max pooling fused after a convolution): the first maximum of a K x K window,
// a NaN counting as the maximum (as np.argmax), and the windows that cover a pixel
// (the gathers of the backward passes). CPU twins: fastmlp/backend/cpu/pool.py and the
// _pool_row / _unpool_plane of fastmlp/backend/cpu/conv.py.
// fastmlp/backend/cuda/source.py inlines it where a .cu file says #include "window.cuh".

template <typename T, typename Value>
__device__ __forceinline__ int window_argmax(const Value& value, int ih0, int iw0, int k, int row, T& best) {
    // the plane index a = ih*row + iw of the first maximum of value(a) over the K x K window
    // whose corner is (ih0, iw0), in row-major window order, and that maximum in best;
    // the first NaN wins over any number
    int arg = ih0 * row + iw0;
    best = value(arg);
    for (int i = 0; i < k; ++i) {
        for (int j = 0; j < k; ++j) {
            const int a = (ih0 + i) * row + iw0 + j;
            const T v = value(a);
            if (v > best || (v != v && best == best)) {
                best = v;
                arg = a;
            }
        }
    }
    return arg;
}

__device__ __forceinline__ void covering_windows(int i, int k, int stride, int count, int& lo, int& hi) {
    // the windows p in [lo, hi] (empty when lo > hi) of a pooling over count windows
    // (window p spans p*S .. p*S + K - 1) that contain position i
    lo = i - k + 1 <= 0 ? 0 : (i - k + stride) / stride;
    hi = min(count - 1, i / stride);
}
