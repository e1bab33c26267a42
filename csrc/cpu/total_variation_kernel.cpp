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
#include "cpu_features.h"

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

template <typename A, bool Avx2>
CNNVIS_ALWAYS_INLINE void sqrt_row(const A* CNNVIS_RESTRICT t, A* CNNVIS_RESTRICT r, int64_t n) {
#if CNNVIS_X86_DISPATCH
  if constexpr (Avx2) {
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
template <typename A, int K, bool V, bool G, bool Avx2>
CNNVIS_ALWAYS_INLINE double tv_row(const A* CNNVIS_RESTRICT xi, const A* CNNVIS_RESTRICT xn,
                                   int64_t W, const TVParams& p, A* CNNVIS_RESTRICT dx,
                                   A* CNNVIS_RESTRICT dy, A* CNNVIS_RESTRICT t,
                                   A* CNNVIS_RESTRICT root, A* CNNVIS_RESTRICT v,
                                   A* CNNVIS_RESTRICT a, A* CNNVIS_RESTRICT b) {
  const A hb = static_cast<A>(p.half_beta), beta = static_cast<A>(p.beta),
          eps = static_cast<A>(p.eps);
  const A* CNNVIS_RESTRICT xd = xn != nullptr ? xn : xi;  // dy = 0 on the last row
  if (K == kTVBeta1) {
    for (int64_t j = 0; j + 1 < W; ++j) {
      dx[j] = xi[j + 1] - xi[j];
      dy[j] = xd[j] - xi[j];
      t[j] = tv_t(dx[j], dy[j], eps);
    }
    dx[W - 1] = A(0);
    dy[W - 1] = xd[W - 1] - xi[W - 1];
    t[W - 1] = tv_t(A(0), dy[W - 1], eps);
    sqrt_row<A, Avx2>(t, root, W);
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
      const A dyj = xd[j] - xi[j];
      A aj = A(0), bj = A(0);
      const A vj = tv_term<K, G>(dxj, dyj, K == kTVAniso ? A(0) : tv_t(dxj, dyj, eps), A(0), hb,
                                 beta, &aj, &bj);
      if (V) v[j] = vj;
      if (G) {
        a[j] = aj;
        b[j] = bj;
      }
    }
    {  // last column: dx = 0
      const int64_t j = W - 1;
      const A dyj = xd[j] - xi[j];
      A aj = A(0), bj = A(0);
      const A vj = tv_term<K, G>(A(0), dyj, K == kTVAniso ? A(0) : tv_t(A(0), dyj, eps), A(0), hb,
                                 beta, &aj, &bj);
      if (V) v[j] = vj;
      if (G) {
        a[j] = aj;
        b[j] = bj;
      }
    }
  }
  return V ? sum_row(v, W) : 0.0;
}

// Rows [r0, r1) of one plane. buf holds 9 rows of W scratch values.
template <typename A, int K, bool V, bool G, bool Avx2>
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
      tv_row<A, K, false, true, Avx2>(x + (r0 - 1) * W, x + r0 * W, W, p, dx, dy, t, root, v, a,
                                      bprev);
    } else {
      for (int64_t j = 0; j < W; ++j) bprev[j] = A(0);
    }
  }
  for (int64_t i = r0; i < r1; ++i) {
    const A* xi = x + i * W;
    const A* xn = i + 1 < H ? xi + W : nullptr;
    s += tv_row<A, K, V, G, Avx2>(xi, xn, W, p, dx, dy, t, root, v, a, b);
    if (G) {
      A* gi = grad + i * W;
      gi[0] = tv_grad_at(A(0), bprev[0], a[0], b[0], scale);
      for (int64_t j = 1; j < W; ++j) gi[j] = tv_grad_at(a[j - 1], bprev[j], a[j], b[j], scale);
      std::swap(b, bprev);
    }
  }
  return s;
}

template <typename A, int K, bool V, bool G>
double tv_band_default(const A* x, A* grad, int64_t H, int64_t W, int64_t r0, int64_t r1,
                       const TVParams& p, A scale, A* buf) {
  return tv_band_impl<A, K, V, G, false>(x, grad, H, W, r0, r1, p, scale, buf);
}

#if CNNVIS_X86_DISPATCH
template <typename A, int K, bool V, bool G>
CNNVIS_TARGET_AVX2 double tv_band_avx2(const A* x, A* grad, int64_t H, int64_t W, int64_t r0,
                                       int64_t r1, const TVParams& p, A scale, A* buf) {
  return tv_band_impl<A, K, V, G, true>(x, grad, H, W, r0, r1, p, scale, buf);
}
#endif

template <typename A, int K, bool V, bool G>
using BandFn = double (*)(const A*, A*, int64_t, int64_t, int64_t, int64_t, const TVParams&, A,
                          A*);

template <typename A, int K, bool V, bool G>
BandFn<A, K, V, G> pick_band() {
#if CNNVIS_X86_DISPATCH
  if (cpu_has_avx2_fma()) return &tv_band_avx2<A, K, V, G>;
#endif
  return &tv_band_default<A, K, V, G>;
}

