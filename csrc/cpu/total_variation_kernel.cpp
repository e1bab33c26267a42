// CPU backend of total_variation. One pass over x for the value, the gradient
// or both: the work is split into bands of rows of one (H, W) plane
// (at::parallel_for over plane x band); a band walks its rows once, keeping
// the previous row's d term / d dy in a row buffer, so every term (and every
// pow/sqrt) is evaluated once per pixel, plus one extra row per band. The
// inner loops run over W on row buffers and vectorize; on x86-64 CPUs with
// AVX2 + FMA a copy compiled for them is picked at run time.
//
// Per-band partial sums are kept in double and added up per image in a fixed
// order, so the value is deterministic for a given thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../total_variation.h"
#include "../total_variation_common.h"
#include "cpu_helpers.h"
#include "isa.h"

namespace cnnvis {
namespace {

// r = sqrt(t) over a row. A plain std::sqrt loop does not vectorize without
// -fno-math-errno, so the AVX2 copy uses the intrinsic (a real call: the
// intrinsics cannot be inlined into code compiled for the baseline ISA).
#if CNNVIS_X86_DISPATCH
CNNVIS_TARGET_AVX2 void sqrt_row_avx2(const float* CNNVIS_RESTRICT t, float* CNNVIS_RESTRICT r,
                                      int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(r + j, _mm256_sqrt_ps(_mm256_loadu_ps(t + j)));
  for (; j < n; ++j) r[j] = std::sqrt(t[j]);
}
CNNVIS_TARGET_AVX2 void sqrt_row_avx2(const double* CNNVIS_RESTRICT t, double* CNNVIS_RESTRICT r,
                                      int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) _mm256_storeu_pd(r + j, _mm256_sqrt_pd(_mm256_loadu_pd(t + j)));
  for (; j < n; ++j) r[j] = std::sqrt(t[j]);
}
#endif

template <CpuIsa I, typename A>
CNNVIS_ALWAYS_INLINE void sqrt_row(const A* CNNVIS_RESTRICT t, A* CNNVIS_RESTRICT r, int64_t n) {
#if CNNVIS_X86_DISPATCH
  if constexpr (I >= CpuIsa::kAvx2) {
    sqrt_row_avx2(t, r, n);
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) r[j] = std::sqrt(t[j]);
}

// Sum of a row with 8 independent lanes (vectorizes without reassociation
// flags).
template <typename A>
CNNVIS_ALWAYS_INLINE double sum_row(const A* CNNVIS_RESTRICT v, int64_t n) {
  A acc[8] = {A(0), A(0), A(0), A(0), A(0), A(0), A(0), A(0)};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += v[j + l];
  double s = 0;
  for (; j < n; ++j) s += static_cast<double>(v[j]);
  for (int l = 0; l < 8; ++l) s += static_cast<double>(acc[l]);
  return s;
}

struct TVParams {
  double half_beta, beta, eps;
};

// Terms of row i: a, b (derivatives, when G) and the row's sum (when V).
// xn is row i+1, or nullptr for the last row (dy = 0). Differences, t and the
// term are computed in one loop over the row (two around the vectorized sqrt
// for beta = 1); the last column (dx = 0) is peeled.
template <CpuIsa I, typename A, TVKind K, bool V, bool G>
CNNVIS_ALWAYS_INLINE double tv_row(const A* CNNVIS_RESTRICT xi, const A* CNNVIS_RESTRICT xn,
                                   int64_t W, const TVParams& p, A* CNNVIS_RESTRICT dx,
                                   A* CNNVIS_RESTRICT dy, A* CNNVIS_RESTRICT t,
                                   A* CNNVIS_RESTRICT root, A* CNNVIS_RESTRICT v,
                                   A* CNNVIS_RESTRICT a, A* CNNVIS_RESTRICT b) {
  const A hb = static_cast<A>(p.half_beta), beta = static_cast<A>(p.beta),
          eps = static_cast<A>(p.eps);
  // dy is the constant 0 on the last row (not xi - xi, which is NaN at an infinite pixel);
  // xd is any valid row there, the select below ignores it
  const bool last = xn == nullptr;
  const A* CNNVIS_RESTRICT xd = last ? xi : xn;
  if (K == TVKind::kBeta1) {
    for (int64_t j = 0; j + 1 < W; ++j) {
      dx[j] = xi[j + 1] - xi[j];
      dy[j] = (last ? A(0) : xd[j] - xi[j]);
      t[j] = tv_t(dx[j], dy[j], eps);
    }
    dx[W - 1] = A(0);
    dy[W - 1] = (last ? A(0) : xd[W - 1] - xi[W - 1]);
    t[W - 1] = tv_t(A(0), dy[W - 1], eps);
    sqrt_row<I>(t, root, W);
    for (int64_t j = 0; j < W; ++j) {
      A aj = A(0), bj = A(0);
      const A vj = tv_term<K, G>(dx[j], dy[j], t[j], root[j], hb, beta, &aj, &bj);
      if (V) v[j] = vj;
      if (G) {
        a[j] = aj;
        b[j] = bj;
      }
    }
  } else {
    for (int64_t j = 0; j + 1 < W; ++j) {
      const A dxj = xi[j + 1] - xi[j];
      const A dyj = (last ? A(0) : xd[j] - xi[j]);
      A aj = A(0), bj = A(0);
      const A vj = tv_term<K, G>(dxj, dyj, K == TVKind::kAniso ? A(0) : tv_t(dxj, dyj, eps), A(0), hb,
                                 beta, &aj, &bj);
      if (V) v[j] = vj;
      if (G) {
        a[j] = aj;
        b[j] = bj;
      }
    }
    {  // last column: dx = 0
      const int64_t j = W - 1;
      const A dyj = (last ? A(0) : xd[j] - xi[j]);
      A aj = A(0), bj = A(0);
      const A vj = tv_term<K, G>(A(0), dyj, K == TVKind::kAniso ? A(0) : tv_t(A(0), dyj, eps), A(0), hb,
                                 beta, &aj, &bj);
      if (V) v[j] = vj;
      if (G) {
        a[j] = aj;
        b[j] = bj;
      }
    }
  }
  if (G) {
    // The differences past the last column / row are the constant 0, not
    // differences of x: no gradient flows through them (g * 0 would be NaN
    // where g is infinite, eps = 0 and t = 0).
    a[W - 1] = A(0);
    if (last)
      for (int64_t j = 0; j < W; ++j) b[j] = A(0);
  }
  return V ? sum_row(v, W) : 0.0;
}

// Rows [r0, r1) of one plane. buf holds 9 rows of W scratch values.
template <CpuIsa I, typename A, TVKind K, bool V, bool G>
CNNVIS_ALWAYS_INLINE double tv_band_impl(const A* x, A* grad, int64_t H, int64_t W, int64_t r0,
                                         int64_t r1, const TVParams& p, A scale, A* buf) {
  A* dx = buf;
  A* dy = dx + W;
  A* t = dy + W;
  A* root = t + W;
  A* v = root + W;
  A* a = v + W;
  A* b = a + W;
  A* bprev = b + W;
  double s = 0;
  if (G) {
    if (r0 > 0) {
      tv_row<I, A, K, false, true>(x + (r0 - 1) * W, x + r0 * W, W, p, dx, dy, t, root, v, a,
                                      bprev);
    } else {
      for (int64_t j = 0; j < W; ++j) bprev[j] = A(0);
    }
  }
  for (int64_t i = r0; i < r1; ++i) {
    const A* xi = x + i * W;
    const A* xn = i + 1 < H ? xi + W : nullptr;
    s += tv_row<I, A, K, V, G>(xi, xn, W, p, dx, dy, t, root, v, a, b);
    if (G) {
      A* gi = grad + i * W;
      gi[0] = tv_grad_at(A(0), bprev[0], a[0], b[0], scale);
      for (int64_t j = 1; j < W; ++j) gi[j] = tv_grad_at(a[j - 1], bprev[j], a[j], b[j], scale);
      std::swap(b, bprev);
    }
  }
  return s;
}

// The band kernel, with a generic and an AVX2 + FMA copy (isa.h).
template <TVKind K, bool V, bool G>
struct TVBand {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx2;
  template <CpuIsa I, typename A>
  static CNNVIS_ALWAYS_INLINE double run(const A* x, A* grad, int64_t H, int64_t W, int64_t r0,
                                         int64_t r1, const TVParams& p, A scale, A* buf) {
    return tv_band_impl<I, A, K, V, G>(x, grad, H, W, r0, r1, p, scale, buf);
  }
};

// Runs the band kernel over every plane of x (contiguous NCHW). Returns the
// per-image sums (double, (N,)) when V; writes grad (contiguous) when G, with
// scales[n] the upstream factor of image n.
template <typename A, TVKind K, bool V, bool G>
std::vector<double> tv_run(const A* x, A* grad, int64_t N, int64_t C, int64_t H, int64_t W,
                           const TVParams& p, const std::vector<double>& scales) {
  const int64_t planes = N * C;
  const RowBands rb = row_bands(planes, H, 16);
  const int64_t bands = rb.count, bh = rb.rows;
  std::vector<double> partial(planes * bands, 0.0);
  const CpuIsa isa = cpu_isa();
  at::parallel_for(0, planes * bands, grain_for(bh * W, 16384), [&](int64_t begin, int64_t end) {
    std::vector<A> buf(9 * W);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / bands, band = item % bands;
      const int64_t r0 = band * bh, r1 = std::min(H, r0 + bh);
      const int64_t off = plane * H * W;
      const A scale = G ? static_cast<A>(scales[plane / C]) : A(0);
      partial[item] = run_on_isa<TVBand<K, V, G>>(isa, x + off, G ? grad + off : nullptr, H, W, r0,
                                                   r1, p, scale, buf.data());
    }
  });
  std::vector<double> per_image;
  if (V) {
    per_image.assign(N, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < C * bands; ++k) per_image[n] += partial[n * C * bands + k];
  }
  return per_image;
}

