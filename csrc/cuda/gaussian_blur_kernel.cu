// CUDA backend of gaussian_blur and its adjoint.
//  * taps: one thread per plane computes its normalized taps with the shared
//    gaussian_weights body (no host round trip for per-image sigma).
//  * forward, radius <= kFusedMaxRadius: one fused kernel per 32 x 32 output
//    tile: the (32+2r)^2 input tile is staged in shared memory with the
//    reflected halo, the horizontal pass goes to a shared intermediate, the
//    vertical pass writes the output; the intermediate never reaches global
//    memory.
//  * forward with a wider kernel, and the adjoint: two separable passes
//    through a float32 (float64 for double) temporary, one output per thread,
//    with the shared blur_tap_sum / blur_adjoint_at bodies.
// half and bfloat16 accumulate in float.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "../gaussian_blur.h"
#include "../gaussian_blur_common.h"
#include "cuda_helpers.h"

namespace cnnvis {
namespace {

constexpr int kTile = 32, kRowsPerThread = 4;  // block 32 x 8, each thread 4 rows
constexpr int64_t kFusedMaxRadius = 16;

template <typename A>
__global__ void blur_taps_kernel(const double* __restrict__ sigma, A* __restrict__ taps,
                                 int64_t planes, int64_t radius) {
  CNNVIS_CUDA_KERNEL_LOOP(p, planes) {
    gaussian_weights(sigma[p], radius, taps + p * (2 * radius + 1));
  }
}

template <typename scalar_t, typename A>
__global__ void blur_fused_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                  const A* __restrict__ taps, int64_t planes, int H, int W,
                                  int R) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* tin = reinterpret_cast<A*>(smem_raw);
  const int span = kTile + 2 * R;
  A* mid = tin + span * span;
  const int tid = threadIdx.y * kTile + threadIdx.x;
  const int nthreads = kTile * (kTile / kRowsPerThread);
  const int r0 = blockIdx.y * kTile, c0 = blockIdx.x * kTile;
  const int K = 2 * R + 1;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const scalar_t* xp = x + plane * H * W;
    const A* w = taps + plane * K;
    __syncthreads();
    for (int k = tid; k < span * span; k += nthreads) {
      const int rr = k / span, cc = k % span;
      const int64_t i = blur_fold(r0 - R + rr, H), j = blur_fold(c0 - R + cc, W);
      tin[k] = static_cast<A>(xp[i * W + j]);
    }
    __syncthreads();
    for (int k = tid; k < span * kTile; k += nthreads) {
      const int rr = k / kTile, cc = k % kTile;
      const A* row = tin + rr * span + cc;
      A acc = A(0);
      for (int t = 0; t < K; ++t) acc += w[t] * row[t];
      mid[k] = acc;
    }
    __syncthreads();
    const int j = c0 + threadIdx.x;
    for (int q = 0; q < kRowsPerThread; ++q) {
      const int rr = threadIdx.y + q * (kTile / kRowsPerThread);
      const int i = r0 + rr;
      if (i < H && j < W) {
        A acc = A(0);
        for (int t = 0; t < K; ++t) acc += w[t] * mid[(rr + t) * kTile + threadIdx.x];
        y[plane * H * W + (int64_t)i * W + j] = static_cast<scalar_t>(acc);
      }
    }
  }
}

// One separable pass along rows (Vertical = false, along W) or columns, for
// the forward (Adjoint = false) or the adjoint.
template <typename TIn, typename TOut, typename A, bool Vertical, bool Adjoint>
__global__ void blur_pass_kernel(const TIn* __restrict__ in, TOut* __restrict__ out,
                                 const A* __restrict__ taps, int64_t total, int64_t H, int64_t W,
                                 int64_t R) {
  const int64_t K = 2 * R + 1;
  CNNVIS_CUDA_KERNEL_LOOP(e, total) {
    const int64_t plane = e / (H * W), rem = e % (H * W);
    const int64_t i = rem / W, j = rem % W;
    const A* w = taps + plane * K;
    const TIn* base = in + plane * H * W;
    A v;
    if (Vertical) {
      v = Adjoint ? blur_adjoint_at(base + j, W, H, i, R, w) : blur_tap_sum(base + j, W, H, i, R, w);
    } else {
      v = Adjoint ? blur_adjoint_at(base + i * W, 1, W, j, R, w)
                  : blur_tap_sum(base + i * W, 1, W, j, R, w);
    }
    out[e] = static_cast<TOut>(v);
  }
}

struct GaussianBlurCuda : CudaBackend {
  static void check(const at::Tensor& x, const char* name) {
    check_cuda_tensor(x, name);
    check_plane_fits_int32(x, name);
  }

  template <bool Adjoint>
  static void run(const at::Tensor& xc, at::Tensor& out, const BlurArgs& a) {
    auto stream = at::cuda::getCurrentCUDAStream();
    const int64_t planes = a.n * a.c, R = a.radius, K = 2 * R + 1, total = xc.numel();
    const at::Tensor sig = a.sigma.to(xc.device());
    CNNVIS_DISPATCH_CUDA_FLOATING(xc.scalar_type(), "gaussian_blur_cuda", [&] {
      using A = cuda_acc_t<scalar_t>;
      at::Tensor taps =
          at::empty({planes * K}, xc.options().dtype(c10::CppTypeToScalarType<A>::value));
      launch_1d(blur_taps_kernel<A>, planes, sig.const_data_ptr<double>(),
                taps.mutable_data_ptr<A>(), planes, R);
      const A* tp = taps.const_data_ptr<A>();
      const scalar_t* in = xc.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      if (!Adjoint && R <= kFusedMaxRadius) {
        const int span = kTile + 2 * static_cast<int>(R);
        const size_t smem =
            sizeof(A) * (static_cast<size_t>(span) * span + static_cast<size_t>(span) * kTile);
        const dim3 block(kTile, kTile / kRowsPerThread);
        const dim3 grid(static_cast<unsigned>((a.w + kTile - 1) / kTile),
                        static_cast<unsigned>((a.h + kTile - 1) / kTile),
                        static_cast<unsigned>(std::min<int64_t>(planes, 65535)));
        TORCH_CHECK_VALUE(grid.y <= 65535, "x: height ", a.h, " is too large for the CUDA kernel");
        blur_fused_kernel<scalar_t, A><<<grid, block, smem, stream>>>(
            in, op, tp, planes, static_cast<int>(a.h), static_cast<int>(a.w), static_cast<int>(R));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        at::Tensor tmp = at::empty({total}, taps.options());
        A* mp = tmp.mutable_data_ptr<A>();
        launch_1d(blur_pass_kernel<scalar_t, A, A, false, Adjoint>, total, in, mp, tp, total, a.h,
                  a.w, R);
        launch_1d(blur_pass_kernel<A, scalar_t, A, true, Adjoint>, total, mp, op, tp, total, a.h,
                  a.w, R);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) { register_gaussian_blur<GaussianBlurCuda>(m); }

}  // namespace cnnvis
