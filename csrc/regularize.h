// Host-side declarations shared by the regularize_ launchers.
#pragma once

#include <ATen/core/Tensor.h>

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

}  // namespace cnnvis
