// CPU backend of conv_relu_pool (the op drivers of conv_relu_pool.h run the
// convolution in ATen, oneDNN channels-last). ReLU, max pooling and the
// argmax are one pass over the conv output (relu_max_window), parallel over
// output rows, vectorized over channels. The backward computes the gradients
// of x and weight from the pooled map and the switches (switch_sparse.h) for
// groups 1 and long enough filter rows; otherwise it rebuilds the
// conv-output gradient in one pass (gather_conv_grad, each element written
// once) and hands it to ATen's convolution backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "../conv_relu_pool.h"
#include "../conv_relu_pool_common.h"
#include "cpu_helpers.h"
#include "switch_sparse.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// Which formulation the backward's convolution gradients use.
enum class ConvBackward { kAuto, kSwitchSparse, kDense };

// CNNVIS_CONV_BACKWARD=sparse|dense forces one (for tests and benchmarks);
// anything else (the default) lets the shape decide.
ConvBackward backward_choice() {
  const char* e = std::getenv("CNNVIS_CONV_BACKWARD");
  if (e == nullptr) return ConvBackward::kAuto;
  if (std::strcmp(e, "sparse") == 0) return ConvBackward::kSwitchSparse;
  if (std::strcmp(e, "dense") == 0) return ConvBackward::kDense;
  return ConvBackward::kAuto;
}

struct ConvReluPoolCpu : CpuBackend {
  static void relu_max_pool(const ConvPoolGeometry& g, const at::Tensor& y, at::Tensor& out,
                            at::Tensor& sw) {
    const PoolWindow pool = g.pool();
    const int64_t C = g.c_out, CH = g.conv_h, CW = g.conv_w, PH = g.out_h, PW = g.out_w;
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "conv_relu_pool_cpu", [&] {
      const scalar_t* yp = y.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      uint8_t* sp = sw.mutable_data_ptr<uint8_t>();
      at::parallel_for(0, g.n * PH, grain_for(PW * C * pool.area()), [&](int64_t begin,
                                                                         int64_t end) {
        // Switches are tracked in scalar_t (exact for positions < 256) so the
        // channel loop has one lane width and vectorizes; narrowed per window.
        std::vector<scalar_t> kbuf(C);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / PH, oh = row % PH;
          int64_t hstart, h0, h1;
          pool.window_rows(oh, &hstart, &h0, &h1);
          const scalar_t* yn = yp + n * CH * CW * C;
          for (int64_t ow = 0; ow < PW; ++ow) {
            int64_t wstart, w0, w1;
            pool.window_cols(ow, &wstart, &w0, &w1);
            const int64_t o = ((n * PH + oh) * PW + ow) * C;
            relu_max_window<scalar_t, scalar_t, scalar_t>(yn, CW * C, C, h0, h1, w0, w1, hstart,
                                                          wstart, pool.kw, C, op + o,
                                                          kbuf.data());
            uint8_t* so = sp + o;
            for (int64_t c = 0; c < C; ++c) so[c] = static_cast<uint8_t>(kbuf[c]);
          }
        }
      });
    });
  }

  // The switch-sparse formulation (switch_sparse.h): the conv-output
  // gradient has at most one nonzero per pooling window, so both gradients
  // cost a pool-area fraction of the dense GEMMs. Groups 1, runs of >= 16
  // values.
  static bool conv_grads(const ConvPoolGeometry& g, const at::Tensor& go, const at::Tensor& o,
                         const at::Tensor& s, const at::Tensor& x, const at::Tensor& weight,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups,
                         std::array<bool, 3> output_mask, at::Tensor& grad_x,
                         at::Tensor& grad_w) {
    const switch_sparse::Geom sg{g.n,       g.c_out,     g.pool(),    g.c_in,      g.kh,
                                 g.kw,      stride[0],   stride[1],   dilation[0], dilation[1],
                                 padding[0], padding[1], g.h,         g.w};
    const ConvBackward choice = backward_choice();
    const bool sparse = choice == ConvBackward::kSwitchSparse ||
                        (choice == ConvBackward::kAuto && !g.identity_pool &&
                         switch_sparse::worthwhile(sg));
    if (groups != 1 || !sparse) return false;
    const at::Tensor sw_or_none = g.identity_pool ? at::Tensor() : s;
    const auto mode = switch_sparse::Values::kMaskedGrad;
    if (output_mask[0]) grad_x = switch_sparse::scatter(sg, mode, go, o, sw_or_none, weight);
    if (output_mask[1]) grad_w = switch_sparse::correlate(sg, mode, go, o, sw_or_none, x);
    return true;
  }

  static at::Tensor conv_output_grad(const ConvPoolGeometry& g, const at::Tensor& go,
                                     const at::Tensor& o, const at::Tensor& s) {
    const PoolWindow pool = g.pool();
    const int64_t C = g.c_out, CH = g.conv_h, CW = g.conv_w, PH = g.out_h, PW = g.out_w;
    check_switches(s.const_data_ptr<uint8_t>(), pool, g.n * PH, C);  // the gather drops bad ones
    at::Tensor gconv = at::empty({g.n, C, CH, CW}, go.options().memory_format(kCL));
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
          WindowRange win;
          pool.rows_containing(h, &win.ph_lo, &win.ph_hi);
          const int64_t pbase = n * PH * PW * C;
          for (int64_t w = 0; w < CW; ++w) {
            pool.cols_containing(w, &win.pw_lo, &win.pw_hi);
            gather_conv_grad<scalar_t, scalar_t, scalar_t>(gp + pbase, op + pbase, sp + pbase,
                                                           PW * C, C, pool, h, w, win, C,
                                                           dp + ((n * CH + h) * CW + w) * C);
          }
        }
      });
    });
    return gconv;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) { register_conv_relu_pool<ConvReluPoolCpu>(m); }

}  // namespace cnnvis