// Runs the band kernel over every plane of x (contiguous NCHW). Returns the
// per-image sums (double, (N,)) when V; writes grad (contiguous) when G, with
// scales[n] the upstream factor of image n.
template <typename A, int K, bool V, bool G>
std::vector<double> tv_run(const A* x, A* grad, int64_t N, int64_t C, int64_t H, int64_t W,
                           const TVParams& p, const std::vector<double>& scales) {
  const int64_t planes = N * C;
  const int64_t threads = at::get_num_threads();
  // Enough bands for every thread to get several, but bands of >= 16 rows.
  int64_t bands = 1;
  if (planes < 4 * threads) bands = std::max<int64_t>(1, std::min<int64_t>((4 * threads + planes - 1) / planes, H / 16));
  const int64_t bh = (H + bands - 1) / bands;
  bands = (H + bh - 1) / bh;
  std::vector<double> partial(planes * bands, 0.0);
  const auto fn = pick_band<A, K, V, G>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, bh * W));
  at::parallel_for(0, planes * bands, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> buf(9 * W);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / bands, band = item % bands;
      const int64_t r0 = band * bh, r1 = std::min(H, r0 + bh);
      const int64_t off = plane * H * W;
      const A scale = G ? static_cast<A>(scales[plane / C]) : A(0);
      partial[item] = fn(x + off, G ? grad + off : nullptr, H, W, r0, r1, p, scale, buf.data());
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

template <typename A, bool V, bool G>
std::vector<double> tv_dispatch_kind(int kind, const A* x, A* grad, int64_t N, int64_t C,
                                     int64_t H, int64_t W, const TVParams& p,
                                     const std::vector<double>& scales) {
  switch (kind) {
    case kTVBeta2: return tv_run<A, kTVBeta2, V, G>(x, grad, N, C, H, W, p, scales);
    case kTVBeta1: return tv_run<A, kTVBeta1, V, G>(x, grad, N, C, H, W, p, scales);
    case kTVGeneral: return tv_run<A, kTVGeneral, V, G>(x, grad, N, C, H, W, p, scales);
    default: return tv_run<A, kTVAniso, V, G>(x, grad, N, C, H, W, p, scales);
  }
}

void check_cpu(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x: expected a CPU tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x: dtype ",
                   x.scalar_type(), " is not supported on CPU (float32, float64)");
}

// The reduced value from per-image sums.
at::Tensor finish_value(const std::vector<double>& per_image, const at::Tensor& x, int reduction) {
  const int64_t N = x.size(0);
  if (reduction == kTVNone) {
    at::Tensor out = at::empty({N}, x.options().dtype(at::kDouble));
    std::copy(per_image.begin(), per_image.end(), out.mutable_data_ptr<double>());
    return out.to(x.scalar_type());
  }
  double s = 0;
  for (double v : per_image) s += v;
  if (reduction == kTVMean) s = x.numel() > 0 ? s / static_cast<double>(x.numel()) : NAN;
  return at::scalar_tensor(s, x.options().dtype(at::kDouble)).to(x.scalar_type());
}

TVParams params_of(const TVOptions& o) { return TVParams{o.beta / 2, o.beta, o.eps}; }

at::Tensor total_variation_cpu(const at::Tensor& x, double beta, double eps,
                               c10::string_view reduction, c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  check_cpu(x);
  const at::Tensor xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  std::vector<double> per_image(N, 0.0);
  if (xc.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "total_variation_cpu", [&] {
      per_image = tv_dispatch_kind<scalar_t, true, false>(o.kind, xc.const_data_ptr<scalar_t>(),
                                                          nullptr, N, C, H, W, params_of(o), {});
    });
  }
  return finish_value(per_image, x, o.reduction);
}

// Upstream factor per image for the gradient.
std::vector<double> scales_of(const at::Tensor* grad_out, const at::Tensor& x, int reduction) {
  const int64_t N = x.size(0);
  std::vector<double> s(N, 1.0);
  if (grad_out != nullptr) {
    const at::Tensor g = grad_out->to(at::kDouble).contiguous().reshape({-1});
    const double* gp = g.const_data_ptr<double>();
    for (int64_t n = 0; n < N; ++n) s[n] = reduction == kTVNone ? gp[n] : gp[0];
  }
  if (reduction == kTVMean && x.numel() > 0)
    for (auto& v : s) v /= static_cast<double>(x.numel());
  return s;
}

at::Tensor total_variation_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                        double beta, double eps, c10::string_view reduction,
                                        c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  check_cpu(x);
  check_total_variation_grad_out(grad_out, x, o);
  const at::Tensor xc = x.contiguous();
  at::Tensor grad = at::empty(x.sizes(), xc.options());
  if (xc.numel() == 0) return grad;
  const auto scales = scales_of(&grad_out, x, o.reduction);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "total_variation_backward_cpu", [&] {
    tv_dispatch_kind<scalar_t, false, true>(o.kind, xc.const_data_ptr<scalar_t>(),
                                            grad.mutable_data_ptr<scalar_t>(), x.size(0),
                                            x.size(1), x.size(2), x.size(3), params_of(o), scales);
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> total_variation_and_grad_cpu(const at::Tensor& x, double beta,
                                                                double eps,
                                                                c10::string_view reduction,
                                                                c10::string_view mode) {
  const TVOptions o = check_total_variation(x, beta, eps, reduction, mode);
  check_cpu(x);
  const at::Tensor xc = x.contiguous();
  at::Tensor grad = at::empty(x.sizes(), xc.options());
  std::vector<double> per_image(x.size(0), 0.0);
  if (xc.numel() > 0) {
    const auto scales = scales_of(nullptr, x, o.reduction);
    AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "total_variation_and_grad_cpu", [&] {
      per_image = tv_dispatch_kind<scalar_t, true, true>(
          o.kind, xc.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), x.size(0),
          x.size(1), x.size(2), x.size(3), params_of(o), scales);
    });
  }
  return {finish_value(per_image, x, o.reduction), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) {
  m.impl("total_variation", &total_variation_cpu);
  m.impl("_total_variation_backward", &total_variation_backward_cpu);
  m.impl("total_variation_and_grad", &total_variation_and_grad_cpu);
}

}  // namespace cnnvis
