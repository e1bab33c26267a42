// Numerical body of conv_relu_pool: the per-window ReLU + max + argmax of the
// forward, and the per-position gather that rebuilds the gradient of the
// convolution output in the backward. No ATen types: the CPU launcher
// (cpu/conv_relu_pool_kernel.cpp) calls these with a whole channel vector per
// call (the inner loop over channels is contiguous in NHWC and vectorizes);
// the CUDA launcher (cuda/conv_relu_pool_kernel.cu) calls them with one
// channel per thread.
//
// Layout: the convolution output y and the pooled maps (out, switches,
// grad_out) are NHWC (channels-last); every pointer handed to these functions
// points at channel c0 of one spatial position and channels are contiguous.
#pragma once

#include <cstdint>

#include "macros.h"
#include "pool_window.h"

namespace cnnvis {

// torch.relu semantics: NaN propagates, negatives become zero.
template <typename T>
HOST_DEVICE_INLINE T relu_keep_nan(T v) {
  return v < T(0) ? T(0) : v;
}

// Forward body. For each of `nc` channels: out = max over the window of
// relu(y), switch = row-major position of the first maximum inside the full
// (unclipped) window, as max_pool2d(return_indices=True) picks it; NaN wins
// like in PyTorch's kernels (the last NaN of the window).
//   y      : y[n, 0, 0, c0]; ys_h, ys_w the row and column strides of y
//   [h0,h1) x [w0,w1): the valid part of the window, hstart/wstart its
//   unclipped origin and kw its width.
//   K: the type the switches are written in: uint8_t, or B itself so that a
//   CPU caller's channel loop runs at one lane width and vectorizes (it then
//   narrows the switches to uint8 itself).
template <typename T, typename B, typename K = uint8_t>
HOST_DEVICE_INLINE void relu_max_window(const T* CNNVIS_RESTRICT y, int64_t ys_h, int64_t ys_w,
                                        int64_t h0, int64_t h1, int64_t w0, int64_t w1,
                                        int64_t hstart, int64_t wstart, int64_t kw, int64_t nc,
                                        B* CNNVIS_RESTRICT best, K* CNNVIS_RESTRICT sw) {
  {
    const T* p = y + h0 * ys_h + w0 * ys_w;
    const K k0 = static_cast<K>((h0 - hstart) * kw + (w0 - wstart));
    for (int64_t c = 0; c < nc; ++c) {
      best[c] = relu_keep_nan(static_cast<B>(p[c]));
      sw[c] = k0;
    }
  }
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = (h == h0 ? w0 + 1 : w0); w < w1; ++w) {
      const T* p = y + h * ys_h + w * ys_w;
      const K k = static_cast<K>((h - hstart) * kw + (w - wstart));
      CNNVIS_IVDEP
      for (int64_t c = 0; c < nc; ++c) {
        // take v where v > best or v is NaN. Written as two single-comparison
        // selects on values loaded unconditionally (no `||`, no conditional
        // load), which the CPU compiler turns into vector compares and blends.
        const B v = relu_keep_nan(static_cast<B>(p[c]));
        const B bc = best[c];
        const K kc = sw[c];
        const bool gt = v > bc;
        const bool nan = v != v;
        const B b1 = gt ? v : bc;
        const K k1 = gt ? k : kc;
        best[c] = nan ? v : b1;
        sw[c] = nan ? k : k1;
      }
    }
  }
}

// Backward body: the gradient of the convolution output at conv position
// (h, w) for `nc` channels, gathered from every pooled window containing it
// (win, from pool.windows_containing): a window contributes its grad_out where
// its switch points at (h, w) and its output passed the ReLU (out > 0, or
// NaN: PyTorch's threshold_backward lets the gradient of a NaN through).
// Every conv position is written exactly once, so no zero-fill is needed.
//   gout, out, sw: pooled maps at [n, 0, 0, c0]; ps_h, ps_w their strides.
//   S: the type the switches are read in: uint8_t, or A so that a CPU
//   caller's channel loop runs at one lane width and vectorizes.
template <typename T, typename A, typename S = uint8_t>
HOST_DEVICE_INLINE void gather_conv_grad(const T* CNNVIS_RESTRICT gout, const T* CNNVIS_RESTRICT out,
                                         const S* CNNVIS_RESTRICT sw, int64_t ps_h,
                                         int64_t ps_w, const PoolWindow& pool, int64_t h,
                                         int64_t w, const WindowRange& win, int64_t nc,
                                         A* CNNVIS_RESTRICT acc) {
  for (int64_t c = 0; c < nc; ++c) acc[c] = A(0);
  pool.for_each_window(win, h, w, ps_h, ps_w, [&](int64_t off, int64_t kk) {
    const S k = static_cast<S>(kk);
    const T* g = gout + off;
    const T* o = out + off;
    const S* s = sw + off;
    CNNVIS_IVDEP
    for (int64_t c = 0; c < nc; ++c) {
      // `&`, not `&&`, and g loaded unconditionally: a select, not a branch,
      // so the CPU compiler vectorizes the channel loop.
      const A gv = static_cast<A>(g[c]);
      const bool hit = (s[c] == k) & !(static_cast<A>(o[c]) <= A(0));
      acc[c] += hit ? gv : A(0);
    }
  });
}

}  // namespace cnnvis
