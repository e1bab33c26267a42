// total_variation: the beta-TV prior of Mahendran & Vedaldi (isotropic) or the
// L1 TV of kornia.losses.total_variation (anisotropic), per image, and its
// gradient. The schemas and the argument checks are defined here, once; cpu/
// and cuda/ implement the schemas, and Python (cnnvis_ext/ops/total_variation.py)
// registers the fake kernels, which run these checks through _C, and the
// autograd formula (the backward is its own op, _total_variation_backward).
#include "total_variation.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "op_checks.h"
#include "total_variation_common.h"

namespace cnnvis {

TVOptions check_total_variation(const TensorMeta& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode) {
  check_4d_floating(x, "x", "(N, C, H, W)");
  TVOptions o{};
  if (mode == "isotropic") {
    TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0, "beta: expected a finite value > 0, got ",
                      beta);
    o.kind = beta == 2.0 ? TVKind::kBeta2 : (beta == 1.0 ? TVKind::kBeta1 : TVKind::kGeneral);
  } else if (mode == "anisotropic") {
    o.kind = TVKind::kAniso;
  } else {
    TORCH_CHECK_VALUE(false, "mode: expected 'isotropic' or 'anisotropic', got '", mode, "'");
  }
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: expected a finite value >= 0, got ", eps);
  if (reduction == "sum") {
    o.reduction = TVReduction::kSum;
  } else if (reduction == "mean") {
    o.reduction = TVReduction::kMean;
  } else if (reduction == "none") {
    o.reduction = TVReduction::kNone;
  } else {
    TORCH_CHECK_VALUE(false, "reduction: expected 'sum', 'mean' or 'none', got '", reduction, "'");
  }
  o.beta = beta;
  o.eps = eps;
  return o;
}

TVOptions check_total_variation(const at::Tensor& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode) {
  return check_total_variation(TensorMeta(x), beta, eps, reduction, mode);
}

void check_total_variation_grad_out(const TensorMeta& grad_out, const TensorMeta& x,
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

void check_total_variation_grad_out(const at::Tensor& grad_out, const at::Tensor& x,
                                    const TVOptions& o) {
  check_total_variation_grad_out(TensorMeta(grad_out), TensorMeta(x), o);
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