TVParams params_of(const TVOptions& o) { return TVParams{o.beta / 2, o.beta, o.eps}; }

struct TotalVariationCpu : CpuBackend {
  using Scales = std::vector<double>;

  // Upstream factor per image for the gradient.
  static Scales scales(const at::Tensor* grad_out, const at::Tensor& x, TVReduction reduction) {
    const int64_t N = x.size(0);
    Scales s(N, 1.0);
    if (grad_out != nullptr) {
      const at::Tensor g = grad_out->to(at::kDouble).contiguous().reshape({-1});
      const double* gp = g.const_data_ptr<double>();
      for (int64_t n = 0; n < N; ++n) s[n] = reduction == TVReduction::kNone ? gp[n] : gp[0];
    }
    if (reduction == TVReduction::kMean && x.numel() > 0)
      for (auto& v : s) v /= static_cast<double>(x.numel());
    return s;
  }

  // Per-image sums in double, added up per image in a fixed order.
  template <bool V, bool G>
  static std::vector<double> run(const at::Tensor& x, const TVOptions& o, at::Tensor* grad,
                                 const Scales* scales) {
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    if (x.numel() == 0) return std::vector<double>(N, 0.0);
    std::vector<double> per_image;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "total_variation_cpu", [&] {
      using A = scalar_t;
      const A* xp = x.const_data_ptr<A>();
      A* gp = G ? grad->mutable_data_ptr<A>() : nullptr;
      const Scales none;
      const Scales& sc = scales != nullptr ? *scales : none;
      per_image = with_tv_kind(o.kind, [&](auto kind) {
        return tv_run<A, decltype(kind)::value, V, G>(xp, gp, N, C, H, W, params_of(o), sc);
      });
    });
    return per_image;
  }

  // The reduced value from per-image sums.
  static at::Tensor finish(const std::vector<double>& per_image, const at::Tensor& x,
                           TVReduction reduction) {
    const int64_t N = x.size(0);
    if (reduction == TVReduction::kNone) {
      at::Tensor out = at::empty({N}, x.options().dtype(at::kDouble));
      std::copy(per_image.begin(), per_image.end(), out.mutable_data_ptr<double>());
      return out.to(x.scalar_type());
    }
    double s = 0;
    for (double v : per_image) s += v;
    if (reduction == TVReduction::kMean)
      s = x.numel() > 0 ? s / static_cast<double>(x.numel()) : NAN;
    return at::scalar_tensor(s, x.options().dtype(at::kDouble)).to(x.scalar_type());
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) { register_total_variation<TotalVariationCpu>(m); }

}  // namespace cnnvis
