// gaussian_blur: depthwise separable Gaussian blur with reflect borders and a
// per-image / per-channel sigma, and its adjoint (_gaussian_blur_backward),
// which is what the backward needs: the blur is linear, so the gradient of x
// is the adjoint applied to grad_out (it differs from the blur itself near the
// borders). Schemas here; cpu/ and cuda/ implement them; Python registers the
// fake kernels and the autograd formula.
#include "gaussian_blur.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace cnnvis {

BlurArgs check_gaussian_blur(const at::Tensor& x, const at::Tensor& sigma, int64_t kernel_size,
                             const char* x_name) {
  TORCH_CHECK_VALUE(x.dim() == 4, x_name, ": expected a 4-D (N, C, H, W) tensor, got ", x.dim(),
                    "-D with shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), x_name,
                   ": expected a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(sigma.scalar_type()),
                   "sigma: expected a float or a floating-point tensor, got ", sigma.scalar_type());
  TORCH_CHECK_VALUE(kernel_size >= 1 && kernel_size % 2 == 1,
                    "kernel_size: expected an odd value >= 1, got ", kernel_size);
  const int64_t N = x.size(0), C = x.size(1);
  bool ok = sigma.dim() <= 2;
  for (int64_t d = 0; ok && d < sigma.dim(); ++d) {
    const int64_t want = d == sigma.dim() - 1 ? C : N;
    ok = sigma.size(d) == 1 || sigma.size(d) == want;
  }
  TORCH_CHECK_VALUE(ok, "sigma: expected a float or a tensor broadcastable to (N, C) = (", N, ", ",
                    C, "), e.g. (N, 1) per image or (1, C) per channel, got shape ",
                    sigma.sizes());
  TORCH_CHECK_VALUE(sigma.device() == x.device() || sigma.device().is_cpu(), "sigma: on ",
                    sigma.device(), " but ", x_name, " is on ", x.device());
  at::Tensor s = sigma.to(at::kDouble).expand({N, C}).contiguous();
  if (s.numel() > 0) {
    TORCH_CHECK_VALUE(at::logical_and(s >= 0, at::isfinite(s)).all().item<bool>(),
                      "sigma: expected finite values >= 0, got min ", s.min().item<double>());
  }
  return BlurArgs{N, C, x.size(2), x.size(3), kernel_size / 2, s};
}

}  // namespace cnnvis

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def("gaussian_blur(Tensor x, Tensor sigma, int kernel_size) -> Tensor");
  m.def("_gaussian_blur_backward(Tensor grad_out, Tensor sigma, int kernel_size) -> Tensor");
}
