// CUDA backend of total_variation. One kernel computes the value, the
// gradient or both in one pass over x: a 32 x 8 block stages a (8+2) x (32+2)
// tile of one plane with a one-pixel halo in shared memory; each thread
// evaluates the term of its pixel and the two neighbouring terms its gradient
// needs (left and up) with the same tv_term / tv_grad_at body as the CPU
// backend. Values are reduced per block in float (double for float64) and the
// per-block partial sums are added per image by ATen, in a fixed order
// (deterministic, no atomics). half and bfloat16 accumulate in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../total_variation.h"
#include "../total_variation_common.h"
#include "cuda_helpers.h"

namespace cnnvis {
namespace {

constexpr int kTW = 32, kTH = 8;

template <typename scalar_t, TVKind K, bool V, bool G>
__global__ void tv_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ grad,
                          cuda_acc_t<scalar_t>* __restrict__ partial,
                          const float* __restrict__ scales, int64_t planes, int64_t C, int H,
                          int W, float half_beta, float beta, float eps) {
  using A = cuda_acc_t<scalar_t>;
  __shared__ A tile[kTH + 2][kTW + 2];
  __shared__ A red[kTH * kTW];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c0 = blockIdx.x * kTW, r0 = blockIdx.y * kTH;
  const int tid = ty * kTW + tx;
  const A hb = static_cast<A>(half_beta), bt = static_cast<A>(beta), ep = static_cast<A>(eps);
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const scalar_t* xp = x + plane * H * W;
    __syncthreads();  // the previous plane's tile is no longer read
    for (int k = tid; k < (kTH + 2) * (kTW + 2); k += kTH * kTW) {
      const int rr = k / (kTW + 2), cc = k % (kTW + 2);
      const int i = r0 - 1 + rr, j = c0 - 1 + cc;
      tile[rr][cc] = (i >= 0 && i < H && j >= 0 && j < W) ? static_cast<A>(xp[(int64_t)i * W + j])
                                                          : A(0);
    }
    __syncthreads();
    const int i = r0 + ty, j = c0 + tx;
    const int li = ty + 1, lj = tx + 1;  // position in the tile
    A v = A(0);
    if (i < H && j < W) {
      const bool right = j + 1 < W, down = i + 1 < H;
      const A xc = tile[li][lj];
      A a = A(0), b = A(0);
      {
        const A dx = right ? tile[li][lj + 1] - xc : A(0);
        const A dy = down ? tile[li + 1][lj] - xc : A(0);
        const A t = tv_t(dx, dy, ep);
        v = tv_term<K, G>(dx, dy, t, K == TVKind::kBeta1 ? sqrt(t) : A(0), hb, bt, &a, &b);
        // no gradient through the constant 0 differences past the last column / row
        if (!right) a = A(0);
        if (!down) b = A(0);
      }
      if (G) {
        A a_left = A(0), b_up = A(0), unused = A(0);
        if (j > 0) {
          const A xl = tile[li][lj - 1];
          const A dx = xc - xl;
          const A dy = down ? tile[li + 1][lj - 1] - xl : A(0);
          const A t = tv_t(dx, dy, ep);
          tv_term<K, true>(dx, dy, t, K == TVKind::kBeta1 ? sqrt(t) : A(0), hb, bt, &a_left, &unused);
        }
        if (i > 0) {
          const A xu = tile[li - 1][lj];
          const A dx = right ? tile[li - 1][lj + 1] - xu : A(0);
          const A dy = xc - xu;
          const A t = tv_t(dx, dy, ep);
          tv_term<K, true>(dx, dy, t, K == TVKind::kBeta1 ? sqrt(t) : A(0), hb, bt, &unused, &b_up);
        }
        const A scale = static_cast<A>(scales[plane / C]);
        grad[plane * H * W + (int64_t)i * W + j] =
            static_cast<scalar_t>(tv_grad_at(a_left, b_up, a, b, scale));
      }
    }
    if (V) {
      red[tid] = v;
      __syncthreads();
      for (int s = kTH * kTW / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
      }
      if (tid == 0)
        partial[(plane * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = red[0];
    }
  }
}

// Runs the kernel over x (contiguous). Returns the per-image sums (acc
// dtype, (N,)) when V; writes grad when G, with scales[n] (float32) the
// upstream factor of image n.
template <bool V, bool G>
at::Tensor tv_launch(const at::Tensor& xc, at::Tensor* grad, const at::Tensor* scales,
                     const TVOptions& o) {
  const int64_t N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const int64_t planes = N * C;
  const int64_t tiles_w = (W + kTW - 1) / kTW, tiles_h = (H + kTH - 1) / kTH;
  TORCH_CHECK_VALUE(tiles_h <= 65535, "x: height ", H, " is too large for the CUDA kernel");
  const auto acc_dtype = at::toOpMathType(xc.scalar_type());
  at::Tensor partial =
      at::empty({V ? planes * tiles_h * tiles_w : 0}, xc.options().dtype(acc_dtype));
  if (xc.numel() == 0) return at::zeros({N}, xc.options().dtype(acc_dtype));
  const dim3 block(kTW, kTH);
  const dim3 grid(static_cast<unsigned>(tiles_w), static_cast<unsigned>(tiles_h),
                  static_cast<unsigned>(std::min<int64_t>(planes, 65535)));
  auto stream = at::cuda::getCurrentCUDAStream();
  CNNVIS_DISPATCH_CUDA_FLOATING(xc.scalar_type(), "total_variation_cuda", [&] {
    using A = cuda_acc_t<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* gp = G ? grad->mutable_data_ptr<scalar_t>() : nullptr;
    A* pp = V ? partial.mutable_data_ptr<A>() : nullptr;
    const float* sp = G ? scales->const_data_ptr<float>() : nullptr;
    const float hb = static_cast<float>(o.beta / 2), bt = static_cast<float>(o.beta),
                ep = static_cast<float>(o.eps);
    with_tv_kind(o.kind, [&](auto kind) {
      tv_kernel<scalar_t, decltype(kind)::value, V, G><<<grid, block, 0, stream>>>(
          xp, gp, pp, sp, planes, C, static_cast<int>(H), static_cast<int>(W), hb, bt, ep);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!V) return at::Tensor();
  return partial.view({N, C * tiles_h * tiles_w}).sum(1);
}

struct TotalVariationCuda : CudaBackend {
  static void check(const at::Tensor& x, const char* name) {
    check_cuda_tensor(x, name);
    check_plane_fits_int32(x, name);
  }

  // Upstream factor per image for the gradient (float32, (N,)).
  static at::Tensor scales(const at::Tensor* grad_out, const at::Tensor& x,
                           TVReduction reduction) {
    const int64_t N = x.size(0);
    at::Tensor s = grad_out == nullptr
                       ? at::ones({N}, x.options().dtype(at::kFloat))
                       : (reduction == TVReduction::kNone
                              ? grad_out->to(at::kFloat).reshape({N})
                              : grad_out->to(at::kFloat).reshape({1}).expand({N}))
                             .contiguous();
    if (reduction == TVReduction::kMean && x.numel() > 0) s = s / static_cast<double>(x.numel());
    return s.contiguous();
  }

  template <bool V, bool G>
  static at::Tensor run(const at::Tensor& xc, const TVOptions& o, at::Tensor* grad,
                        const at::Tensor* scales) {
    return tv_launch<V, G>(xc, grad, scales, o);
  }

  // The reduced value from the per-image sums.
  static at::Tensor finish(const at::Tensor& per_image, const at::Tensor& x,
                           TVReduction reduction) {
    if (reduction == TVReduction::kNone) return per_image.to(x.scalar_type());
    at::Tensor s = per_image.sum();
    if (reduction == TVReduction::kMean) s = s / static_cast<double>(x.numel());
    return s.to(x.scalar_type());
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) { register_total_variation<TotalVariationCuda>(m); }

}  // namespace cnnvis
