// CPU backend of regularize_. Passes over x (NCHW, contiguous or a
// contiguous working copy written back at the end):
//   1. update x (lr, decay) and, unless a blur follows, accumulate every
//      pixel's squared norm and contribution in the same pass; with no
//      clipping the clamp is applied here too, and this is the only pass;
//   2. blur (the gaussian_blur op, fused separable) when blur_sigma > 0,
//      then the pixel statistics;
//   3. per image, the exact linear-interpolation percentile with
//      std::nth_element (O(H W), no sort) on a scratch copy;
//   4. zero the clipped pixels and clamp.
// Elementwise loops run over a chunk of pixels of one image, one channel at a
// time (contiguous, vectorized; AVX2 + FMA copy picked at run time on x86-64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../regularize.h"
#include "../regularize_common.h"
#include "cpu_helpers.h"
#include "isa.h"

namespace cnnvis {
namespace {

template <typename A>
struct RegPass {
  A* x;           // image n, channel 0, pixel p0
  const A* g;     // same position in grad (or nullptr)
  A* sq;          // per-pixel squared norm (or nullptr), from p0
  A* ct;          // per-pixel contribution (or nullptr), from p0
  const A* nthr_vals;  // per-pixel squared norm (for the final pass)
  const A* cthr_vals;  // per-pixel contribution (for the final pass)
  int64_t C, HW, len;
  A lr, keep, lo, hi, nthr, cthr;
  bool add, scale, clamp;
};

// Pass 1 / 2: update (when add/scale) and statistics (when sq/ct), clamp when
// clamp (only used when nothing is clipped).
template <typename A>
CNNVIS_ALWAYS_INLINE void update_stats_impl(const RegPass<A>& p) {
  const int64_t L = p.len;
  if (p.sq)
    for (int64_t i = 0; i < L; ++i) p.sq[i] = A(0);
  if (p.ct)
    for (int64_t i = 0; i < L; ++i) p.ct[i] = A(0);
  for (int64_t c = 0; c < p.C; ++c) {
    A* CNNVIS_RESTRICT xc = p.x + c * p.HW;
    const A* CNNVIS_RESTRICT gc = p.g ? p.g + c * p.HW : nullptr;
    if (p.add || p.scale) {
      if (p.add) {
        for (int64_t i = 0; i < L; ++i) xc[i] = reg_update(xc[i], gc[i], p.lr, p.keep, true, p.scale);
      } else {
        for (int64_t i = 0; i < L; ++i) xc[i] = reg_update(xc[i], A(0), p.lr, p.keep, false, true);
      }
    }
    if (p.clamp)
      for (int64_t i = 0; i < L; ++i) xc[i] = reg_clamp(xc[i], p.lo, p.hi);
    if (p.sq) {
      A* CNNVIS_RESTRICT sq = p.sq;
      for (int64_t i = 0; i < L; ++i) {
        A unused = A(0);
        reg_pixel_stats(xc[i], A(0), sq + i, &unused);
      }
    }
    if (p.ct) {
      A* CNNVIS_RESTRICT ct = p.ct;
      for (int64_t i = 0; i < L; ++i) {
        A unused = A(0);
        reg_pixel_stats(xc[i], gc[i], &unused, ct + i);
      }
    }
  }
}

// Pass 4: zero clipped pixels, clamp.
template <typename A>
CNNVIS_ALWAYS_INLINE void finish_impl(const RegPass<A>& p) {
  const int64_t L = p.len;
  for (int64_t c = 0; c < p.C; ++c) {
    A* CNNVIS_RESTRICT xc = p.x + c * p.HW;
    const A* CNNVIS_RESTRICT nv = p.nthr_vals;
    const A* CNNVIS_RESTRICT cv = p.cthr_vals;
    for (int64_t i = 0; i < L; ++i) {
      const bool zero = (nv != nullptr && nv[i] < p.nthr) || (cv != nullptr && cv[i] < p.cthr);
      xc[i] = reg_finish(xc[i], zero, p.lo, p.hi);
    }
  }
}

// The passes, with a generic and an AVX2 + FMA copy (isa.h).
struct UpdateStatsPass {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx2;
  template <CpuIsa, typename A>
  static CNNVIS_ALWAYS_INLINE void run(const RegPass<A>& p) {
    update_stats_impl(p);
  }
};
struct FinishPass {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx2;
  template <CpuIsa, typename A>
  static CNNVIS_ALWAYS_INLINE void run(const RegPass<A>& p) {
    finish_impl(p);
  }
};

// ---- exact selection -------------------------------------------------------
// k-th smallest of m floating-point values (no NaN) by radix selection on
// their order-preserving integer keys: a histogram of the top 11 bits finds
// the bucket holding rank k, its members are gathered, and the next 11 bits
// refine until few candidates are left (then std::nth_element on them). Two
// linear passes over the data, against ~12 ns per element for
// std::nth_element on the whole image.
template <typename A>
struct RadixKey;
template <>
struct RadixKey<float> {
  using U = uint32_t;
};
template <>
struct RadixKey<double> {
  using U = uint64_t;
};

template <typename A>
inline typename RadixKey<A>::U to_key(A v) {
  using U = typename RadixKey<A>::U;
  constexpr int bits = sizeof(U) * 8;
  U u;
  std::memcpy(&u, &v, sizeof(U));
  return (u >> (bits - 1)) ? ~u : (u | (U(1) << (bits - 1)));
}

template <typename A>
inline A from_key(typename RadixKey<A>::U k) {
  using U = typename RadixKey<A>::U;
  constexpr int bits = sizeof(U) * 8;
  const U u = (k >> (bits - 1)) ? (k & ~(U(1) << (bits - 1))) : ~k;
  A v;
  std::memcpy(&v, &u, sizeof(U));
  return v;
}

template <typename A>
A radix_select(const A* vals, int64_t m, int64_t k, std::vector<typename RadixKey<A>::U>& cand,
               std::vector<typename RadixKey<A>::U>& next) {
  using U = typename RadixKey<A>::U;
  constexpr int bits = sizeof(U) * 8, B = 11;
  uint32_t hist[1 << B];
  int shift = bits - B;
  // first digit, straight from the values
  std::fill(hist, hist + (1 << B), 0u);
  for (int64_t i = 0; i < m; ++i) ++hist[to_key(vals[i]) >> shift];
  int64_t b = 0;
  for (;; ++b) {
    if (k < hist[b]) break;
    k -= hist[b];
  }
  cand.clear();
  for (int64_t i = 0; i < m; ++i) {
    const U key = to_key(vals[i]);
    if (static_cast<int64_t>(key >> shift) == b) cand.push_back(key);
  }
  while (cand.size() > 64 && shift > 0) {
    const int width = std::min(B, shift);
    const int nshift = shift - width;
    const U dmask = (U(1) << width) - 1;
    std::fill(hist, hist + (1 << width), 0u);
    for (const U key : cand) ++hist[(key >> nshift) & dmask];
    int64_t d = 0;
    for (;; ++d) {
      if (k < hist[d]) break;
      k -= hist[d];
    }
    next.clear();
    for (const U key : cand)
      if (static_cast<int64_t>((key >> nshift) & dmask) == d) next.push_back(key);
    cand.swap(next);
    shift = nshift;
  }
  std::nth_element(cand.begin(), cand.begin() + k, cand.end());
  return from_key<A>(cand[k]);
}

// The (k+1)-th smallest given vb, the k-th: vb again when more than k+1
// values are <= vb, else the smallest value above vb.
template <typename A>
A next_order_statistic(const A* vals, int64_t m, int64_t k, A vb) {
  int64_t le = 0;
  A mn[8];
  for (auto& v : mn) v = std::numeric_limits<A>::infinity();
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    for (int l = 0; l < 8; ++l) {
      const A v = vals[i + l];
      le += v <= vb;
      const A c = v > vb ? v : std::numeric_limits<A>::infinity();
      mn[l] = c < mn[l] ? c : mn[l];
    }
  for (; i < m; ++i) {
    le += vals[i] <= vb;
    if (vals[i] > vb && vals[i] < mn[0]) mn[0] = vals[i];
  }
  if (le > k + 1) return vb;
  A best = mn[0];
  for (int l = 1; l < 8; ++l) best = mn[l] < best ? mn[l] : best;
  return best;
}

// The two order statistics torch.quantile(values, q, "linear") interpolates,
// *vb (rank below) and *va (rank above), and the weight. False when a value
// is NaN (torch.quantile is NaN then, which clips nothing).
template <typename A>
bool quantile_order_stats(const A* values, int64_t m, A q, A* vb, A* va, A* weight,
                          std::vector<typename RadixKey<A>::U>& s1,
                          std::vector<typename RadixKey<A>::U>& s2) {
  bool nan = false;
  for (int64_t i = 0; i < m; ++i) nan |= values[i] != values[i];
  if (nan) return false;
  int64_t below, above;
  quantile_rank(m, q, &below, &above, weight);
  *vb = radix_select(values, m, below, s1, s2);
  *va = above == below ? *vb : next_order_statistic(values, m, below, *vb);
  return true;
}

// The smallest s >= 0 with sqrt(s) >= thr, so that for squared norms sq,
// sqrt(sq) < thr  <=>  sq < s (sqrt is monotonic): the norm clip then
// compares squared norms, and no per-pixel sqrt is needed.
template <typename A>
A squared_cut(A thr) {
  if (!(thr > A(0))) return A(0);
  if (std::isinf(thr)) return thr;
  A s = thr * thr;
  while (s > A(0) && std::sqrt(std::nextafter(s, A(0))) >= thr) s = std::nextafter(s, A(0));
  while (std::sqrt(s) < thr) s = std::nextafter(s, std::numeric_limits<A>::infinity());
  return s;
}

template <typename A>
void regularize_run(A* x, const A* g, int64_t N, int64_t C, int64_t HW, const at::Tensor& xt,
                    double lr, double decay, double blur_sigma, double norm_pct,
                    double contrib_pct, double lo, double hi, at::Tensor* blurred) {
  const bool add = lr != 0, scale = decay != 0, blur = blur_sigma > 0;
  const bool nclip = norm_pct > 0, cclip = contrib_pct > 0, clip = nclip || cclip;
  const bool clamp = lo > -INFINITY || hi < INFINITY;
  std::vector<A> norms(nclip ? N * HW : 0), contribs(cclip ? N * HW : 0);
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  auto make = [&](A* xb, int64_t n, int64_t p0, int64_t p1) {
    RegPass<A> p{};
    p.x = xb + n * C * HW + p0;
    p.g = g ? g + n * C * HW + p0 : nullptr;
    p.C = C;
    p.HW = HW;
    p.len = p1 - p0;
    p.lr = static_cast<A>(lr);
    p.keep = static_cast<A>(1.0 - decay);
    p.lo = static_cast<A>(lo);
    p.hi = static_cast<A>(hi);
    return p;
  };
  const int64_t grain = grain_for(C * kChunk, 65536);
  const CpuIsa isa = cpu_isa();
  // 1. update (+ stats when no blur; + clamp when nothing is clipped)
  if (add || scale || (!blur && (clip || clamp))) {
    at::parallel_for(0, N * chunks, grain, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t n = it / chunks, p0 = (it % chunks) * kChunk, p1 = std::min(HW, p0 + kChunk);
        RegPass<A> p = make(x, n, p0, p1);
        p.add = add;
        p.scale = scale;
        p.clamp = !blur && !clip && clamp;
        if (!blur) {
          p.sq = nclip ? norms.data() + n * HW + p0 : nullptr;
          p.ct = cclip ? contribs.data() + n * HW + p0 : nullptr;
        }
        run_on_isa<UpdateStatsPass>(isa, p);
      }
    });
  }
  A* xs = x;  // where the rest of the step reads and writes
  if (blur) {
    *blurred = regularize_blur(xt, blur_sigma);
    xs = blurred->mutable_data_ptr<A>();
    if (clip || clamp) {
      at::parallel_for(0, N * chunks, grain, [&](int64_t b, int64_t e) {
        for (int64_t it = b; it < e; ++it) {
          const int64_t n = it / chunks, p0 = (it % chunks) * kChunk, p1 = std::min(HW, p0 + kChunk);
          RegPass<A> p = make(xs, n, p0, p1);
          p.clamp = !clip && clamp;
          p.sq = nclip ? norms.data() + n * HW + p0 : nullptr;
          p.ct = cclip ? contribs.data() + n * HW + p0 : nullptr;
          run_on_isa<UpdateStatsPass>(isa, p);
        }
      });
    }
  }
  if (!clip) return;
  // 3. per-image thresholds. Norms are selected as squared norms (the order
  // statistics of sqrt(sq) are sqrt of those of sq), and the clip compares
  // sq with the exact squared cut of the norm threshold.
  std::vector<A> ncut(N, A(0)), cthr(N, -std::numeric_limits<A>::infinity());
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    std::vector<typename RadixKey<A>::U> s1, s2;
    for (int64_t n = b; n < e; ++n) {
      A vb, va, w;
      if (nclip) {
        A* sq = norms.data() + n * HW;
        if (quantile_order_stats(sq, HW, static_cast<A>(norm_pct / 100.0), &vb, &va, &w, s1, s2)) {
          ncut[n] = squared_cut(quantile_lerp(std::sqrt(vb), std::sqrt(va), w));
        }
        if (cclip) {  // the contribution of a pixel zeroed by the norm clip is 0
          A* cv = contribs.data() + n * HW;
          const A cut = ncut[n];
          for (int64_t i = 0; i < HW; ++i) cv[i] = sq[i] < cut ? A(0) : cv[i];
        }
      }
      if (cclip) {
        const A* cv = contribs.data() + n * HW;
        if (quantile_order_stats(cv, HW, static_cast<A>(contrib_pct / 100.0), &vb, &va, &w, s1, s2))
          cthr[n] = quantile_lerp(vb, va, w);
      }
    }
  });
  // 4. zero + clamp
  at::parallel_for(0, N * chunks, grain, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t n = it / chunks, p0 = (it % chunks) * kChunk, p1 = std::min(HW, p0 + kChunk);
      RegPass<A> p = make(xs, n, p0, p1);
      p.nthr_vals = nclip ? norms.data() + n * HW + p0 : nullptr;
      p.cthr_vals = cclip ? contribs.data() + n * HW + p0 : nullptr;
      p.nthr = ncut[n];
      p.cthr = cthr[n];
      run_on_isa<FinishPass>(isa, p);
    }
  });
}

struct RegularizeCpu : CpuBackend {
  static at::Tensor run(at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                        double blur_sigma, double norm_pct, double contrib_pct, double lo,
                        double hi) {
    const bool need_grad = lr != 0 || contrib_pct > 0;
    at::Tensor blurred;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "regularize_cpu", [&] {
      regularize_run<scalar_t>(x.mutable_data_ptr<scalar_t>(),
                               need_grad ? grad.const_data_ptr<scalar_t>() : nullptr, x.size(0),
                               x.size(1), x.size(2) * x.size(3), x, lr, decay, blur_sigma,
                               norm_pct, contrib_pct, lo, hi, &blurred);
    });
    return blurred.defined() ? blurred : x;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) { register_regularize<RegularizeCpu>(m); }

}  // namespace cnnvis
