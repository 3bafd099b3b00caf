// kernels/reduce.cuh -- the fixed-order block reduction of every two-pass sum (dense.cu,
// loss.cu, optim.cu, conv.cu, norm.cu): block_sum(s) adds the double s of every thread
// of a block of FASTMLP_THREADS threads (256, the launch configuration of every kernel
// that calls it) in a fixed tree, so the total is reproducible run to run.
// fastmlp/backend/cuda/source.py inlines it where a .cu file says #include "reduce.cuh".

#define FASTMLP_THREADS 256

__device__ __forceinline__ double block_sum(double s) {
    // every thread of the block calls it (it synchronises) and gets the total; its shared
    // buffer is free again on return, so a kernel may call it several times in a row
    __shared__ double sums[FASTMLP_THREADS];
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
