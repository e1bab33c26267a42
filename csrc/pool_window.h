// The pooling geometry every pooling op shares (conv_relu_pool,
// unpool_conv_transpose and the CPU switch-sparse kernels): which positions of
// the pooled map's input (the convolution output) the window of a pooled
// position covers, and the switch, the row-major position inside that full
// (unclipped) window, that names one of them. The switch is what
// conv_relu_pool returns as its argmax, as max_pool2d(return_indices=True)
// picks it, narrowed to uint8.
//
// HOST_DEVICE_INLINE, no ATen types: the CPU and CUDA kernels run the same
// definitions. bad_switch() is the host-side error of a switch that names no
// position of its window.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>

#include "macros.h"

namespace cnnvis {

// The pooled positions whose windows contain one map position:
// rows [ph_lo, ph_hi) x columns [pw_lo, pw_hi).
struct WindowRange {
  int64_t ph_lo, ph_hi, pw_lo, pw_hi;
};

struct PoolWindow {
  int64_t kh, kw;        // kernel
  int64_t sh, sw;        // stride
  int64_t ph, pw;        // padding
  int64_t in_h, in_w;    // the map that is pooled (the convolution output)
  int64_t out_h, out_w;  // the pooled map

  // The pooled size along one axis as ATen computes it (floor or ceil mode):
  // in ceil mode the last window must still start inside the input or its
  // left padding.
  HOST_DEVICE_INLINE static int64_t output_size(int64_t in, int64_t k, int64_t pad, int64_t s,
                                                bool ceil_mode) {
    const int64_t num = in + 2 * pad - (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
    int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
    if (ceil_mode && (out - 1) * s >= in + pad) --out;
    return out;
  }

  HOST_DEVICE_INLINE int64_t area() const { return kh * kw; }

  // A 1x1 window with stride 1 and no padding: pooling is the identity.
  HOST_DEVICE_INLINE bool identity() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  }

  // Whether two windows can share a position.
  HOST_DEVICE_INLINE bool overlapping() const { return !identity() && (kh > sh || kw > sw); }

  // Whether every window lies inside the map (no padding, no ceil-mode
  // overhang): then any switch below area() names a position of the map.
  HOST_DEVICE_INLINE bool windows_inside() const {
    return ph == 0 && pw == 0 && (out_h - 1) * sh + kh <= in_h && (out_w - 1) * sw + kw <= in_w;
  }

  // The window of pooled row `oh`: its unclipped first row *start and its
  // rows inside the map, [*lo, *hi).
  HOST_DEVICE_INLINE void window_rows(int64_t oh, int64_t* start, int64_t* lo, int64_t* hi) const {
    axis_window(oh, sh, ph, kh, in_h, start, lo, hi);
  }
  HOST_DEVICE_INLINE void window_cols(int64_t ow, int64_t* start, int64_t* lo, int64_t* hi) const {
    axis_window(ow, sw, pw, kw, in_w, start, lo, hi);
  }

  // The pooled rows whose window contains row `y` of the map: [*lo, *hi),
  // empty when `y` lies in no window.
  HOST_DEVICE_INLINE void rows_containing(int64_t y, int64_t* lo, int64_t* hi) const {
    axis_containing(y, sh, ph, kh, out_h, lo, hi);
  }
  HOST_DEVICE_INLINE void cols_containing(int64_t x, int64_t* lo, int64_t* hi) const {
    axis_containing(x, sw, pw, kw, out_w, lo, hi);
  }
  HOST_DEVICE_INLINE WindowRange windows_containing(int64_t y, int64_t x) const {
    WindowRange r;
    rows_containing(y, &r.ph_lo, &r.ph_hi);
    cols_containing(x, &r.pw_lo, &r.pw_hi);
    return r;
  }

  // The switch of map position (y, x) in the window of pooled (oh, ow) is
  // row_switch(oh, y) + col_switch(ow, x) (split so that loops over the
  // windows containing a position compute the row part once per row).
  HOST_DEVICE_INLINE int64_t row_switch(int64_t oh, int64_t y) const {
    return (y - (oh * sh - ph)) * kw;
  }
  HOST_DEVICE_INLINE int64_t col_switch(int64_t ow, int64_t x) const { return x - (ow * sw - pw); }

  // Calls f(off, k) for every pooled position (oh, ow) of r, row by row:
  // off = oh * ps_h + ow * ps_w is its offset in a pooled map of strides
  // ps_h, ps_w, and k the switch that names map position (y, x) in its
  // window. The gathers over the windows containing (y, x) run their channel
  // loops in f.
  template <typename F>
  HOST_DEVICE_INLINE void for_each_window(const WindowRange& r, int64_t y, int64_t x, int64_t ps_h,
                                          int64_t ps_w, F&& f) const {
    for (int64_t oh = r.ph_lo; oh < r.ph_hi; ++oh) {
      const int64_t k_row = row_switch(oh, y);
      for (int64_t ow = r.pw_lo; ow < r.pw_hi; ++ow)
        f(oh * ps_h + ow * ps_w, k_row + col_switch(ow, x));
    }
  }

  // The map position (*y, *x) that switch `s` of pooled (oh, ow) names.
  // False when the switch points outside the window or the window's
  // position lies outside the map (impossible for conv_relu_pool's switches).
  HOST_DEVICE_INLINE bool switch_position(int64_t oh, int64_t ow, int64_t s, int64_t* y,
                                          int64_t* x) const {
    if (s >= kh * kw) return false;
    *y = oh * sh - ph + s / kw;
    *x = ow * sw - pw + s % kw;
    return *y >= 0 && *y < in_h && *x >= 0 && *x < in_w;
  }

 private:
  HOST_DEVICE_INLINE static void axis_window(int64_t o, int64_t stride, int64_t pad, int64_t k,
                                             int64_t in, int64_t* start, int64_t* lo,
                                             int64_t* hi) {
    *start = o * stride - pad;
    *lo = *start < 0 ? 0 : *start;
    const int64_t end = *start + k;
    *hi = end > in ? in : end;
  }

  // o * stride - pad <= i  and  i < o * stride - pad + k.
  HOST_DEVICE_INLINE static void axis_containing(int64_t i, int64_t stride, int64_t pad,
                                                 int64_t k, int64_t out, int64_t* lo,
                                                 int64_t* hi) {
    const int64_t num = i + pad - k + 1;  // o >= ceil(num / stride)
    const int64_t first = num <= 0 ? 0 : (num + stride - 1) / stride;
    int64_t last = (i + pad) / stride;  // i + pad >= 0 always
    if (last > out - 1) last = out - 1;
    *lo = first;
    *hi = last + 1 > first ? last + 1 : first;
  }
};

// Raises the ValueError of a switch that points outside its pooling window
// or outside the map.
[[noreturn]] inline void bad_switch() {
  TORCH_CHECK_VALUE(false, "switches: some switch points outside its pooling window or outside "
                    "the conv output map (output_size); check output_size and the pooling "
                    "arguments");
  std::abort();
}

}  // namespace cnnvis
