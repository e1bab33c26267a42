// Host-side code shared by the gaussian_blur backends: the argument checks
// and the op drivers, which do what both backends do around the backend's
// own kernels (not part of the numerical body, gaussian_blur_common.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

namespace cnnvis {

struct BlurArgs {
  int64_t n, c, h, w, radius;
  at::Tensor sigma;  // float64, contiguous, shape (N, C), on sigma's original device
};

// The largest kernel an (h, w) image can use: taps past the image fold back
// onto it by reflection, so a kernel much wider than the image only repeats
// its pixels (and costs time, and memory, in proportion to its size). A
// radius of 8 * max(h, w) (at least 64) leaves room for any blur that still
// differs from the image's reflected mean.
inline int64_t max_blur_kernel_size(int64_t h, int64_t w) {
  const int64_t side = h > w ? h : w;
  const int64_t radius = side > 8 ? 8 * side : 64;
  return 2 * radius + 1;
}

// Validates x (4-D floating), sigma (non-negative finite values, broadcastable
// to (N, C)) and kernel_size (odd, >= 1); `x_name` names the image argument
// in messages ("x" for the blur, "grad_out" for its adjoint).
BlurArgs check_gaussian_blur(const at::Tensor& x, const at::Tensor& sigma, int64_t kernel_size,
                             const char* x_name);

// The op drivers. A backend K (cpu/, cuda/) provides
//   K::check(t, name)                      the device and dtype of an input;
//   K::template run<Adjoint>(x, out, a)    out = the blur of x (Adjoint:
//                                          its adjoint), both contiguous,
//                                          x non-empty;
// register_gaussian_blur<K>(m) registers the ops with K's kernels.

template <typename K, bool Adjoint>
at::Tensor gaussian_blur_apply(const at::Tensor& x, const at::Tensor& sigma, int64_t kernel_size,
                               const char* name) {
  const BlurArgs a = check_gaussian_blur(x, sigma, kernel_size, name);
  K::check(x, name);
  const c10::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), xc.options());
  if (xc.numel() > 0) K::template run<Adjoint>(xc, out, a);
  return out;
}

template <typename K>
at::Tensor gaussian_blur_forward(const at::Tensor& x, const at::Tensor& sigma,
                                 int64_t kernel_size) {
  return gaussian_blur_apply<K, false>(x, sigma, kernel_size, "x");
}

template <typename K>
at::Tensor gaussian_blur_backward(const at::Tensor& grad_out, const at::Tensor& sigma,
                                  int64_t kernel_size) {
  return gaussian_blur_apply<K, true>(grad_out, sigma, kernel_size, "grad_out");
}

template <typename K>
void register_gaussian_blur(torch::Library& m) {
  m.impl("gaussian_blur", &gaussian_blur_forward<K>);
  m.impl("_gaussian_blur_backward", &gaussian_blur_backward<K>);
}

}  // namespace cnnvis
