// total_variation: the beta-TV prior of Mahendran & Vedaldi (isotropic) or the
// L1 TV of kornia.losses.total_variation (anisotropic), per image, and its
// gradient. The schemas and the argument checks are defined here, once; cpu/
// and cuda/ implement the schemas, and Python
// (cnnvis_ext/ops/total_variation.py) registers the fake kernels, which run
// these checks through the _C bindings below, and the autograd formula (the
// backward is its own op, _total_variation_backward).
#include "total_variation.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "python_checks.h"
#include "total_variation_common.h"

namespace cnnvis {
namespace {

// total_variation's checks, on metadata.
TVOptions check_total_variation_meta(const TensorMeta& x, double beta, double eps,
                                     c10::string_view reduction, c10::string_view mode) {
  check_4d_floating(x, "x", "(N, C, H, W)");
  TVOptions o{};
  const bool isotropic =
      check_choice<bool>("mode", mode, {{"isotropic", true}, {"anisotropic", false}});
  if (isotropic) {
    TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0, "beta: expected a finite value > 0, got ",
                      beta);
    o.kind = beta == 2.0 ? TVKind::kBeta2 : (beta == 1.0 ? TVKind::kBeta1 : TVKind::kGeneral);
  } else {
    o.kind = TVKind::kAniso;
  }
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: expected a finite value >= 0, got ", eps);
  o.reduction = check_choice<TVReduction>("reduction", reduction,
                                          {{"sum", TVReduction::kSum},
                                           {"mean", TVReduction::kMean},
                                           {"none", TVReduction::kNone}});
  o.beta = beta;
  o.eps = eps;
  return o;
}

// _total_variation_backward's check of grad_out, on metadata.
void check_total_variation_grad_out_meta(const TensorMeta& grad_out, const TensorMeta& x,
                                         const TVOptions& o) {
  if (o.reduction == TVReduction::kNone) {
    TORCH_CHECK_VALUE(grad_out.dim() == 1 && grad_out.size(0) == x.size(0),
                      "grad_out: expected shape (", x.size(0), ",) for reduction='none', got ",
                      grad_out.sizes);
  } else {
    TORCH_CHECK_VALUE(grad_out.numel() == 1,
                      "grad_out: expected a single value, got shape ", grad_out.sizes);
  }
  TORCH_CHECK_TYPE(grad_out.is_floating_point(), "grad_out: expected a floating-point tensor, got ",
                   grad_out.dtype);
  TORCH_CHECK_VALUE(grad_out.device == x.device, "grad_out: on ", grad_out.device,
                    " but x is on ", x.device);
}

// The Python faces of the checks (total_variation and total_variation_and_grad
// share the first).
void total_variation_checks(const PyMeta& x, double beta, double eps, const std::string& reduction,
                            const std::string& mode) {
  check_total_variation_meta(meta(x), beta, eps, reduction, mode);
}

void total_variation_backward_checks(const PyMeta& grad_out, const PyMeta& x, double beta,
                                     double eps, const std::string& reduction,
                                     const std::string& mode) {
  const TVOptions o = check_total_variation_meta(meta(x), beta, eps, reduction, mode);
  check_total_variation_grad_out_meta(meta(grad_out), meta(x), o);
}

}  // namespace

TVOptions check_total_variation(const at::Tensor& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode) {
  return check_total_variation_meta(TensorMeta(x), beta, eps, reduction, mode);
}

void check_total_variation_grad_out(const at::Tensor& grad_out, const at::Tensor& x,
                                    const TVOptions& o) {
  check_total_variation_grad_out_meta(TensorMeta(grad_out), TensorMeta(x), o);
}

void bind_total_variation_checks(pybind11::module_& m) {
  m.def("_total_variation_check", &PythonCheck<&total_variation_checks>::call,
        "total_variation's and total_variation_and_grad's checks.");
  m.def("_total_variation_backward_check", &PythonCheck<&total_variation_backward_checks>::call,
        "_total_variation_backward's checks.");
}

}  // namespace cnnvis

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def(
      "total_variation(Tensor x, float beta=2.0, float eps=1e-08, str reduction=\"sum\", "
      "str mode=\"isotropic\") -> Tensor");
  m.def(
      "_total_variation_backward(Tensor grad_out, Tensor x, float beta, float eps, "
      "str reduction, str mode) -> Tensor");
  m.def(
      "total_variation_and_grad(Tensor x, float beta=2.0, float eps=1e-08, "
      "str reduction=\"sum\", str mode=\"isotropic\") -> (Tensor value, Tensor grad)");
}
