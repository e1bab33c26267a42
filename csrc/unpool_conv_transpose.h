// Host-side code shared by the unpool_conv_transpose backends: the argument
// checks and the geometry they derive, the density thresholds of the sparse
// paths, and the op drivers, which do what both backends do around the
// backend's own kernels (not part of the numerical body,
// unpool_conv_transpose_common.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "pool_window.h"

namespace cnnvis {

// How the forward filters the unpooled map: "auto" lets the density of the
// input decide between the sparse scatter and the dense transposed
// convolution.
enum class UnpoolAlgorithm { kAuto, kSparse, kDense };

struct UnpoolConvTGeometry {
  int64_t n, c_out, pooled_h, pooled_w;  // p (the pooled map)
  int64_t conv_h, conv_w;                // unpooled map = forward conv output (output_size)
  int64_t c_in, h, w;                    // result = forward conv input (input_size)
  int64_t cig, kh, kw;                   // weight (C_out, C_in/groups, kH, kW)
  int64_t sh, sw, ph, pw, dh, dw, groups;
  int64_t oph, opw;                      // output_padding of the transposed convolution
  int64_t pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw;
  bool identity_pool;  // 1x1 window, stride 1, no padding: no unpooling
  UnpoolAlgorithm algorithm;

  PoolWindow pool() const {
    return {pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw,
            conv_h,  conv_w,  pooled_h, pooled_w};
  }
};

// Validates every argument of unpool_conv_transpose (raising ValueError /
// TypeError that name the argument) and returns the shapes they imply.
UnpoolConvTGeometry check_unpool_conv_transpose(
    const at::Tensor& p, const c10::optional<at::Tensor>& switches, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef output_size, at::IntArrayRef input_size, c10::string_view algorithm);

// Validates grad_out of _unpool_conv_transpose_backward.
void check_unpool_conv_transpose_backward(const UnpoolConvTGeometry& g, const at::Tensor& grad_out,
                                          const at::Tensor& p);

// Density (nonzeros / unpooled-map size) under which the CPU forward
// scatters the nonzeros instead of unpooling densely and calling ATen's
// transposed convolution (measured, see benchmarks/bench_deconvnet.py).
constexpr double kSparseDensityThresholdCPU = 0.05;
// The same for the register-blocked switch-sparse scatter (groups 1, no
// rectification after overlapping sums). Without pooling (the dense path is
// one transposed convolution) it breaks even near 0.2; after a real pooling
// (the dense path also unpools) it won at every density a 2x2 pool allows
// (a ReLU'd pooled map has ~0.23 after unpooling: 1.1x-2x faster, measured
// in benchmarks/bench_deconvnet.py), hence the higher threshold there.
constexpr double kSwitchSparseDensityThresholdCPU = 0.2;
constexpr double kSwitchSparsePooledDensityThresholdCPU = 0.3;
constexpr double kSparseDensityThresholdCUDA = 0.01;

// The pooled map and switches as the kernels read them, and where the
// rectification goes.
struct UnpoolInputs {
  at::Tensor p;         // channels-last
  at::Tensor switches;  // channels-last; undefined for the identity pooling
  // Rectify every pooled value (pre), or the sums where windows overlap
  // (post: two pooled values can share a position, and relu(a) + relu(b) is
  // not relu(a + b)). Without overlapping windows rectifying p first is the
  // same and cheaper.
  bool pre, post;
};

inline UnpoolInputs unpool_inputs(const UnpoolConvTGeometry& g, const at::Tensor& p,
                                  const c10::optional<at::Tensor>& switches, bool rectify) {
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  UnpoolInputs in;
  in.p = p.contiguous(kCL);
  if (switches.has_value() && switches->defined()) in.switches = switches->contiguous(kCL);
  in.post = rectify && g.pool().overlapping();
  in.pre = rectify && !in.post;
  return in;
}

// The dense forward's filter: conv_transpose2d of the unpooled map u.
inline at::Tensor conv_transpose_unpooled(const UnpoolConvTGeometry& g, const at::Tensor& u,
                                          const at::Tensor& weight) {
  return at::convolution(u, weight, c10::nullopt, {g.sh, g.sw}, {g.ph, g.pw}, {g.dh, g.dw},
                         /*transposed=*/true, {g.oph, g.opw}, g.groups)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

// The op drivers. A backend K (cpu/, cuda/) provides
//   K::check(t, name)             the device and dtype of an input;
//   K::forward(g, in, weight)     the op's result (channels-last), for a
//                                 non-empty batch;
//   K::unpool(g, in, post)        the unpooled map (N, C_out, H_conv, W_conv),
//                                 channels-last, the sums rectified when
//                                 `post`; raises bad_switch() for a switch
//                                 outside its window or the map;
//   K::grad_p(g, in, gconv, u)    the gradient of p from gconv, the gradient
//                                 of the unpooled map (channels-last): gconv
//                                 at the switch positions, masked by the
//                                 rectification (of p, or of the unrectified
//                                 sums u where in.post; u undefined otherwise);
// register_unpool_conv_transpose<K>(m) registers the ops with K's kernels.

template <typename K>
at::Tensor unpool_conv_transpose_forward(
    const at::Tensor& p, const c10::optional<at::Tensor>& switches, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef output_size, at::IntArrayRef input_size, bool rectify,
    c10::string_view algorithm) {
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  const auto g = check_unpool_conv_transpose(p, switches, weight, stride, padding, dilation,
                                             groups, pool_kernel, pool_stride, pool_padding,
                                             output_size, input_size, algorithm);
  K::check(p, "p");
  const c10::DeviceGuard guard(p.device());
  if (g.n == 0 || g.c_out == 0) {
    return at::empty({g.n, g.c_in, g.h, g.w}, p.options().memory_format(kCL)).zero_();
  }
  return K::forward(g, unpool_inputs(g, p, switches, rectify), weight);
}

template <typename K>
std::tuple<at::Tensor, at::Tensor> unpool_conv_transpose_backward(
    const at::Tensor& grad_out, const at::Tensor& p, const c10::optional<at::Tensor>& switches,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, at::IntArrayRef pool_kernel,
    at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef output_size,
    at::IntArrayRef input_size, bool rectify, std::array<bool, 2> output_mask) {
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  const auto g = check_unpool_conv_transpose(p, switches, weight, stride, padding, dilation,
                                             groups, pool_kernel, pool_stride, pool_padding,
                                             output_size, input_size, "auto");
  K::check(p, "p");
  check_unpool_conv_transpose_backward(g, grad_out, p);
  const c10::DeviceGuard guard(p.device());
  at::Tensor grad_p = at::empty({0}, p.options());
  at::Tensor grad_w = at::empty({0}, p.options());
  if (g.n == 0 || g.c_out == 0) {
    if (output_mask[0]) grad_p = at::empty(p.sizes(), p.options().memory_format(kCL)).zero_();
    if (output_mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
    return {grad_p, grad_w};
  }
  const at::Tensor go = grad_out.contiguous(kCL);
  const UnpoolInputs in = unpool_inputs(g, p, switches, rectify);
  // The unpooled map, not yet rectified when the rectification follows the sums.
  at::Tensor u = K::unpool(g, in, /*post=*/false);
  if (output_mask[0]) {
    // The adjoint of the transposed convolution is the convolution.
    const at::Tensor gconv = at::convolution(go, weight, c10::nullopt, stride, padding, dilation,
                                             /*transposed=*/false, {0, 0}, groups)
                                 .contiguous(kCL);
    grad_p = K::grad_p(g, in, gconv, in.post ? u : at::Tensor());
  }
  if (output_mask[1]) {
    if (in.post) u.relu_();
    auto grads = at::convolution_backward(go, u, weight, c10::nullopt, stride, padding, dilation,
                                          /*transposed=*/true, {g.oph, g.opw}, groups,
                                          {false, true, false});
    grad_w = std::get<1>(grads).contiguous();
  }
  return {grad_p, grad_w};
}

template <typename K>
void register_unpool_conv_transpose(torch::Library& m) {
  m.impl("unpool_conv_transpose", &unpool_conv_transpose_forward<K>);
  m.impl("_unpool_conv_transpose_backward", &unpool_conv_transpose_backward<K>);
}

}  // namespace cnnvis
