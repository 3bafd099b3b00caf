// kernels/data.cu -- gathering a mini-batch into a preallocated buffer.
//
// Must match (fastmlp/backend/reference.py): gather_rows, out = x[idx].
// CPU twin with the same name: fastmlp/backend/cpu/data.py.
//
// Shapes: out (N, D), x (rows, D), the whole data set, with each row flattened to D
// elements (images (N, C, H, W) have D = C*H*W), idx (N,) int or long long in [0, rows)
// (not checked here: the caller draws idx from a permutation of range(rows)).
// E is the element type: float and double, and unsigned integers of 1, 2, 4
// and 8 bytes that carry the bits of any other dtype (labels, uint8 images);
// a gather only moves bits.
//
// Launch configuration (fastmlp/backend/cuda/data.py): 1-D grid-stride loop over
// the N*D output elements, 256 threads a block; consecutive threads copy
// consecutive elements of a row, so reads and writes coalesce.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

template <typename E, typename I>
__global__ void gather_rows(E* out, const E* x, const I* idx, long long b, long long f) {
    // out (N, D) = x[idx] with x (rows, D), idx (N,)
    const long long total = b * f;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long r = e / f;
        out[e] = x[(long long)idx[r] * f + (e - r * f)];
    }
}
