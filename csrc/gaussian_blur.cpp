// gaussian_blur: depthwise separable Gaussian blur with reflect borders and a
// per-image / per-channel sigma, and its adjoint (_gaussian_blur_backward),
// which is what the backward needs: the blur is linear, so the gradient of x
// is the adjoint applied to grad_out (it differs from the blur itself near the
// borders). Schemas and argument checks here; cpu/ and cuda/ implement the
// schemas; Python (cnnvis_ext/ops/gaussian_blur.py) registers the fake kernels,
// which run these checks through the _C bindings below, and the autograd
// formula.
#include "gaussian_blur.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "python_checks.h"

namespace cnnvis {
namespace {

// gaussian_blur's and _gaussian_blur_backward's checks, on metadata: all but
// sigma's values, which only the kernels read (check_blur_sigma_values).
void check_gaussian_blur_meta(const TensorMeta& x, const TensorMeta& sigma, int64_t kernel_size,
                              const char* x_name) {
  check_4d_floating(x, x_name, "(N, C, H, W)");
  TORCH_CHECK_TYPE(sigma.is_floating_point(),
                   "sigma: expected a float or a floating-point tensor, got ", sigma.dtype);
  TORCH_CHECK_VALUE(kernel_size >= 1 && kernel_size % 2 == 1,
                    "kernel_size: expected an odd value >= 1, got ", kernel_size);
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t limit = max_blur_kernel_size(x.size(2), x.size(3));
  TORCH_CHECK_VALUE(kernel_size <= limit, "kernel_size: ", kernel_size,
                    " taps are more than an image of (H, W) = (", x.size(2), ", ", x.size(3),
                    ") can use: at most ", limit, " (taps past the image fold back onto it)");
  bool ok = sigma.dim() <= 2;
  for (int64_t d = 0; ok && d < sigma.dim(); ++d) {
    const int64_t want = d == sigma.dim() - 1 ? C : N;
    ok = sigma.size(d) == 1 || sigma.size(d) == want;
  }
  TORCH_CHECK_VALUE(ok, "sigma: expected a float or a tensor broadcastable to (N, C) = (", N, ", ",
                    C, "), e.g. (N, 1) per image or (1, C) per channel, got shape ",
                    sigma.sizes);
  TORCH_CHECK_VALUE(sigma.device == x.device || sigma.device.is_cpu(), "sigma: on ",
                    sigma.device, " but ", x_name, " is on ", x.device);
}

// sigma's values lie in [min_value, max_value]: they must be finite and >= 0.
void check_blur_sigma_values(double min_value, double max_value) {
  const auto shown = [](double v) { return std::isnan(v) ? std::fabs(v) : v; };  // not "-nan"
  TORCH_CHECK_VALUE(min_value >= 0 && std::isfinite(max_value),
                    "sigma: expected finite values >= 0, got min ", shown(min_value), " and max ",
                    shown(max_value));
}

// The Python face of the checks (x_name "x" for the blur, "grad_out" for its adjoint).
void gaussian_blur_checks(const PyMeta& x, const PyMeta& sigma, int64_t kernel_size,
                          const std::string& x_name) {
  check_gaussian_blur_meta(meta(x), meta(sigma), kernel_size, x_name.c_str());
}

}  // namespace

BlurArgs check_gaussian_blur(const at::Tensor& x, const at::Tensor& sigma, int64_t kernel_size,
                             const char* x_name) {
  check_gaussian_blur_meta(TensorMeta(x), TensorMeta(sigma), kernel_size, x_name);
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor s = sigma.to(at::kDouble).expand({N, C}).contiguous();
  if (s.numel() > 0) {
    const auto [lo, hi] = at::aminmax(s);
    const at::Tensor range = at::stack({lo, hi}).cpu();  // one synchronization
    check_blur_sigma_values(range[0].item<double>(), range[1].item<double>());
  }
  return BlurArgs{N, C, x.size(2), x.size(3), kernel_size / 2, s};
}

void bind_gaussian_blur_checks(pybind11::module_& m) {
  m.def("_max_blur_kernel_size", &max_blur_kernel_size, pybind11::arg("h"), pybind11::arg("w"),
        "The largest kernel_size gaussian_blur accepts for an (h, w) image.");
  m.def("_gaussian_blur_check", &PythonCheck<&gaussian_blur_checks>::call,
        "gaussian_blur's checks (x_name 'x') and _gaussian_blur_backward's (x_name "
        "'grad_out'), all but sigma's values, which only the kernels read.");
}

}  // namespace cnnvis

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def("gaussian_blur(Tensor x, Tensor sigma, int kernel_size) -> Tensor");
  m.def("_gaussian_blur_backward(Tensor grad_out, Tensor sigma, int kernel_size) -> Tensor");
}
