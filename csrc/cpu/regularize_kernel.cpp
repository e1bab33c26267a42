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
#include <limits>
#include <vector>

#include "../regularize.h"
#include "../regularize_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define CNNVIS_REG_X86 1
#define CNNVIS_REG_AVX2 __attribute__((target("avx2,fma")))
#else
#define CNNVIS_REG_X86 0
#endif
#if defined(__GNUC__)
#define CNNVIS_REG_INLINE __attribute__((always_inline)) inline
#else
#define CNNVIS_REG_INLINE inline
#endif

namespace cnnvis {
namespace {

bool reg_cpu_has_avx2() {
#if CNNVIS_REG_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

template <typename A>
struct RegPass {
  A* x;           // image n, channel 0, pixel p0
  const A* g;     // same position in grad (or nullptr)
  A* sq;          // per-pixel squared norm (or nullptr), from p0
  A* ct;          // per-pixel contribution (or nullptr), from p0
  const A* nthr_vals;  // per-pixel norm (for the final pass)
  const A* cthr_vals;  // per-pixel contribution (for the final pass)
  int64_t C, HW, len;
  A lr, keep, lo, hi, nthr, cthr;
  bool add, scale, clamp;
};

// Pass 1 / 2: update (when add/scale) and statistics (when sq/ct), clamp when
// clamp (only used when nothing is clipped).
template <typename A>
CNNVIS_REG_INLINE void update_stats_impl(const RegPass<A>& p) {
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
CNNVIS_REG_INLINE void finish_impl(const RegPass<A>& p) {
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

template <typename A>
void update_stats_default(const RegPass<A>& p) { update_stats_impl(p); }
template <typename A>
void finish_default(const RegPass<A>& p) { finish_impl(p); }
#if CNNVIS_REG_X86
template <typename A>
CNNVIS_REG_AVX2 void update_stats_avx2(const RegPass<A>& p) { update_stats_impl(p); }
template <typename A>
CNNVIS_REG_AVX2 void finish_avx2(const RegPass<A>& p) { finish_impl(p); }
#endif

template <typename A>
void run_update_stats(const RegPass<A>& p) {
#if CNNVIS_REG_X86
  if (reg_cpu_has_avx2()) return update_stats_avx2(p);
#endif
  update_stats_default(p);
}
template <typename A>
void run_finish(const RegPass<A>& p) {
#if CNNVIS_REG_X86
  if (reg_cpu_has_avx2()) return finish_avx2(p);
#endif
  finish_default(p);
}

// torch.quantile(values, q, interpolation="linear") of m values, by
// selection: nth_element on a scratch copy, then the smallest value above.
// NaN anywhere gives NaN (as torch.quantile), which clips nothing.
template <typename A>
A exact_quantile(const A* values, int64_t m, A q, std::vector<A>& scratch) {
  scratch.assign(values, values + m);
  for (int64_t i = 0; i < m; ++i)
    if (std::isnan(scratch[i])) return std::numeric_limits<A>::quiet_NaN();
  int64_t below, above;
  A weight;
  quantile_rank(m, q, &below, &above, &weight);
  std::nth_element(scratch.begin(), scratch.begin() + below, scratch.end());
  const A vb = scratch[below];
  const A va = above == below ? vb : *std::min_element(scratch.begin() + below + 1, scratch.end());
  return quantile_lerp(vb, va, weight);
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
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, C * kChunk));
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
        run_update_stats(p);
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
          run_update_stats(p);
        }
      });
    }
  }
  if (!clip) return;
  // 3. per-image thresholds
  std::vector<A> nthr(N, -INFINITY), cthr(N, -INFINITY);
  for (auto& v : norms) v = std::sqrt(v);
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    std::vector<A> scratch;
    for (int64_t n = b; n < e; ++n) {
      if (nclip) {
        A* nv = norms.data() + n * HW;
        nthr[n] = exact_quantile(nv, HW, static_cast<A>(norm_pct / 100.0), scratch);
        if (cclip) {  // the contribution of a pixel zeroed by the norm clip is 0
          A* cv = contribs.data() + n * HW;
          for (int64_t i = 0; i < HW; ++i) cv[i] = nv[i] < nthr[n] ? A(0) : cv[i];
        }
      }
      if (cclip)
        cthr[n] = exact_quantile(contribs.data() + n * HW, HW,
                                 static_cast<A>(contrib_pct / 100.0), scratch);
    }
  });
  // 4. zero + clamp
  at::parallel_for(0, N * chunks, grain, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t n = it / chunks, p0 = (it % chunks) * kChunk, p1 = std::min(HW, p0 + kChunk);
      RegPass<A> p = make(xs, n, p0, p1);
      p.nthr_vals = nclip ? norms.data() + n * HW + p0 : nullptr;
      p.cthr_vals = cclip ? contribs.data() + n * HW + p0 : nullptr;
      p.nthr = nthr[n];
      p.cthr = cthr[n];
      run_finish(p);
    }
  });
}

void regularize_cpu(at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                    double blur_sigma, double norm_pct, double contrib_pct, double lo, double hi) {
  check_regularize(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x: expected a CPU tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x: dtype ",
                   x.scalar_type(), " is not supported on CPU (float32, float64)");
  if (x.numel() == 0) return;
  at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const bool need_grad = lr != 0 || contrib_pct > 0;
  const at::Tensor gc = need_grad ? grad.contiguous() : grad;
  at::Tensor blurred;
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "regularize_cpu", [&] {
    regularize_run<scalar_t>(xc.mutable_data_ptr<scalar_t>(),
                             need_grad ? gc.const_data_ptr<scalar_t>() : nullptr, x.size(0),
                             x.size(1), x.size(2) * x.size(3), xc, lr, decay, blur_sigma,
                             norm_pct, contrib_pct, lo, hi, &blurred);
  });
  if (blurred.defined()) {
    x.copy_(blurred);
  } else if (!xc.is_same(x)) {
    x.copy_(xc);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) { m.impl("regularize_", &regularize_cpu); }

}  // namespace cnnvis
