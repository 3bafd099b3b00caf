// kernels/activation.cuh -- the activations of the fused epilogues, shared by
// dense.cu and conv.cu: act_value(x) and its derivative act_grad(a) written from
// the output a = act(x), with the codes of fastmlp/backend/codes.py (the defines
// below; tests/test_kernels_compile.py checks they agree). Subgradient at 0: 0 for
// ReLU, alpha for LeakyReLU. CPU twins: fastmlp/backend/cpu/activation.py.
// fastmlp/backend/cuda/source.py inlines it where a .cu file says
// #include "activation.cuh" (NVRTC gets one string; CuPy's cache key is that string).

#define FASTMLP_IDENTITY 0
#define FASTMLP_RELU 1
#define FASTMLP_LEAKY_RELU 2
#define FASTMLP_TANH 3
#define FASTMLP_SIGMOID 4

__device__ __forceinline__ float tanh_t(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_t(double x) { return tanh(x); }

template <typename T>
__device__ __forceinline__ T act_value(T x, int code, T alpha) {
    // x * 0 (not 0) keeps NaN a NaN, as np.maximum does
    switch (code) {
    case FASTMLP_RELU: return x > T(0) ? x : x * T(0);
    case FASTMLP_LEAKY_RELU: return x > T(0) ? x : alpha * x;
    case FASTMLP_TANH: return tanh_t(x);
    case FASTMLP_SIGMOID: return T(0.5) * (T(1) + tanh_t(T(0.5) * x));  // no exp overflow
    default: return x;
    }
}

template <typename T>
__device__ __forceinline__ T act_grad(T a, int code, T alpha) {
    // derivative in terms of the output a = act(x); the sign of a tells the side of the kink
    switch (code) {
    case FASTMLP_RELU: return a > T(0) ? T(1) : T(0);
    case FASTMLP_LEAKY_RELU: return a > T(0) ? T(1) : alpha;
    case FASTMLP_TANH: return T(1) - a * a;
    case FASTMLP_SIGMOID: return a * (T(1) - a);
    default: return T(1);
    }
}
