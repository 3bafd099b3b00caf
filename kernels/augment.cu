// kernels/augment.cu -- data augmentation: a per-sample affine warp (flip,
// rotation, shift) of a batch of images, with zero fill outside the image.
//
// Must match (fastmlp/backend/reference.py): augment_images. CPU twin with
// the same name: fastmlp/backend/cpu/augment.py. Used by fastmlp.Augment,
// which draws the per-sample maps on the host from the model's generator.
//
// Shapes: out, x (N, C*H*W), each row one image: C planes of
// H x W (channels_last = 0, NCHW) or H x W pixels of C values (channels_last
// = 1, flattened NHWC). params (N, 6) double: output pixel (row i, column j)
// reads the source point sx = p0*j + p1*i + p2, sy = p3*j + p4*i + p5.
// nearest = 1 takes the pixel at (floor(sy + 0.5), floor(sx + 0.5));
// nearest = 0 interpolates bilinearly between the four pixels around it.
// Pixels outside the source read as 0. out must not alias x (the caller
// keeps a scratch copy). T is float or double; coordinates and weights are
// computed in T (the maps arrive in double and are converted once).
//
// Launch configuration (fastmlp/backend/cuda/augment.py): 1-D grid-stride loop over
// the N*H*W output pixels, 256 threads a block; a thread computes one pixel's
// source point and writes its C channels.
//
// Compiled at run time by NVRTC through cupy.RawModule with the options and
// name expressions of fastmlp/backend/cuda/source.py; CUDA built-ins only.

__device__ __forceinline__ float floor_t(float v) { return floorf(v); }
__device__ __forceinline__ double floor_t(double v) { return floor(v); }

template <typename T>
__global__ void augment_images(T* out, const T* x, const double* params, long long n,
                               int c, int h, int w, int channels_last, int nearest) {
    // out (N, C*H*W) = the warp of x (N, C*H*W) by the per-sample maps params (N, 6)
    const long long hw = (long long)h * w;
    const long long f = hw * c;
    const long long sc = channels_last ? 1 : hw;          // stride of a channel
    const long long si = channels_last ? (long long)w * c : (long long)w;  // of a row
    const long long sj = channels_last ? (long long)c : 1;                  // of a column
    const T th = (T)h, tw = (T)w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n * hw;
         e += (long long)gridDim.x * blockDim.x) {
        const long long s = e / hw;
        const long long pix = e - s * hw;
        const int i = (int)(pix / w);
        const int j = (int)(pix - (long long)i * w);
        const double* p = params + 6 * s;
        const T tj = (T)j, ti = (T)i;
        const T sx = (T)p[0] * tj + (T)p[1] * ti + (T)p[2];
        const T sy = (T)p[3] * tj + (T)p[4] * ti + (T)p[5];
        T* o = out + s * f + i * si + j * sj;
        const T* src = x + s * f;
        if (nearest) {
            const T fx = floor_t(sx + T(0.5)), fy = floor_t(sy + T(0.5));
            const bool inside = fx >= T(0) && fx < tw && fy >= T(0) && fy < th;  // as floats: no int overflow
            const long long at = inside ? (long long)fy * si + (long long)fx * sj : 0;
            for (int ch = 0; ch < c; ++ch) o[ch * sc] = inside ? src[at + ch * sc] : T(0);
            continue;
        }
        if (!(sx > T(-1) && sx < tw && sy > T(-1) && sy < th)) {   // all four taps outside
            for (int ch = 0; ch < c; ++ch) o[ch * sc] = T(0);
            continue;
        }
        const T fx = floor_t(sx), fy = floor_t(sy);
        const T tx = sx - fx, ty = sy - fy;
        const int x0 = (int)fx, y0 = (int)fy;
        const T w00 = (T(1) - ty) * (T(1) - tx), w01 = (T(1) - ty) * tx;
        const T w10 = ty * (T(1) - tx), w11 = ty * tx;
        const bool top = y0 >= 0, bottom = y0 + 1 < h, left = x0 >= 0, right = x0 + 1 < w;
        const long long a00 = (long long)y0 * si + (long long)x0 * sj;
        for (int ch = 0; ch < c; ++ch) {
            const long long q = ch * sc + a00;   // may be < 0: read only where the tap is inside
            T acc = T(0);
            if (top && left) acc += w00 * src[q];
            if (top && right) acc += w01 * src[q + sj];
            if (bottom && left) acc += w10 * src[q + si];
            if (bottom && right) acc += w11 * src[q + si + sj];
            o[ch * sc] = acc;
        }
    }
}
