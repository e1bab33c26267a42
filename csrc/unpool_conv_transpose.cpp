// unpool_conv_transpose: one deconvnet (Zeiler & Fergus) step,
//   conv_transpose2d(unpool(relu(p) if rectify else p, switches), weight),
// and its backward. The schemas are defined here, once; the CPU and CUDA
// backends implement them in cpu/ and cuda/, and Python (cnnvis_ext/ops.py)
// registers the fake kernels and the autograd formula.
#include "unpool_conv_transpose.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "checks.h"

namespace cnnvis {

UnpoolConvTGeometry check_unpool_conv_transpose(
    const at::Tensor& p, const c10::optional<at::Tensor>& switches, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef output_size, at::IntArrayRef input_size, c10::string_view algorithm) {
  check_conv_pool_args(p, "p", "(N, C_out, H_p, W_p)", weight, groups, stride, padding, dilation,
                       pool_kernel, pool_stride, pool_padding);
  check_pair(output_size, "output_size", 1);
  check_pair(input_size, "input_size", 1);

  UnpoolConvTGeometry g{};
  if (algorithm == "auto") {
    g.algorithm = 0;
  } else if (algorithm == "sparse") {
    g.algorithm = 1;
  } else if (algorithm == "dense") {
    g.algorithm = 2;
  } else {
    TORCH_CHECK_VALUE(false, "algorithm: expected 'auto', 'sparse' or 'dense', got '",
                      std::string(algorithm), "'");
  }
  g.n = p.size(0);
  g.c_out = p.size(1);
  g.pooled_h = p.size(2);
  g.pooled_w = p.size(3);
  g.cig = weight.size(1);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  TORCH_CHECK_VALUE(weight.size(0) >= 1 && g.cig >= 1 && g.kh >= 1 && g.kw >= 1,
                    "weight: expected non-empty (C_out, C_in/groups, kH, kW), got ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) == g.c_out, "weight: has C_out=", weight.size(0),
                    " filters but p has ", g.c_out, " channels");
  TORCH_CHECK_VALUE(g.c_out % groups == 0, "weight: C_out=", g.c_out,
                    " is not divisible by groups=", groups);
  g.groups = groups;
  g.c_in = g.cig * groups;
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.conv_h = output_size[0];
  g.conv_w = output_size[1];
  g.h = input_size[0];
  g.w = input_size[1];

  // input_size must be an input size whose convolution gives output_size;
  // the transposed convolution's output_padding follows from it.
  const int64_t eff_kh = g.dh * (g.kh - 1) + 1;
  const int64_t eff_kw = g.dw * (g.kw - 1) + 1;
  TORCH_CHECK_VALUE(g.h + 2 * g.ph >= eff_kh && g.w + 2 * g.pw >= eff_kw,
                    "input_size: padded input of size (", g.h + 2 * g.ph, ", ", g.w + 2 * g.pw,
                    ") is smaller than the dilated kernel (", eff_kh, ", ", eff_kw, ")");
  const int64_t conv_h = (g.h + 2 * g.ph - eff_kh) / g.sh + 1;
  const int64_t conv_w = (g.w + 2 * g.pw - eff_kw) / g.sw + 1;
  TORCH_CHECK_VALUE(conv_h == g.conv_h && conv_w == g.conv_w, "input_size: a convolution of an ",
                    input_size, " input gives a (", conv_h, ", ", conv_w,
                    ") output, not output_size=", output_size);
  g.oph = g.h + 2 * g.ph - eff_kh - (g.conv_h - 1) * g.sh;
  g.opw = g.w + 2 * g.pw - eff_kw - (g.conv_w - 1) * g.sw;

  g.pool_kh = pool_kernel[0];
  g.pool_kw = pool_kernel[1];
  g.pool_sh = pool_stride[0];
  g.pool_sw = pool_stride[1];
  g.pool_ph = pool_padding[0];
  g.pool_pw = pool_padding[1];
  g.identity_pool = g.pool_kh == 1 && g.pool_kw == 1 && g.pool_sh == 1 && g.pool_sw == 1 &&
                    g.pool_ph == 0 && g.pool_pw == 0;
  TORCH_CHECK_VALUE(g.pool_kh * g.pool_kw <= 255, "pool_kernel: a window of ", pool_kernel,
                    " has ", g.pool_kh * g.pool_kw,
                    " positions; uint8 switches support at most 255");
  TORCH_CHECK_VALUE(2 * g.pool_ph <= g.pool_kh && 2 * g.pool_pw <= g.pool_kw,
                    "pool_padding: must be at most half of pool_kernel, got pool_padding=",
                    pool_padding, " and pool_kernel=", pool_kernel);
  // The pooled map must be what pooling output_size gives (floor or ceil mode).
  const bool h_ok = g.pooled_h == pool_out_size(g.conv_h, g.pool_kh, g.pool_ph, g.pool_sh, false) ||
                    g.pooled_h == pool_out_size(g.conv_h, g.pool_kh, g.pool_ph, g.pool_sh, true);
  const bool w_ok = g.pooled_w == pool_out_size(g.conv_w, g.pool_kw, g.pool_pw, g.pool_sw, false) ||
                    g.pooled_w == pool_out_size(g.conv_w, g.pool_kw, g.pool_pw, g.pool_sw, true);
  TORCH_CHECK_VALUE(h_ok && w_ok, "output_size: pooling an ", output_size, " map with kernel ",
                    pool_kernel, ", stride ", pool_stride, " and padding ", pool_padding,
                    " gives (", pool_out_size(g.conv_h, g.pool_kh, g.pool_ph, g.pool_sh, false), ", ",
                    pool_out_size(g.conv_w, g.pool_kw, g.pool_pw, g.pool_sw, false),
                    ") pooled values, but p is ", p.sizes());

  if (switches.has_value() && switches->defined()) {
    const at::Tensor& s = *switches;
    TORCH_CHECK_TYPE(s.scalar_type() == at::kByte,
                     "switches: expected uint8 switches (as conv_relu_pool returns), got ",
                     s.scalar_type(), "; convert max_pool2d indices with indices_to_switches");
    TORCH_CHECK_VALUE(s.sizes() == p.sizes(), "switches: expected the shape of p ", p.sizes(),
                      ", got ", s.sizes());
    TORCH_CHECK_VALUE(s.device() == p.device(), "switches: on ", s.device(), " but p is on ",
                      p.device());
  } else {
    TORCH_CHECK_VALUE(g.identity_pool, "switches: required unless the pooling is the identity "
                      "(pool_kernel=1, pool_stride=1, pool_padding=0), got pool_kernel=",
                      pool_kernel);
  }
  return g;
}

void check_unpool_conv_transpose_backward(const UnpoolConvTGeometry& g, const at::Tensor& grad_out,
                                          const at::Tensor& p) {
  const std::vector<int64_t> expected{g.n, g.c_in, g.h, g.w};
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(expected), "grad_out: expected shape ",
                    at::IntArrayRef(expected), ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == p.scalar_type(), "grad_out: dtype ",
                   grad_out.scalar_type(), " does not match p's dtype ", p.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == p.device(), "grad_out: on ", grad_out.device(),
                    " but p is on ", p.device());
}

}  // namespace cnnvis

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def(
      "unpool_conv_transpose(Tensor p, Tensor? switches, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, int[2] pool_kernel, int[2] pool_stride, "
      "int[2] pool_padding, int[2] output_size, int[2] input_size, bool rectify, "
      "str algorithm=\"auto\") -> Tensor");
  m.def(
      "_unpool_conv_transpose_backward(Tensor grad_out, Tensor p, Tensor? switches, "
      "Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, int[2] output_size, "
      "int[2] input_size, bool rectify, bool[2] output_mask) -> (Tensor grad_p, "
      "Tensor grad_weight)");
}
