// CUDA backend of regularize_. Elementwise kernels run the shared
// reg_update / reg_pixel_stats / reg_finish bodies:
//   1. update (+ clamp when nothing is clipped and there is no blur: then
//      this is the only kernel);
//   2. blur through the gaussian_blur op when blur_sigma > 0;
//   3. pixel statistics (one thread per pixel, looping over channels), in
//      float32 (float64 for double);
//   4. per-image thresholds: the two order statistics around the quantile
//      rank with torch.kthvalue over (N, H*W) (simple and exact; a sort is
//      not needed), combined by quantile_lerp in a one-thread-per-image kernel;
//   5. zero + clamp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../regularize.h"
#include "../regularize_common.h"
#include "cuda_helpers.h"

namespace cnnvis {
namespace {

template <typename scalar_t, typename A>
__global__ void reg_update_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                  int64_t total, A lr, A keep, bool add, bool scale, bool clamp,
                                  A lo, A hi) {
  CNNVIS_CUDA_KERNEL_LOOP(e, total) {
    A v = reg_update(static_cast<A>(x[e]), add ? static_cast<A>(g[e]) : A(0), lr, keep, add, scale);
    if (clamp) v = reg_clamp(v, lo, hi);
    x[e] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t, typename A>
__global__ void reg_stats_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                 A* __restrict__ norms, A* __restrict__ contribs, int64_t N,
                                 int64_t C, int64_t HW) {
  CNNVIS_CUDA_KERNEL_LOOP(e, N * HW) {
    const int64_t n = e / HW, p = e % HW;
    A sq = A(0), ct = A(0);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = (n * C + c) * HW + p;
      reg_pixel_stats(static_cast<A>(x[off]), g != nullptr ? static_cast<A>(g[off]) : A(0), &sq, &ct);
    }
    if (norms != nullptr) norms[e] = sqrt(sq);
    if (contribs != nullptr) contribs[e] = ct;
  }
}

template <typename A>
__global__ void reg_threshold_kernel(const A* __restrict__ below, const A* __restrict__ above,
                                     const bool* __restrict__ has_nan, A weight,
                                     A* __restrict__ thr, int64_t N) {
  CNNVIS_CUDA_KERNEL_LOOP(n, N) {
    thr[n] = has_nan[n] ? A(NAN) : quantile_lerp(below[n], above[n], weight);
  }
}

template <typename scalar_t, typename A>
__global__ void reg_finish_kernel(scalar_t* __restrict__ x, const A* __restrict__ norms,
                                  const A* __restrict__ nthr, const A* __restrict__ contribs,
                                  const A* __restrict__ cthr, int64_t N, int64_t C, int64_t HW,
                                  A lo, A hi) {
  CNNVIS_CUDA_KERNEL_LOOP(e, N * C * HW) {
    const int64_t n = e / (C * HW), p = e % HW, q = n * HW + p;
    const bool zero = (norms != nullptr && norms[q] < nthr[n]) ||
                      (contribs != nullptr && contribs[q] < cthr[n]);
    x[e] = static_cast<scalar_t>(reg_finish(static_cast<A>(x[e]), zero, lo, hi));
  }
}

// Per-image torch.quantile(values[n], q, "linear") by two kthvalue calls.
template <typename A>
at::Tensor per_image_quantile(const at::Tensor& values, double pct) {
  const int64_t N = values.size(0), m = values.size(1);
  int64_t below, above;
  A weight;
  quantile_rank(m, static_cast<A>(pct / 100.0), &below, &above, &weight);
  const at::Tensor vb = std::get<0>(at::kthvalue(values, below + 1, 1)).contiguous();
  const at::Tensor va = above == below ? vb : std::get<0>(at::kthvalue(values, above + 1, 1)).contiguous();
  const at::Tensor has_nan = at::isnan(values).any(1).contiguous();
  at::Tensor thr = at::empty({N}, values.options());
  launch_1d(reg_threshold_kernel<A>, N, vb.const_data_ptr<A>(), va.const_data_ptr<A>(),
            has_nan.const_data_ptr<bool>(), weight, thr.mutable_data_ptr<A>(), N);
  return thr;
}

struct RegularizeCuda : CudaBackend {
  static at::Tensor run(at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                        double blur_sigma, double norm_pct, double contrib_pct, double lo,
                        double hi) {
    const bool add = lr != 0, scale = decay != 0, blur = blur_sigma > 0;
    const bool nclip = norm_pct > 0, cclip = contrib_pct > 0, clip = nclip || cclip;
    const bool clamp = lo > -INFINITY || hi < INFINITY;
    const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), total = x.numel();
    at::Tensor xs = x;  // where the rest of the step reads and writes
    CNNVIS_DISPATCH_CUDA_FLOATING(x.scalar_type(), "regularize_cuda", [&] {
      using A = cuda_acc_t<scalar_t>;
      const A alo = static_cast<A>(lo), ahi = static_cast<A>(hi);
      if (add || scale || (!blur && !clip && clamp)) {
        launch_1d(reg_update_kernel<scalar_t, A>, total, xs.mutable_data_ptr<scalar_t>(),
                  add ? grad.const_data_ptr<scalar_t>() : nullptr, total, static_cast<A>(lr),
                  static_cast<A>(1.0 - decay), add, scale, !blur && !clip && clamp, alo, ahi);
      }
      if (blur) xs = regularize_blur(xs, blur_sigma);
      if (!clip && !(blur && clamp)) return;
      const auto acc_opts = xs.options().dtype(c10::CppTypeToScalarType<A>::value);
      at::Tensor norms = nclip ? at::empty({N, HW}, acc_opts) : at::Tensor();
      at::Tensor contribs = cclip ? at::empty({N, HW}, acc_opts) : at::Tensor();
      at::Tensor nthr, cthr;
      if (clip) {
        launch_1d(reg_stats_kernel<scalar_t, A>, N * HW, xs.const_data_ptr<scalar_t>(),
                  cclip ? grad.const_data_ptr<scalar_t>() : nullptr,
                  nclip ? norms.mutable_data_ptr<A>() : nullptr,
                  cclip ? contribs.mutable_data_ptr<A>() : nullptr, N, C, HW);
        if (nclip) {
          nthr = per_image_quantile<A>(norms, norm_pct);
          if (cclip) contribs.masked_fill_(norms < nthr.unsqueeze(1), 0);
        }
        if (cclip) cthr = per_image_quantile<A>(contribs, contrib_pct);
      }
      launch_1d(reg_finish_kernel<scalar_t, A>, total, xs.mutable_data_ptr<scalar_t>(),
                nclip ? norms.const_data_ptr<A>() : nullptr,
                nclip ? nthr.const_data_ptr<A>() : nullptr,
                cclip ? contribs.const_data_ptr<A>() : nullptr,
                cclip ? cthr.const_data_ptr<A>() : nullptr, N, C, HW, alo, ahi);
    });
    return xs;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) { register_regularize<RegularizeCuda>(m); }

}  // namespace cnnvis
