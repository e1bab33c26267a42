// Host-side declarations shared by the unpool_conv_transpose launchers:
// argument checks and the geometry they derive (not part of the numerical body).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <string>

namespace cnnvis {

struct UnpoolConvTGeometry {
  int64_t n, c_out, pooled_h, pooled_w;  // p (the pooled map)
  int64_t conv_h, conv_w;                // unpooled map = forward conv output (output_size)
  int64_t c_in, h, w;                    // result = forward conv input (input_size)
  int64_t cig, kh, kw;                   // weight (C_out, C_in/groups, kH, kW)
  int64_t sh, sw, ph, pw, dh, dw, groups;
  int64_t oph, opw;                      // output_padding of the transposed convolution
  int64_t pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw;
  bool identity_pool;  // 1x1 window, stride 1, no padding: no unpooling
  int algorithm;       // 0 auto, 1 sparse, 2 dense
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

}  // namespace cnnvis
