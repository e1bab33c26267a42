// Host-side code shared by the regularize_ backends: the argument checks, the
// blur step, and the op driver, which does what both backends do around the
// backend's own kernels (not part of the numerical body, regularize_common.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

namespace cnnvis {

// Validates every argument of regularize_ (ValueError / TypeError naming the
// argument).
void check_regularize(const at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                      double blur_sigma, double norm_pct, double contrib_pct, double lo, double hi);

// The default odd kernel size of the blur step for blur_sigma:
// 2 * ceil(3 * sigma) + 1, as cnnvis_ext.ops.gaussian_blur_kernel_size.
int64_t regularize_blur_kernel_size(double blur_sigma);

// Calls cnnvis::gaussian_blur through the dispatcher (the backend of x).
at::Tensor regularize_blur(const at::Tensor& x, double blur_sigma);

// The op driver. A backend K (cpu/, cuda/) provides
//   K::check(t, name)      the device and dtype of an input;
//   K::run(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi)
//                          the step on x (contiguous, non-empty; updated in
//                          place, or the step's result returned in another
//                          tensor); grad is contiguous where the step reads
//                          it (lr != 0 or contrib_pct > 0);
// register_regularize<K>(m) registers the op with K's kernels.
template <typename K>
void regularize_inplace(at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                        double blur_sigma, double norm_pct, double contrib_pct, double lo,
                        double hi) {
  check_regularize(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi);
  K::check(x, "x");
  if (x.numel() == 0) return;
  const c10::DeviceGuard guard(x.device());
  at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const at::Tensor gc = (lr != 0 || contrib_pct > 0) ? grad.contiguous() : grad;
  const at::Tensor result = K::run(xc, gc, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi);
  if (!result.is_same(x)) x.copy_(result);
}

template <typename K>
void register_regularize(torch::Library& m) {
  m.impl("regularize_", &regularize_inplace<K>);
}

}  // namespace cnnvis
