// Host-side declarations shared by the conv_relu_pool launchers: argument
// checks and the geometry they derive (not part of the numerical body).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>

namespace cnnvis {

struct ConvPoolGeometry {
  int64_t n, c_in, h, w;     // input
  int64_t c_out, kh, kw;     // weight
  int64_t conv_h, conv_w;    // convolution output
  int64_t pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw;
  int64_t out_h, out_w;      // pooled output
  bool identity_pool;        // 1x1 window, stride 1, no padding: conv + ReLU only
};

// Validates every argument of conv_relu_pool (raising ValueError / TypeError
// that name the argument) and returns the shapes they imply.
ConvPoolGeometry check_conv_relu_pool(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups,
                                      at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                      at::IntArrayRef pool_padding, bool ceil_mode);

// Validates the extra arguments of _conv_relu_pool_backward.
void check_conv_relu_pool_backward(const ConvPoolGeometry& g, const at::Tensor& grad_out,
                                   const at::Tensor& x, const at::Tensor& out,
                                   const at::Tensor& switches);

// `t` with exactly the strides at::empty(t.sizes(), fmt) gives (copied only
// when they differ). `.contiguous(fmt)` keeps ambiguous strides of size-1
// dimensions, which would make the real kernel's strides differ from the fake
// kernel's.
at::Tensor with_canonical_strides(const at::Tensor& t, at::MemoryFormat fmt);

// The backend-neutral tail of the backward: given the rebuilt gradient of the
// convolution output (channels-last), ATen's convolution backward gives the
// gradients of x and weight (those asked for by output_mask[0], [1]), with
// the strides the fake kernel promises. The others are left as they are.
void conv_backward_from_conv_grad(const at::Tensor& gconv, const at::Tensor& x,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, std::array<bool, 3> output_mask,
                                  at::Tensor& grad_x, at::Tensor& grad_w);

}  // namespace cnnvis
