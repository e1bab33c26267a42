// The argument checks of every op, on tensor metadata (checks.h). The
// kernels reach them through the tensor-taking check_* functions of <op>.h,
// Python's fake kernels through the _C bindings of cnnvis.cpp; each is
// defined in its op's <op>.cpp beside the schema.
#pragma once

#include <c10/util/string_view.h>

#include <optional>

#include "checks.h"
#include "conv_relu_pool.h"
#include "gaussian_blur.h"
#include "total_variation.h"
#include "unpool_conv_transpose.h"

namespace cnnvis {

ConvPoolGeometry check_conv_relu_pool(const TensorMeta& x, const TensorMeta& weight,
                                      const std::optional<TensorMeta>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups,
                                      at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                      at::IntArrayRef pool_padding, bool ceil_mode);

void check_conv_relu_pool_backward(const ConvPoolGeometry& g, const TensorMeta& grad_out,
                                   const TensorMeta& x, const TensorMeta& out,
                                   const TensorMeta& switches);

UnpoolConvTGeometry check_unpool_conv_transpose(
    const TensorMeta& p, const std::optional<TensorMeta>& switches, const TensorMeta& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef output_size, at::IntArrayRef input_size, c10::string_view algorithm);

void check_unpool_conv_transpose_backward(const UnpoolConvTGeometry& g, const TensorMeta& grad_out,
                                          const TensorMeta& p);

TVOptions check_total_variation(const TensorMeta& x, double beta, double eps,
                                c10::string_view reduction, c10::string_view mode);

void check_total_variation_grad_out(const TensorMeta& grad_out, const TensorMeta& x,
                                    const TVOptions& o);

// Everything but sigma's values, which only the kernels can read
// (check_gaussian_blur of gaussian_blur.h adds check_blur_sigma_values).
void check_gaussian_blur(const TensorMeta& x, const TensorMeta& sigma, int64_t kernel_size,
                         const char* x_name);

// sigma's values lie in [min_value, max_value]: they must be finite and >= 0.
void check_blur_sigma_values(double min_value, double max_value);

void check_regularize(const TensorMeta& x, const TensorMeta& grad, double lr, double decay,
                      double blur_sigma, double norm_pct, double contrib_pct, double lo, double hi);

}  // namespace cnnvis
