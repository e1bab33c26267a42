// Host-side code shared by the conv_relu_pool backends: the argument checks
// and the geometry they derive, and the op drivers, which do what both
// backends do around the backend's own kernels (not part of the numerical
// body, conv_relu_pool_common.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "pool_window.h"

namespace cnnvis {

struct ConvPoolGeometry {
  int64_t n, c_in, h, w;     // input
  int64_t c_out, kh, kw;     // weight
  int64_t conv_h, conv_w;    // convolution output
  int64_t pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw;
  int64_t out_h, out_w;      // pooled output
  bool identity_pool;        // 1x1 window, stride 1, no padding: conv + ReLU only

  PoolWindow pool() const {
    return {pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw, conv_h, conv_w, out_h, out_w};
  }
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

// The op drivers. A backend K (cpu/, cuda/) provides
//   K::check(t, name)             the device and dtype of an input;
//   K::relu_max_pool(g, y, out, sw)
//                                 out, sw = max pooling of relu(y) and its
//                                 switches (channels-last, out.numel() > 0);
//   K::conv_output_grad(g, go, o, s)
//                                 the gradient of the convolution output
//                                 (channels-last), gathered from grad_out,
//                                 out and switches (channels-last);
//   K::conv_grads(g, go, o, s, x, weight, stride, padding, dilation, groups,
//                 output_mask, grad_x, grad_w)
//                                 the gradients of x and weight straight from
//                                 the pooled maps, where the backend has such
//                                 a formulation for this shape (else false);
// register_conv_relu_pool<K>(m) registers the ops with K's kernels.

template <typename K>
std::tuple<at::Tensor, at::Tensor> conv_relu_pool_forward(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    bool ceil_mode) {
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  const auto g = check_conv_relu_pool(x, weight, bias, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode);
  K::check(x, "x");
  const c10::DeviceGuard guard(x.device());
  // The convolution runs in ATen (oneDNN / cuDNN, channels-last, the bias
  // fused), where it is fastest.
  at::Tensor y = at::convolution(x.contiguous(kCL), weight, bias, stride, padding, dilation,
                                 /*transposed=*/false, /*output_padding=*/{0, 0}, groups)
                     .contiguous(kCL);
  if (g.identity_pool) {
    y = with_canonical_strides(y, kCL).relu_();
    return {y, at::empty(y.sizes(), y.options().dtype(at::kByte).memory_format(kCL)).zero_()};
  }
  at::Tensor out = at::empty({g.n, g.c_out, g.out_h, g.out_w}, y.options().memory_format(kCL));
  at::Tensor sw = at::empty(out.sizes(), out.options().dtype(at::kByte).memory_format(kCL));
  if (out.numel() > 0) K::relu_max_pool(g, y, out, sw);
  return {out, sw};
}

template <typename K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_pool_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& out, const at::Tensor& switches, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    bool ceil_mode, std::array<bool, 3> output_mask) {
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  const auto g = check_conv_relu_pool(x, weight, c10::nullopt, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode);
  check_conv_relu_pool_backward(g, grad_out, x, out, switches);
  K::check(x, "x");
  const c10::DeviceGuard guard(x.device());
  const at::Tensor go = grad_out.contiguous(kCL);
  const at::Tensor o = out.contiguous(kCL);
  const at::Tensor s = switches.contiguous(kCL);
  // grad_out where the output passed the ReLU (out > 0 or NaN).
  const auto passed = [&] { return at::where(o <= 0, at::zeros({}, go.options()), go); };
  at::Tensor grad_bias =
      output_mask[2]
          ? passed().sum({0, 2, 3}, false, at::toOpMathType(x.scalar_type())).to(x.scalar_type())
          : at::empty({0}, x.options());
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_w = at::empty({0}, x.options());
  if (!output_mask[0] && !output_mask[1]) return {grad_x, grad_w, grad_bias};
  if (g.n == 0) {  // empty batch: nothing flows back
    if (output_mask[0]) grad_x = at::empty(x.sizes(), x.options().memory_format(kCL)).zero_();
    if (output_mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
    return {grad_x, grad_w, grad_bias};
  }
  if (K::conv_grads(g, go, o, s, x, weight, stride, padding, dilation, groups, output_mask,
                    grad_x, grad_w))
    return {grad_x, grad_w, grad_bias};
  const at::Tensor gconv =
      g.identity_pool ? passed().contiguous(kCL) : K::conv_output_grad(g, go, o, s);
  conv_backward_from_conv_grad(gconv, x, weight, stride, padding, dilation, groups, output_mask,
                               grad_x, grad_w);
  return {grad_x, grad_w, grad_bias};
}

template <typename K>
void register_conv_relu_pool(torch::Library& m) {
  m.impl("conv_relu_pool", &conv_relu_pool_forward<K>);
  m.impl("_conv_relu_pool_backward", &conv_relu_pool_backward<K>);
}

}  // namespace cnnvis
