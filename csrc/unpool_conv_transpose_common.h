// Numerical body of unpool_conv_transpose, one deconvnet step:
//   out = conv_transpose2d(unpool(relu(p) if rectify else p, switches), weight)
// and of its backward. No ATen types: the CPU launcher
// (cpu/unpool_conv_transpose_kernel.cpp) and the CUDA launcher
// (cuda/unpool_conv_transpose_kernel.cu) both call these.
//
// Layout: every map is NHWC (channels-last). The weight is re-laid out as
// wt[c_out][kh][kw][c_in/groups] so that one tap of one filter is a
// contiguous vector over the output (= forward input) channels.
//
// Unpooling is the adjoint of max pooling: a pooled value goes to the
// position its switch names inside its (unclipped) window; where windows
// overlap and two switches name one position, their values add up (the
// gradient of max_pool2d; equal to max_unpool2d whenever no two switches
// collide, which is always the case for non-overlapping pools).
#pragma once

#include <cstdint>

#include "macros.h"
#include "pool_window.h"

namespace cnnvis {

template <typename T>
HOST_DEVICE_INLINE T rectify_value(T v, bool rectify) {
  // torch.relu semantics: NaN propagates, negatives become zero.
  return (rectify && v < T(0)) ? T(0) : v;
}

// Sparse forward body: scatters one unpooled value `v` at conv-output
// position (y, x) through every filter tap,
//   out[y*sh - ph + kh*dh, x*sw - pw + kw*dw, ci] += v * wt[kh][kw][ci]
// for ci in [ci_lo, ci_hi) (the channels of this filter's group, possibly a
// block of them) and output rows in [row_lo, row_hi) (a band of [0, OH)).
// `wt` points at wt[c][0][0][0] (kH*kW*cig values), `out` at
// out[n, 0, 0, group_offset]; out is (OH, OW, ldc) with channel stride 1.
template <typename T, typename A>
HOST_DEVICE_INLINE void scatter_taps(A v, const T* CNNVIS_RESTRICT wt, int64_t y, int64_t x,
                                     int64_t kH, int64_t kW, int64_t cig, int64_t sh, int64_t sw,
                                     int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                     int64_t row_lo, int64_t row_hi, int64_t OW, int64_t ldc,
                                     int64_t ci_lo, int64_t ci_hi, A* CNNVIS_RESTRICT out) {
  for (int64_t kh = 0; kh < kH; ++kh) {
    const int64_t iy = y * sh - ph + kh * dh;
    if (iy < row_lo || iy >= row_hi) continue;
    for (int64_t kw = 0; kw < kW; ++kw) {
      const int64_t ix = x * sw - pw + kw * dw;
      if (ix < 0 || ix >= OW) continue;
      const T* w = wt + (kh * kW + kw) * cig;
      A* o = out + (iy * OW + ix) * ldc;
      CNNVIS_IVDEP
      for (int64_t ci = ci_lo; ci < ci_hi; ++ci) o[ci] += v * static_cast<A>(w[ci]);
    }
  }
}

// One tap of the transposed convolution: the output (= forward input)
// position that conv-output position (y, x) reaches through filter tap
// (kh, kw). Returns false when it falls in the padding. The sparse CUDA
// kernel scatters one (value, tap, channel) per thread with it; scatter_taps
// above is the same formula, looped over the taps.
HOST_DEVICE_INLINE bool tap_target(int64_t y, int64_t x, int64_t kh, int64_t kw, int64_t sh,
                                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                   int64_t H, int64_t W, int64_t* iy, int64_t* ix) {
  *iy = y * sh - ph + kh * dh;
  *ix = x * sw - pw + kw * dw;
  return *iy >= 0 && *iy < H && *ix >= 0 && *ix < W;
}

// Dense unpooling as a gather: the unpooled value at conv position (y, x)
// for `nc` channels is the sum of the (rectified) pooled values of every
// window containing it (win, from pool.windows_containing) whose switch names
// (y, x). Each unpooled element is written exactly once: no zero-fill, no
// atomics.
//   pn, sn: pooled map and switches at [n, 0, 0, c0]; ps_h, ps_w their
//   strides; sn may be null (identity pooling: switch 0).
template <typename T, typename A>
HOST_DEVICE_INLINE void gather_unpool(const T* CNNVIS_RESTRICT pn, const uint8_t* CNNVIS_RESTRICT sn,
                                      int64_t ps_h, int64_t ps_w, const PoolWindow& pool,
                                      int64_t y, int64_t x, const WindowRange& win, int64_t nc,
                                      bool rectify, A* CNNVIS_RESTRICT acc) {
  const A zero(0);
  for (int64_t c = 0; c < nc; ++c) acc[c] = zero;
  pool.for_each_window(win, y, x, ps_h, ps_w, [&](int64_t off, int64_t kk) {
    const uint8_t k = static_cast<uint8_t>(kk);
    const T* pv = pn + off;
    // Branch-free channel loops (if-converted selects) so that they vectorize;
    // `v < 0 ? 0 : v` is rectify_value (NaN passes).
    if (sn == nullptr) {
      if (rectify) {
        CNNVIS_IVDEP
        for (int64_t c = 0; c < nc; ++c) {
          const A v = static_cast<A>(pv[c]);
          acc[c] += v < zero ? zero : v;
        }
      } else {
        CNNVIS_IVDEP
        for (int64_t c = 0; c < nc; ++c) acc[c] += static_cast<A>(pv[c]);
      }
    } else {
      const uint8_t* s = sn + off;
      if (rectify) {
        CNNVIS_IVDEP
        for (int64_t c = 0; c < nc; ++c) {
          const A v = static_cast<A>(pv[c]);
          const A r = v < zero ? zero : v;
          acc[c] += s[c] == k ? r : zero;
        }
      } else {
        CNNVIS_IVDEP
        for (int64_t c = 0; c < nc; ++c) acc[c] += s[c] == k ? static_cast<A>(pv[c]) : zero;
      }
    }
  });
}

// Backward body for p: the gradient of one pooled value is the gradient of
// the unpooled map at the position its switch names (the adjoint of the
// scatter), masked by the rectification (threshold_backward semantics: the
// gradient passes where p > 0 or p is NaN).
template <typename T, typename A>
HOST_DEVICE_INLINE A gather_switch_grad(const T* CNNVIS_RESTRICT gconv_n, int64_t y, int64_t x,
                                        bool inside, int64_t W, int64_t C, int64_t c, T pv,
                                        bool rectify) {
  if (!inside) return A(0);
  if (rectify && static_cast<A>(pv) <= A(0)) return A(0);
  return static_cast<A>(gconv_n[(y * W + x) * C + c]);
}

}  // namespace cnnvis
