// Switch-sparse convolution kernels for the CPU backends (no CUDA twin: on a
// GPU the dense cuDNN formulation wins).
//
// After a max pool, the unpooled map u (conv-output resolution) has at most
// one nonzero per pooling window: u[n, c, y, x] = v[n, c, ph, pw] at the
// position (y, x) that switch s[n, c, ph, pw] names. Two products with u then
// cost (number of nonzeros) * kH * kW * C_in multiply-adds, a pool-area
// fraction (1/4 for 2x2 pools, less where the ReLU zeroed values) of the
// dense GEMM formulation:
//
//   scatter    out = conv_transpose2d(u, weight)
//              (the input gradient of a convolution whose output gradient is
//              u, and the forward of unpool_conv_transpose)
//   correlate  gw[c, ci, kh, kw] = sum u[n, c, y, x] * xin[n, ci, y*sh - ph + kh*dh,
//                                                          x*sw - pw + kw*dw]
//              (the weight gradient of that convolution: xin is the forward
//              input; for unpool_conv_transpose's weight gradient xin is the
//              gradient of its output)
//
// Both work on NHWC maps, where one filter row (kh) touches a contiguous run
// of kW * C_in values (dilation_w 1; kW runs of C_in values otherwise): the
// scatter clips each run to the map's columns and writes the result
// directly, the correlation reads a zero-padded copy of xin ((N, H + 2ph,
// W + 2pw, C_in)) without bounds checks. The inner kernel (acc_rows) adds a weighted sum of m such
// runs into one output run with register-blocked accumulators: the
// nonzeros of one pooled position that share a switch share their target
// (scatter), the nonzeros of one channel of one image share their weight
// row (correlate), so the output run is loaded and stored once per group,
// not once per nonzero.
//
// The scatter packs the used filters into zero-padded panels of 1 KiB run
// chunks (one re-layout; vector tails read the padding), groups the
// nonzeros once per pooled row, then runs the products. On wide maps
// (enough nonzeros per position) two positions of a pooled row, far enough
// apart that their output runs cannot overlap, are grouped as a pair: by
// the pair of switches a channel has there, so each loaded filter vector
// feeds two targets' accumulators (half the filter traffic). With few input
// channels (kW * C_in < 16, e.g. RGB first layers) runs are too short for
// the vectors, so it works in column mode instead: a whole (kH, kW, C_in)
// filter per column, accumulated per pooled position (in registers, masked
// by switch, when the map is dense and the pooling 2x2 or none) and then
// added into the output's kH x kW neighbourhood.
//
// Each task has AVX-512, AVX2 + FMA and generic copies (isa.h).
//
// Parallelism: scatter over (image, band of output rows), handed out
// dynamically — each task owns its rows, no atomics (for few images of few
// rows and many input channels, over (image, chunk of input channels)
// instead, on per-tap runs; for at least two images per thread, one task per
// image that also groups its rows); correlate over blocks
// of channels — each task owns its rows of the weight gradient, no
// reduction. Deterministic.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "../pool_window.h"

namespace cnnvis {
namespace switch_sparse {

// Geometry of one switch-sparse product.
struct Geom {
  int64_t n, c;              // pooled map (N, C, pool.out_h, pool.out_w)
  PoolWindow pool;           // the conv output (pool.in_h, pool.in_w) -> the pooled map
  int64_t ci;                // conv input channels (groups must be 1)
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pad_h, pad_w;      // conv padding
  int64_t H, W;              // conv input size
  int64_t Hp() const { return H + 2 * pad_h; }
  int64_t Wp() const { return W + 2 * pad_w; }
  // The runs of one filter row: one of kW * C_in values (dilation_w 1), or kW of C_in.
  int64_t nseg() const { return dw == 1 ? 1 : kw; }
  int64_t seglen() const { return dw == 1 ? kw * ci : ci; }
};

// What unpooling places, from the pooled tensors a (and b):
//   kMaskedGrad: a = grad_out, b = out; a where out passed the ReLU (out > 0
//                or NaN, as threshold_backward lets a NaN's gradient through)
//   kRectified:  relu(a) (NaN passes);  kPlain: a.
enum class Values { kMaskedGrad, kRectified, kPlain };

// Whether the run formulation (which needs groups 1) is expected to beat the
// dense one: long enough runs for the vector accumulators. The scatter
// takes column mode where it is not; the conv_relu_pool backward keeps the
// dense formulation there.
bool worthwhile(const Geom& g);

// One parallel read of the pooled values: how many are nonzero, at each
// pooled position and in all, and which channels hold one.
struct Survey {
  int64_t nnz = 0;
  std::vector<int32_t> count;    // per pooled position (N, PH, PW)
  std::vector<uint8_t> used;     // per channel
};
Survey survey(const Geom& g, Values mode, const at::Tensor& a, const at::Tensor& b);

// conv_transpose2d(unpool(values), weight) as an (N, C_in, H, W)
// channels-last tensor. a, b, switches: pooled (N, C, PH, PW), any layout;
// switches undefined for the identity pooling; weight (C, C_in, kH, kW);
// `known`: the survey of these values when the caller has one. Raises
// ValueError when a switch points outside its window or the map.
at::Tensor scatter(const Geom& g, Values mode, const at::Tensor& a, const at::Tensor& b,
                   const at::Tensor& switches, const at::Tensor& weight,
                   const Survey* known = nullptr);

// The weight gradient sum u * patch(xin) as a contiguous (C, C_in, kH, kW)
// tensor; xin (N, C_in, H, W), any layout.
at::Tensor correlate(const Geom& g, Values mode, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& switches, const at::Tensor& xin);

}  // namespace switch_sparse
}  // namespace cnnvis
