// kernels/channel_sums.cuh -- the first pass of a per-channel sum over x (N, C, H*W),
// shared by norm.cu (batch-norm statistics) and conv.cu (the bias gradient of the fused
// pooling: dzt (N*L, M) passed as N*L images of M channels of one value each).
// Needs reduce.cuh included before it.
// fastmlp/backend/cuda/source.py inlines it where a .cu file says #include "channel_sums.cuh".

template <typename T>
__global__ void channel_sums(double* partial, const T* x, const double* center, long long n, long long c,
                             long long l, int squared) {
    // partial (G, C) float64: block (g, ch) sums x (N, C, H*W) (l = H*W) over its share
    // of channel ch's N*H*W values, or (x - center[ch])^2 when squared (center (C,) is read only
    // then); grid (G, C) of 256 threads, G a function of the shape only
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
    s = block_sum(s);
    if (threadIdx.x == 0) partial[(long long)blockIdx.x * c + ch] = s;
}
