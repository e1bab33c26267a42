// regularize_: the in-place prior step of a visualization loop (Yosinski et
// al. 2015), x += lr * grad; x *= 1 - decay; blur; zero pixels of small norm;
// zero pixels of small contribution; clamp, as one op. Schema and argument
// checks here; cpu/ and cuda/ implement the schema; Python
// (cnnvis_ext/ops/regularize.py) registers the fake kernel, which runs these
// checks through the _C binding below. It mutates x (Tensor(a!)) and returns
// nothing, so torch.compile can functionalize it.
#include "regularize.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "gaussian_blur.h"
#include "python_checks.h"

namespace cnnvis {
namespace {

// regularize_'s checks, on metadata.
void check_regularize_meta(const TensorMeta& x, const TensorMeta& grad, double lr, double decay,
                           double blur_sigma, double norm_pct, double contrib_pct, double lo,
                           double hi) {
  check_4d_floating(x, "x", "(N, C, H, W)");
  TORCH_CHECK_VALUE(grad.sizes == x.sizes, "grad: expected the shape of x ", x.sizes, ", got ",
                    grad.sizes);
  check_same_dtype_device(grad, "grad", x, "x");
  TORCH_CHECK_VALUE(std::isfinite(lr), "lr: expected a finite value, got ", lr);
  TORCH_CHECK_VALUE(std::isfinite(decay) && decay >= 0 && decay <= 1,
                    "decay: expected a value in [0, 1], got ", decay);
  TORCH_CHECK_VALUE(std::isfinite(blur_sigma) && blur_sigma >= 0,
                    "blur_sigma: expected a finite value >= 0, got ", blur_sigma);
  const int64_t limit = max_blur_kernel_size(x.size(2), x.size(3));
  TORCH_CHECK_VALUE(std::ceil(3 * blur_sigma) <= static_cast<double>(limit / 2), "blur_sigma: ",
                    blur_sigma, " needs a kernel wider than an image of (H, W) = (", x.size(2),
                    ", ", x.size(3), ") can use (at most ", limit, " taps, blur_sigma <= ",
                    static_cast<double>(limit / 2) / 3, ")");
  TORCH_CHECK_VALUE(norm_pct >= 0 && norm_pct <= 100,
                    "norm_pct: expected a percentile in [0, 100], got ", norm_pct);
  TORCH_CHECK_VALUE(contrib_pct >= 0 && contrib_pct <= 100,
                    "contrib_pct: expected a percentile in [0, 100], got ", contrib_pct);
  TORCH_CHECK_VALUE(!std::isnan(lo) && !std::isnan(hi) && lo <= hi,
                    "lo: expected lo <= hi (and neither NaN), got lo=", lo, ", hi=", hi);
  // any layout works (a contiguous copy is written back), but memory that
  // two elements share cannot be updated in place
  TORCH_CHECK_VALUE(!x.has_internal_overlap(), "x: has internally overlapping memory ",
                    "(e.g. an expanded tensor); it cannot be updated in place");
}

// The Python face of the checks.
void regularize_checks(const PyMeta& x, const PyMeta& grad, double lr, double decay,
                       double blur_sigma, double norm_pct, double contrib_pct, double lo,
                       double hi) {
  check_regularize_meta(meta(x), meta(grad), lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi);
}

}  // namespace

void check_regularize(const at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                      double blur_sigma, double norm_pct, double contrib_pct, double lo,
                      double hi) {
  check_regularize_meta(TensorMeta(x), TensorMeta(grad), lr, decay, blur_sigma, norm_pct,
                        contrib_pct, lo, hi);
}

void bind_regularize_checks(pybind11::module_& m) {
  m.def("_regularize_check", &PythonCheck<&regularize_checks>::call, "regularize_'s checks.");
}

int64_t regularize_blur_kernel_size(double blur_sigma) {
  return 2 * static_cast<int64_t>(std::ceil(3 * blur_sigma)) + 1;
}

at::Tensor regularize_blur(const at::Tensor& x, double blur_sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cnnvis::gaussian_blur", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  const at::Tensor sigma = at::scalar_tensor(blur_sigma, x.options().dtype(at::kDouble));
  return op.call(x, sigma, regularize_blur_kernel_size(blur_sigma));
}

namespace {

// The Autograd kernel. regularize_ has no derivative, so, as torch's own
// in-place ops without one do, it refuses to run where autograd would record
// it (x or grad requires grad while grad mode is on; this includes a leaf
// that requires grad). Elsewhere (under torch.no_grad(), as the
// visualization loops call it) it runs the backend's kernel and bumps x's
// version counter, so that a graph which saved x before the update raises
// at backward instead of using the changed values.
void regularize_autograd(at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                         double blur_sigma, double norm_pct, double contrib_pct, double lo,
                         double hi) {
  if (at::GradMode::is_enabled()) {
    TORCH_CHECK_VALUE(!x.requires_grad(), "x: requires grad; regularize_ updates x in place and "
                      "has no derivative, so call it under torch.no_grad() (as an optimizer "
                      "step does) or on x.detach()");
    TORCH_CHECK_VALUE(!grad.requires_grad(), "grad: requires grad; regularize_ has no "
                      "derivative, so call it under torch.no_grad() or pass grad.detach()");
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cnnvis::regularize_", "")
                       .typed<void(at::Tensor&, const at::Tensor&, double, double, double, double,
                                   double, double, double)>();
  {
    at::AutoDispatchBelowADInplaceOrView below;
    op.call(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi);
  }
  x.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

}  // namespace cnnvis

TORCH_LIBRARY_IMPL(cnnvis, Autograd, m) { m.impl("regularize_", &cnnvis::regularize_autograd); }

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def(
      "regularize_(Tensor(a!) x, Tensor grad, float lr, float decay, float blur_sigma, "
      "float norm_pct, float contrib_pct, float lo, float hi) -> ()");
}
