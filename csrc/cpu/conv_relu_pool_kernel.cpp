// CPU backend of conv_relu_pool. The convolution itself runs in ATen (oneDNN,
// channels-last, where it is fastest on CPU); bias is added by it. ReLU, max
// pooling and the argmax are one pass over the conv output (relu_max_window),
// parallel over output rows, vectorized over channels. The backward computes
// the gradients of x and weight from the pooled map and the switches
// (switch_sparse.h) for groups 1 and long enough filter rows; otherwise it
// rebuilds the conv-output gradient in one pass (gather_conv_grad, each
// element written once) and hands it to ATen's convolution backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../conv_relu_pool.h"
#include "../conv_relu_pool_common.h"
#include "switch_sparse.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// Which formulation the backward's convolution gradients use:
// CNNVIS_CONV_BACKWARD=sparse|dense forces one (for tests and benchmarks),
// anything else (the default) lets the shape decide.
int backward_choice() {
  const char* e = std::getenv("CNNVIS_CONV_BACKWARD");
  if (e == nullptr) return 0;
  if (std::strcmp(e, "sparse") == 0) return 1;
  if (std::strcmp(e, "dense") == 0) return 2;
  return 0;
}

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

std::tuple<at::Tensor, at::Tensor> conv_relu_pool_cpu(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    bool ceil_mode) {
  const auto g = check_conv_relu_pool(x, weight, bias, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "x: dtype ", x.scalar_type(), " is not supported on CPU (float32, float64)");
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x: expected a CPU tensor, got ", x.device());

  at::Tensor y = at::convolution(x.contiguous(kCL), weight, bias, stride, padding, dilation,
                                 /*transposed=*/false, /*output_padding=*/{0, 0}, groups)
                     .contiguous(kCL);
  if (g.identity_pool) {
    y = with_canonical_strides(y, kCL).relu_();
    return {y, at::empty(y.sizes(), y.options().dtype(at::kByte).memory_format(kCL)).zero_()};
  }
  at::Tensor out = at::empty({g.n, g.c_out, g.out_h, g.out_w}, y.options().memory_format(kCL));
  at::Tensor sw = at::empty(out.sizes(), out.options().dtype(at::kByte).memory_format(kCL));
  if (out.numel() == 0) return {out, sw};

  const int64_t C = g.c_out, CH = g.conv_h, CW = g.conv_w;
  const int64_t PH = g.out_h, PW = g.out_w;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "conv_relu_pool_cpu", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    uint8_t* sp = sw.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, g.n * PH, grain_for(PW * C * g.pool_kh * g.pool_kw),
                     [&](int64_t begin, int64_t end) {
      // Switches are tracked in scalar_t (exact for positions < 256) so the
      // channel loop has one lane width and vectorizes; narrowed per window.
      std::vector<scalar_t> kbuf(C);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / PH, oh = row % PH;
        int64_t hstart, h0, h1;
        pool_window(oh, g.pool_sh, g.pool_ph, g.pool_kh, CH, &hstart, &h0, &h1);
        const scalar_t* yn = yp + n * CH * CW * C;
        for (int64_t ow = 0; ow < PW; ++ow) {
          int64_t wstart, w0, w1;
          pool_window(ow, g.pool_sw, g.pool_pw, g.pool_kw, CW, &wstart, &w0, &w1);
          const int64_t o = ((n * PH + oh) * PW + ow) * C;
          relu_max_window<scalar_t, scalar_t, scalar_t>(yn, CW * C, C, h0, h1, w0, w1, hstart,
                                                        wstart, g.pool_kw, C, op + o, kbuf.data());
          uint8_t* so = sp + o;
          for (int64_t c = 0; c < C; ++c) so[c] = static_cast<uint8_t>(kbuf[c]);
        }
      }
    });
  });
  return {out, sw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_pool_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& out, const at::Tensor& switches, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    bool ceil_mode, std::array<bool, 3> output_mask) {
  const auto g = check_conv_relu_pool(x, weight, c10::nullopt, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode);
  check_conv_relu_pool_backward(g, grad_out, x, out, switches);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "x: dtype ", x.scalar_type(), " is not supported on CPU (float32, float64)");

  const at::Tensor go = grad_out.contiguous(kCL);
  const at::Tensor o = out.contiguous(kCL);
  const at::Tensor s = switches.contiguous(kCL);

  at::Tensor grad_bias = output_mask[2]
                             ? at::where(o <= 0, at::zeros({}, go.options()), go).sum({0, 2, 3})
                             : at::empty({0}, x.options());
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_w = at::empty({0}, x.options());
  if (!output_mask[0] && !output_mask[1]) return {grad_x, grad_w, grad_bias};
  if (g.n == 0) {  // empty batch: nothing flows back
    if (output_mask[0]) grad_x = at::empty(x.sizes(), x.options().memory_format(kCL)).zero_();
    if (output_mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
    return {grad_x, grad_w, grad_bias};
  }

  const int64_t C = g.c_out, CH = g.conv_h, CW = g.conv_w;
  const int64_t PH = g.out_h, PW = g.out_w;

  // Switch-sparse formulation (switch_sparse.h): the conv-output gradient
  // has at most one nonzero per pooling window, so both gradients cost a
  // pool-area fraction of the dense GEMMs. Groups 1, runs of >= 16 values.
  switch_sparse::Geom sg{g.n, C, PH, PW, CH, CW, g.pool_kh, g.pool_kw, g.pool_sh, g.pool_sw,
                         g.pool_ph, g.pool_pw, g.c_in, g.kh, g.kw, stride[0], stride[1],
                         dilation[0], dilation[1], padding[0], padding[1], g.h, g.w};
  const int choice = backward_choice();
  if (groups == 1 && (choice == 1 || (choice == 0 && !g.identity_pool &&
                                      switch_sparse::worthwhile(sg)))) {
    const at::Tensor sw_or_none = g.identity_pool ? at::Tensor() : s;
    if (output_mask[0])
      grad_x = switch_sparse::scatter(sg, switch_sparse::Values::kMaskedGrad, go, o, sw_or_none,
                                      weight);
    if (output_mask[1])
      grad_w = switch_sparse::correlate(sg, switch_sparse::Values::kMaskedGrad, go, o,
                                        sw_or_none, x);
    return {grad_x, grad_w, grad_bias};
  }

  at::Tensor gconv = at::empty({g.n, C, CH, CW}, go.options().memory_format(kCL));
  if (g.identity_pool) {
    gconv = at::where(o <= 0, at::zeros({}, go.options()), go).contiguous(kCL);  // any layout is fine here
  } else if (gconv.numel() > 0) {
    // The switches widened to the gradient's dtype (a pooled-size temporary,
    // freed on return): the gather's channel loop then has one lane width
    // and vectorizes, where mixing uint8 and float lanes kept it scalar.
    const at::Tensor sf = s.to(go.scalar_type());
    AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "conv_relu_pool_backward_cpu", [&] {
      const scalar_t* gp = go.const_data_ptr<scalar_t>();
      const scalar_t* op = o.const_data_ptr<scalar_t>();
      const scalar_t* sp = sf.const_data_ptr<scalar_t>();
      scalar_t* dp = gconv.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.n * CH, grain_for(CW * C), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / CH, h = row % CH;
          int64_t ph_lo, ph_hi;
          windows_containing(h, g.pool_sh, g.pool_ph, g.pool_kh, PH, &ph_lo, &ph_hi);
          const int64_t pbase = n * PH * PW * C;
          for (int64_t w = 0; w < CW; ++w) {
            int64_t pw_lo, pw_hi;
            windows_containing(w, g.pool_sw, g.pool_pw, g.pool_kw, PW, &pw_lo, &pw_hi);
            gather_conv_grad<scalar_t, scalar_t, scalar_t>(
                gp + pbase, op + pbase, sp + pbase, PW * C, C, h, w, ph_lo, ph_hi, pw_lo, pw_hi,
                g.pool_sh, g.pool_sw, g.pool_ph, g.pool_pw, g.pool_kw, C,
                dp + ((n * CH + h) * CW + w) * C);
          }
        }
      });
    });
  }
  conv_backward_from_conv_grad(gconv, x, weight, stride, padding, dilation, groups, output_mask,
                               grad_x, grad_w);
  return {grad_x, grad_w, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) {
  m.impl("conv_relu_pool", &conv_relu_pool_cpu);
  m.impl("_conv_relu_pool_backward", &conv_relu_pool_backward_cpu);
}

}  // namespace cnnvis
