// Host-side declarations shared by the gaussian_blur launchers.
#pragma once

#include <ATen/core/Tensor.h>

namespace cnnvis {

struct BlurArgs {
  int64_t n, c, h, w, radius;
  at::Tensor sigma;  // float64, contiguous, shape (N, C), on sigma's original device
};

// Validates x (4-D floating), sigma (non-negative finite values, broadcastable
// to (N, C)) and kernel_size (odd, >= 1); `x_name` names the image argument
// in messages ("x" for the blur, "grad_out" for its adjoint).
BlurArgs check_gaussian_blur(const at::Tensor& x, const at::Tensor& sigma, int64_t kernel_size,
                             const char* x_name);

}  // namespace cnnvis
