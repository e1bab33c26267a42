// CPU backend of gaussian_blur and its adjoint. Both directions are fused row
// by row: for every output row the vertical pass (2r+1 input rows, reflected
// at the top/bottom) is accumulated into one padded row buffer, the buffer's
// left/right margins are filled by reflection, and the horizontal pass writes
// the output row from it. The intermediate image never exists in memory;
// work is split over (plane, band of rows) with at::parallel_for. The kernel
// is symmetric, so each pass does r+1 multiply-adds per sample, in loops over
// W that vectorize; on x86-64 CPUs with AVX2 + FMA a copy compiled for them
// is picked at run time.
//
// The adjoint (backward) per output row gathers the rows of grad_out with
// their coefficients in the transposed vertical operator (including the
// contributions reflected back across the border), then applies the
// zero-padded horizontal correlation and folds its 2r margin samples back.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../gaussian_blur.h"
#include "../gaussian_blur_common.h"
#include "cpu_helpers.h"
#include "isa.h"

namespace cnnvis {
namespace {

// Horizontal pass: y[j] = w[R] v[j] + sum_t w[R+t] (v[j+t] + v[j-t]) with v
// padded by R samples on both sides (already filled).
template <typename A>
CNNVIS_ALWAYS_INLINE void hpass(const A* CNNVIS_RESTRICT v, A* CNNVIS_RESTRICT y, int64_t W,
                                int64_t R, const A* w) {
  const A c = w[R];
  for (int64_t j = 0; j < W; ++j) y[j] = c * v[j];
  for (int64_t t = 1; t <= R; ++t) {
    const A k = w[R + t];
    const A* CNNVIS_RESTRICT vp = v + t;
    const A* CNNVIS_RESTRICT vm = v - t;
    for (int64_t j = 0; j < W; ++j) y[j] += k * (vp[j] + vm[j]);
  }
}

// Blur of rows [r0, r1) of one plane. buf: W + 2R values.
template <typename A>
CNNVIS_ALWAYS_INLINE void blur_band_impl(const A* x, A* y, int64_t H, int64_t W, int64_t r0,
                                         int64_t r1, int64_t R, const A* w, A* buf) {
  A* CNNVIS_RESTRICT v = buf + R;
  for (int64_t i = r0; i < r1; ++i) {
    {
      const A* CNNVIS_RESTRICT xc = x + i * W;
      const A c = w[R];
      for (int64_t j = 0; j < W; ++j) v[j] = c * xc[j];
    }
    for (int64_t t = 1; t <= R; ++t) {
      const A* CNNVIS_RESTRICT a = x + blur_fold(i + t, H) * W;
      const A* CNNVIS_RESTRICT b = x + blur_fold(i - t, H) * W;
      const A k = w[R + t];
      for (int64_t j = 0; j < W; ++j) v[j] += k * (a[j] + b[j]);
    }
    for (int64_t q = 1; q <= R; ++q) {
      v[-q] = v[blur_fold(-q, W)];
      v[W - 1 + q] = v[blur_fold(W - 1 + q, W)];
    }
    hpass(v, y + i * W, W, R, w);
  }
}

// Adjoint of the blur for rows [r0, r1) of one plane. buf: 3W + 6R values;
// pairs: scratch for (row, coefficient) lists.
template <typename A>
CNNVIS_ALWAYS_INLINE void adjoint_band_impl(const A* g, A* out, int64_t H, int64_t W, int64_t r0,
                                            int64_t r1, int64_t R, const A* w, A* buf,
                                            std::vector<std::pair<int64_t, A>>& pairs) {
  A* CNNVIS_RESTRICT u = buf + 2 * R;         // W samples with 2R zeros on both sides
  A* CNNVIS_RESTRICT z = buf + W + 4 * R + R;  // W + 2R samples, index -R .. W-1+R
  for (int64_t q = 1; q <= 2 * R; ++q) {
    u[-q] = A(0);
    u[W - 1 + q] = A(0);
  }
  for (int64_t j = r0; j < r1; ++j) {
    // Rows of g and their coefficients in row j of the transposed vertical
    // operator: padded positions p reflecting onto j, rows p - t within reach.
    pairs.clear();
    auto add_p = [&](int64_t p) {
      const int64_t i0 = std::max<int64_t>(0, p - R), i1 = std::min<int64_t>(H - 1, p + R);
      for (int64_t i = i0; i <= i1; ++i) pairs.emplace_back(i, w[R + p - i]);
    };
    add_p(j);
    if (H == 1 || j <= R || j >= H - 1 - R) {
      for (int64_t q = -R; q < 0; ++q)
        if (blur_fold(q, H) == j) add_p(q);
      for (int64_t q = H; q < H + R; ++q)
        if (blur_fold(q, H) == j) add_p(q);
    }
    {
      const A* CNNVIS_RESTRICT gi = g + pairs[0].first * W;
      const A k = pairs[0].second;
      for (int64_t c = 0; c < W; ++c) u[c] = k * gi[c];
    }
    for (size_t e = 1; e < pairs.size(); ++e) {
      const A* CNNVIS_RESTRICT gi = g + pairs[e].first * W;
      const A k = pairs[e].second;
      for (int64_t c = 0; c < W; ++c) u[c] += k * gi[c];
    }
    // Zero-padded horizontal correlation at positions -R .. W-1+R ...
    hpass(u - R, z - R, W + 2 * R, R, w);
    // ... and the margins folded back onto the pixels they reflect.
    A* CNNVIS_RESTRICT o = out + j * W;
    for (int64_t c = 0; c < W; ++c) o[c] = z[c];
    for (int64_t q = 1; q <= R; ++q) {
      o[blur_fold(-q, W)] += z[-q];
      o[blur_fold(W - 1 + q, W)] += z[W - 1 + q];
    }
  }
}

// The band kernels, with a generic and an AVX2 + FMA copy (isa.h).
struct BlurBand {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx2;
  template <CpuIsa, typename A>
  static CNNVIS_ALWAYS_INLINE void run(const A* x, A* y, int64_t H, int64_t W, int64_t r0,
                                       int64_t r1, int64_t R, const A* w, A* buf) {
    blur_band_impl(x, y, H, W, r0, r1, R, w, buf);
  }
};
struct AdjointBand {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx2;
  template <CpuIsa, typename A>
  static CNNVIS_ALWAYS_INLINE void run(const A* g, A* out, int64_t H, int64_t W, int64_t r0,
                                       int64_t r1, int64_t R, const A* w, A* buf,
                                       std::vector<std::pair<int64_t, A>>& pairs) {
    adjoint_band_impl(g, out, H, W, r0, r1, R, w, buf, pairs);
  }
};

// Runs the forward (Adjoint = false) or the adjoint over every plane.
template <typename A, bool Adjoint>
void blur_run(const A* in, A* out, const BlurArgs& a) {
  const int64_t H = a.h, W = a.w, R = a.radius, K = 2 * R + 1;
  const int64_t planes = a.n * a.c;
  // Taps of every plane.
  std::vector<A> taps(planes * K);
  {
    const at::Tensor s = a.sigma.cpu();
    const double* sp = s.const_data_ptr<double>();
    for (int64_t p = 0; p < planes; ++p) gaussian_weights(sp[p], R, taps.data() + p * K);
  }
  const RowBands rb = row_bands(planes, H, 8);
  const int64_t bands = rb.count, bh = rb.rows;
  const CpuIsa isa = cpu_isa();
  at::parallel_for(0, planes * bands, grain_for(bh * W * (R + 1)), [&](int64_t begin,
                                                                       int64_t end) {
    std::vector<A> buf(3 * W + 6 * R + 8);
    std::vector<std::pair<int64_t, A>> pairs;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / bands, band = item % bands;
      const int64_t r0 = band * bh, r1 = std::min(H, r0 + bh);
      const int64_t off = plane * H * W;
      const A* w = taps.data() + plane * K;
      if constexpr (Adjoint) {
        run_on_isa<AdjointBand>(isa, in + off, out + off, H, W, r0, r1, R, w, buf.data(), pairs);
      } else {
        run_on_isa<BlurBand>(isa, in + off, out + off, H, W, r0, r1, R, w, buf.data());
      }
    }
  });
}

struct GaussianBlurCpu : CpuBackend {
  template <bool Adjoint>
  static void run(const at::Tensor& x, at::Tensor& out, const BlurArgs& a) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_blur_cpu", [&] {
      blur_run<scalar_t, Adjoint>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                  a);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) { register_gaussian_blur<GaussianBlurCpu>(m); }

}  // namespace cnnvis
