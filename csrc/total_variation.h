// Host-side declarations shared by the total_variation launchers: argument
// checks and the options they decode (not part of the numerical body).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace cnnvis {

enum TVReduction : int { kTVSum = 0, kTVMean = 1, kTVNone = 2 };

struct TVOptions {
  int kind;       // TVKind of total_variation_common.h
  int reduction;  // TVReduction
  double beta, eps;
};

// Validates x, beta, eps, reduction and mode (ValueError / TypeError naming
// the argument) and decodes the string options.
TVOptions check_total_variation(const at::Tensor& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode);

// Validates grad_out of _total_variation_backward against x and the reduction.
void check_total_variation_grad_out(const at::Tensor& grad_out, const at::Tensor& x,
                                    const TVOptions& o);

}  // namespace cnnvis
