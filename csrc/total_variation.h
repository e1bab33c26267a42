// Host-side code shared by the total_variation backends: the argument checks
// and the options they decode, and the op drivers, which do what both
// backends do around the backend's own kernels (not part of the numerical
// body, total_variation_common.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "total_variation_common.h"

namespace cnnvis {

enum class TVReduction { kSum, kMean, kNone };

struct TVOptions {
  TVKind kind;
  TVReduction reduction;
  double beta, eps;
};

// Validates x, beta, eps, reduction and mode (ValueError / TypeError naming
// the argument) and decodes the string options.
TVOptions check_total_variation(const at::Tensor& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode);

// Validates grad_out of _total_variation_backward against x and the reduction.
void check_total_variation_grad_out(const at::Tensor& grad_out, const at::Tensor& x,
                                    const TVOptions& o);

// f(kind) with `kind` a std::integral_constant of the formula kind, so that
// f can instantiate its kernel for it.
template <typename F>
decltype(auto) with_tv_kind(TVKind kind, F&& f) {
  switch (kind) {
    case TVKind::kBeta2:
      return f(std::integral_constant<TVKind, TVKind::kBeta2>{});
    case TVKind::kBeta1:
      return f(std::integral_constant<TVKind, TVKind::kBeta1>{});
    case TVKind::kGeneral:
      return f(std::integral_constant<TVKind, TVKind::kGeneral>{});
    default:
      return f(std::integral_constant<TVKind, TVKind::kAniso>{});
  }
}

// The op drivers. A backend K (cpu/, cuda/) provides
//   K::check(t, name)     the device and dtype of an input;
//   K::scales(grad_out, x, reduction)
//                         the upstream factor of every image's gradient
//                         (grad_out may be null: a factor of 1), in the
//                         backend's type;
//   K::template run<V, G>(x, o, grad, scales)
//                         one pass over x (contiguous): the per-image sums of
//                         the terms when V (returned, in the backend's type),
//                         the gradient into *grad (contiguous) when G; x may
//                         be empty;
//   K::finish(per_image, x, reduction)
//                         the op's value from the per-image sums;
// register_total_variation<K>(m) registers the ops with K's kernels.

template <typename K>
at::Tensor total_variation_value(const at::Tensor& x, double beta, double eps,
                                 c10::string_view reduction, c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  K::check(x, "x");
  const c10::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  return K::finish(K::template run<true, false>(xc, o, nullptr, nullptr), x, o.reduction);
}

template <typename K>
at::Tensor total_variation_grad(const at::Tensor& grad_out, const at::Tensor& x, double beta,
                                double eps, c10::string_view reduction, c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  K::check(x, "x");
  check_total_variation_grad_out(grad_out, x, o);
  const c10::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor grad = at::empty(x.sizes(), xc.options());
  if (x.numel() == 0) return grad;
  const auto scales = K::scales(&grad_out, x, o.reduction);
  K::template run<false, true>(xc, o, &grad, &scales);
  return grad;
}

template <typename K>
std::tuple<at::Tensor, at::Tensor> total_variation_value_and_grad(const at::Tensor& x,
                                                                  double beta, double eps,
                                                                  c10::string_view reduction,
                                                                  c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  K::check(x, "x");
  const c10::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor grad = at::empty(x.sizes(), xc.options());
  const auto scales = K::scales(nullptr, x, o.reduction);
  const auto per_image = K::template run<true, true>(xc, o, &grad, &scales);
  return {K::finish(per_image, x, o.reduction), grad};
}

template <typename K>
void register_total_variation(torch::Library& m) {
  m.impl("total_variation", &total_variation_value<K>);
  m.impl("_total_variation_backward", &total_variation_grad<K>);
  m.impl("total_variation_and_grad", &total_variation_value_and_grad<K>);
}

}  // namespace cnnvis
