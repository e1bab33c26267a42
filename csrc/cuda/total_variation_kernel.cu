// CUDA backend of total_variation. One kernel computes the value, the
// gradient or both in one pass over x: a 32 x 8 block stages a (8+2) x (32+2)
// tile of one plane with a one-pixel halo in shared memory; each thread
// evaluates the term of its pixel and the two neighbouring terms its gradient
// needs (left and up) with the same tv_term / tv_grad_at body as the CPU
// backend. Values are reduced per block in float (double for float64) and the
// per-block partial sums are added per image by ATen, in a fixed order
// (deterministic, no atomics). half and bfloat16 accumulate in float.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../total_variation.h"
#include "../total_variation_common.h"

namespace cnnvis {
namespace {

constexpr int kTW = 32, kTH = 8;

template <typename scalar_t, int K, bool V, bool G>
__global__ void tv_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ grad,
                          at::acc_type<scalar_t, true>* __restrict__ partial,
                          const float* __restrict__ scales, int64_t planes, int64_t C, int H,
                          int W, float half_beta, float beta, float eps) {
  using A = at::acc_type<scalar_t, true>;
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
        v = tv_term<K, G>(dx, dy, t, K == kTVBeta1 ? sqrt(t) : A(0), hb, bt, &a, &b);
      }
      if (G) {
        A a_left = A(0), b_up = A(0), unused = A(0);
        if (j > 0) {
          const A xl = tile[li][lj - 1];
          const A dx = xc - xl;
          const A dy = down ? tile[li + 1][lj - 1] - xl : A(0);
          const A t = tv_t(dx, dy, ep);
          tv_term<K, true>(dx, dy, t, K == kTVBeta1 ? sqrt(t) : A(0), hb, bt, &a_left, &unused);
        }
        if (i > 0) {
          const A xu = tile[li - 1][lj];
          const A dx = right ? tile[li - 1][lj + 1] - xu : A(0);
          const A dy = xc - xu;
          const A t = tv_t(dx, dy, ep);
          tv_term<K, true>(dx, dy, t, K == kTVBeta1 ? sqrt(t) : A(0), hb, bt, &unused, &b_up);
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

// The kernel instance for the formula kind (a runtime value).
template <typename scalar_t, bool V, bool G>
void launch_tv_kind(int kind, dim3 grid, dim3 block, cudaStream_t stream, const scalar_t* xp,
                    scalar_t* gp, at::acc_type<scalar_t, true>* pp, const float* sp,
                    int64_t planes, int64_t C, int H, int W, float hb, float bt, float ep) {
  switch (kind) {
    case kTVBeta2:
      tv_kernel<scalar_t, kTVBeta2, V, G><<<grid, block, 0, stream>>>(xp, gp, pp, sp, planes, C, H, W, hb, bt, ep);
      break;
    case kTVBeta1:
      tv_kernel<scalar_t, kTVBeta1, V, G><<<grid, block, 0, stream>>>(xp, gp, pp, sp, planes, C, H, W, hb, bt, ep);
      break;
    case kTVGeneral:
      tv_kernel<scalar_t, kTVGeneral, V, G><<<grid, block, 0, stream>>>(xp, gp, pp, sp, planes, C, H, W, hb, bt, ep);
      break;
    default:
      tv_kernel<scalar_t, kTVAniso, V, G><<<grid, block, 0, stream>>>(xp, gp, pp, sp, planes, C, H, W, hb, bt, ep);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                       x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                   "x: dtype ", x.scalar_type(),
                   " is not supported on CUDA (float32, float64, float16, bfloat16)");
  TORCH_CHECK_VALUE(x.size(2) <= INT32_MAX && x.size(3) <= INT32_MAX,
                    "x: H and W must fit in int32, got ", x.sizes());
}

// Runs the kernel. Returns the per-image sums (acc dtype, (N,)) when V.
template <bool V, bool G>
at::Tensor tv_launch(const at::Tensor& xc, at::Tensor* grad, const at::Tensor* scales,
                     const TVOptions& o) {
  const int64_t N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const int64_t planes = N * C;
  const int64_t tiles_w = (W + kTW - 1) / kTW, tiles_h = (H + kTH - 1) / kTH;
  TORCH_CHECK_VALUE(tiles_h <= 65535, "x: height ", H, " is too large for the CUDA kernel");
  const auto acc_dtype = xc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::empty({V ? planes * tiles_h * tiles_w : 0}, xc.options().dtype(acc_dtype));
  if (xc.numel() == 0) return at::zeros({N}, xc.options().dtype(acc_dtype));
  const dim3 block(kTW, kTH);
  const dim3 grid(static_cast<unsigned>(tiles_w), static_cast<unsigned>(tiles_h),
                  static_cast<unsigned>(std::min<int64_t>(planes, 65535)));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "total_variation_cuda", [&] {
    using A = at::acc_type<scalar_t, true>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* gp = G ? grad->mutable_data_ptr<scalar_t>() : nullptr;
    A* pp = V ? partial.mutable_data_ptr<A>() : nullptr;
    const float* sp = G ? scales->const_data_ptr<float>() : nullptr;
    const float hb = static_cast<float>(o.beta / 2), bt = static_cast<float>(o.beta),
                ep = static_cast<float>(o.eps);
    launch_tv_kind<scalar_t, V, G>(o.kind, grid, block, stream, xp, gp, pp, sp, planes, C,
                                   static_cast<int>(H), static_cast<int>(W), hb, bt, ep);
  });
  if (!V) return at::Tensor();
  return partial.view({N, C * tiles_h * tiles_w}).sum(1);
}

at::Tensor finish_value(const at::Tensor& per_image, const at::Tensor& x, int reduction) {
  if (reduction == kTVNone) return per_image.to(x.scalar_type());
  at::Tensor s = per_image.sum();
  if (reduction == kTVMean) s = s / static_cast<double>(x.numel());
  return s.to(x.scalar_type());
}

at::Tensor scales_of(const at::Tensor* grad_out, const at::Tensor& x, int reduction) {
  const int64_t N = x.size(0);
  at::Tensor s = grad_out == nullptr
                     ? at::ones({N}, x.options().dtype(at::kFloat))
                     : (reduction == kTVNone ? grad_out->to(at::kFloat).reshape({N})
                                             : grad_out->to(at::kFloat).reshape({1}).expand({N}))
                           .contiguous();
  if (reduction == kTVMean && x.numel() > 0) s = s / static_cast<double>(x.numel());
  return s.contiguous();
}

at::Tensor total_variation_cuda(const at::Tensor& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  check_cuda(x);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  return finish_value(tv_launch<true, false>(xc, nullptr, nullptr, o), x, o.reduction);
}

at::Tensor total_variation_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                         double beta, double eps, c10::string_view reduction,
                                         c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  check_cuda(x);
  check_total_variation_grad_out(grad_out, x, o);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor grad = at::empty(x.sizes(), xc.options());
  if (x.numel() == 0) return grad;
  const at::Tensor scales = scales_of(&grad_out, x, o.reduction);
  tv_launch<false, true>(xc, &grad, &scales, o);
  return grad;
}

std::tuple<at::Tensor, at::Tensor> total_variation_and_grad_cuda(const at::Tensor& x, double beta,
                                                                 double eps,
                                                                 c10::string_view reduction,
                                                                 c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  check_cuda(x);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor grad = at::empty(x.sizes(), xc.options());
  const at::Tensor scales = scales_of(nullptr, x, o.reduction);
  at::Tensor per_image = tv_launch<true, true>(xc, &grad, &scales, o);
  return {finish_value(per_image, x, o.reduction), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) {
  m.impl("total_variation", &total_variation_cuda);
  m.impl("_total_variation_backward", &total_variation_backward_cuda);
  m.impl("total_variation_and_grad", &total_variation_and_grad_cuda);
}

}  // namespace cnnvis
