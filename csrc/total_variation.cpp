// total_variation: the beta-TV prior of Mahendran & Vedaldi (isotropic) or the
// L1 TV of kornia.losses.total_variation (anisotropic), per image, and its
// gradient. The schemas are defined here, once; cpu/ and cuda/ implement
// them, and Python (cnnvis_ext/ops.py) registers the fake kernels and the
// autograd formula (the backward is its own op, _total_variation_backward).
#include "total_variation.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

#include "total_variation_common.h"

namespace cnnvis {

TVOptions check_total_variation(const at::Tensor& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D (N, C, H, W) tensor, got ", x.dim(),
                    "-D with shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x: expected a floating-point tensor, got ",
                   x.scalar_type());
  TVOptions o{};
  if (mode == "isotropic") {
    TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0, "beta: expected a finite value > 0, got ",
                      beta);
    o.kind = beta == 2.0 ? kTVBeta2 : (beta == 1.0 ? kTVBeta1 : kTVGeneral);
  } else if (mode == "anisotropic") {
    o.kind = kTVAniso;
  } else {
    TORCH_CHECK_VALUE(false, "mode: expected 'isotropic' or 'anisotropic', got '", mode, "'");
  }
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: expected a finite value >= 0, got ", eps);
  if (reduction == "sum") {
    o.reduction = kTVSum;
  } else if (reduction == "mean") {
    o.reduction = kTVMean;
  } else if (reduction == "none") {
    o.reduction = kTVNone;
  } else {
    TORCH_CHECK_VALUE(false, "reduction: expected 'sum', 'mean' or 'none', got '", reduction, "'");
  }
  o.beta = beta;
  o.eps = eps;
  return o;
}

void check_total_variation_grad_out(const at::Tensor& grad_out, const at::Tensor& x,
                                    const TVOptions& o) {
  if (o.reduction == kTVNone) {
    TORCH_CHECK_VALUE(grad_out.dim() == 1 && grad_out.size(0) == x.size(0),
                      "grad_out: expected shape (", x.size(0), ",) for reduction='none', got ",
                      grad_out.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_out.numel() == 1, "grad_out: expected a single value, got shape ",
                      grad_out.sizes());
  }
  TORCH_CHECK_TYPE(at::isFloatingType(grad_out.scalar_type()),
                   "grad_out: expected a floating-point tensor, got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), "grad_out: on ", grad_out.device(),
                    " but x is on ", x.device());
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
