// CPU switch-sparse convolution kernels: see switch_sparse.h.
#include "switch_sparse.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "../macros.h"
#include "../unpool_conv_transpose_common.h"
#include "cpu_features.h"

namespace cnnvis {
namespace switch_sparse {
namespace {

// Values of the pooled map that unpooling places: the rebuilt conv-output
// gradient (grad_out where out passed the ReLU; NaN out lets it through, as
// threshold_backward does), or p, rectified or not.
template <typename A>
struct MaskedGrad {
  const A* g;
  const A* out;
  CNNVIS_ALWAYS_INLINE A operator()(int64_t i) const { return out[i] <= A(0) ? A(0) : g[i]; }
};
template <typename A>
struct Rectified {
  const A* p;
  CNNVIS_ALWAYS_INLINE A operator()(int64_t i) const { return rectify_value(p[i], true); }
};
template <typename A>
struct Plain {
  const A* p;
  CNNVIS_ALWAYS_INLINE A operator()(int64_t i) const { return p[i]; }
};

template <typename A>
struct VecU;
template <>
struct VecU<float> {
  typedef float type __attribute__((vector_size(32), aligned(4), may_alias));
  static constexpr int lanes = 8;
};
template <>
struct VecU<double> {
  typedef double type __attribute__((vector_size(32), aligned(8), may_alias));
  static constexpr int lanes = 4;
};

// o[0, len) += sum_j v[j] * rows[j][off, off + len). FMA latency (4-5
// cycles) would bound one accumulator per vector, so every pass keeps eight
// independent accumulator chains: 8 vectors of the run, or 4 vectors (then
// 1) with the rows taken two at a time into two sets; scalars last.
constexpr int64_t kAhead = 4;  // software prefetch distance, in entries

template <typename A>
CNNVIS_ALWAYS_INLINE void acc_rows(A* CNNVIS_RESTRICT o, const A* const* rows, int64_t off,
                                   const A* v, int64_t m, int64_t len) {
  using V = typename VecU<A>::type;
  constexpr int L = VecU<A>::lanes;
  int64_t t = 0;
  for (; t + 8 * L <= len; t += 8 * L) {
    V a[8];
    for (int u = 0; u < 8; ++u) std::memcpy(&a[u], o + t + u * L, sizeof(V));
    for (int64_t j = 0; j < m; ++j) {
      const A* r = rows[j] + off + t;
      const A s = v[j];
      if (j + kAhead < m) {  // the rows are scattered: fetch a few entries ahead
        const A* rn = rows[j + kAhead] + off + t;
        for (int u = 0; u < 8 * L; u += 64 / static_cast<int>(sizeof(A))) __builtin_prefetch(rn + u);
      }
      for (int u = 0; u < 8; ++u) {
        V b;
        std::memcpy(&b, r + u * L, sizeof(V));
        a[u] += s * b;
      }
    }
    for (int u = 0; u < 8; ++u) std::memcpy(o + t + u * L, &a[u], sizeof(V));
  }
  for (; t + 4 * L <= len; t += 4 * L) {
    V a[4], c[4];
    for (int u = 0; u < 4; ++u) {
      std::memcpy(&a[u], o + t + u * L, sizeof(V));
      c[u] = a[u] - a[u];
    }
    int64_t j = 0;
    for (; j + 2 <= m; j += 2) {
      const A* r0 = rows[j] + off + t;
      const A* r1 = rows[j + 1] + off + t;
      const A s0 = v[j], s1 = v[j + 1];
      if (j + kAhead + 1 < m) {
        __builtin_prefetch(rows[j + kAhead] + off + t);
        __builtin_prefetch(rows[j + kAhead] + off + t + 2 * L);
        __builtin_prefetch(rows[j + kAhead + 1] + off + t);
        __builtin_prefetch(rows[j + kAhead + 1] + off + t + 2 * L);
      }
      for (int u = 0; u < 4; ++u) {
        V b0, b1;
        std::memcpy(&b0, r0 + u * L, sizeof(V));
        std::memcpy(&b1, r1 + u * L, sizeof(V));
        a[u] += s0 * b0;
        c[u] += s1 * b1;
      }
    }
    if (j < m) {
      const A* r0 = rows[j] + off + t;
      for (int u = 0; u < 4; ++u) {
        V b0;
        std::memcpy(&b0, r0 + u * L, sizeof(V));
        a[u] += v[j] * b0;
      }
    }
    for (int u = 0; u < 4; ++u) {
      a[u] += c[u];
      std::memcpy(o + t + u * L, &a[u], sizeof(V));
    }
  }
  for (; t + L <= len; t += L) {
    V a0, a1;
    std::memcpy(&a0, o + t, sizeof(V));
    a1 = a0 - a0;
    int64_t j = 0;
    for (; j + 2 <= m; j += 2) {
      V b0, b1;
      std::memcpy(&b0, rows[j] + off + t, sizeof(V));
      std::memcpy(&b1, rows[j + 1] + off + t, sizeof(V));
      a0 += v[j] * b0;
      a1 += v[j + 1] * b1;
    }
    if (j < m) {
      V b0;
      std::memcpy(&b0, rows[j] + off + t, sizeof(V));
      a0 += v[j] * b0;
    }
    a0 += a1;
    std::memcpy(o + t, &a0, sizeof(V));
  }
  for (; t < len; ++t) {
    A a = o[t];
    for (int64_t j = 0; j < m; ++j) a += v[j] * rows[j][off + t];
    o[t] = a;
  }
}

inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Cache blocking. The product of one group is a matrix-vector product
// (each weight row is used once per group), so the loops run over bands of
// pooled rows and, inside a band, over chunks of the run: one chunk of every
// weight row (C * kChunk values) stays in cache while all the groups of the
// band use it, and likewise one chunk of the input rows of a band while
// every channel's weight-gradient chunk is accumulated.
constexpr int64_t kChunkBytes = 512;      // run chunk: 128 floats, 64 doubles
constexpr int64_t kBandPositions = 64;    // pooled positions per band, at least

inline int64_t band_rows(const Geom& g) {
  return std::max<int64_t>(1, (kBandPositions + g.PW - 1) / std::max<int64_t>(1, g.PW));
}

// Per-task scratch: the nonzeros of one band of pooled rows, grouped by
// (position, switch).
template <typename A>
struct Scratch {
  std::vector<int32_t> c, s, cnt, start;
  std::vector<A> v;
  std::vector<const A*> rows;  // band entries: weight row of the channel
  std::vector<A> vals;         // band entries: value
  std::vector<int64_t> gy, gx, gj, gm;  // band groups: target, first entry, count
  explicit Scratch(const Geom& g)
      : c(g.c), s(g.c), cnt(g.pool_kh * g.pool_kw + 1), start(g.pool_kh * g.pool_kw + 1),
        v(g.c) {}
  void clear() {
    rows.clear();
    vals.clear();
    gy.clear();
    gx.clear();
    gj.clear();
    gm.clear();
  }
};

// The conv-output position named by switch k of pooled (ph, pw), through
// the switch_position of the op bodies; false when outside the window or map.
inline bool target(const Geom& g, int64_t ph, int64_t pw, int64_t k, int64_t* y, int64_t* x) {
  return switch_position(ph, pw, k, g.pool_sh, g.pool_sw, g.pool_ph, g.pool_pw, g.pool_kh,
                         g.pool_kw, g.CH, g.CW, y, x);
}

// Appends the groups of pooled position (ph, pw) of image n to the band
// (the channels with a nonzero value, counting-sorted by switch). False on
// a bad switch.
template <typename A, typename Val>
CNNVIS_ALWAYS_INLINE bool add_position(const Geom& g, const Val& val, const uint8_t* sw,
                                       const A* const* wrows, const uint8_t* nonzero, int64_t n,
                                       int64_t ph, int64_t pw, Scratch<A>& sc) {
  const int64_t C = g.c, K = g.pool_kh * g.pool_kw;
  const int64_t q = (n * g.PH + ph) * g.PW + pw, base = q * C;
  if (!nonzero[q]) return true;
  int64_t m = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A v = val(base + c);
    if (v == A(0)) continue;
    sc.c[m] = static_cast<int32_t>(c);
    sc.v[m] = v;
    sc.s[m] = sw ? sw[base + c] : 0;
    ++m;
  }
  std::fill(sc.cnt.begin(), sc.cnt.end(), 0);  // K + 1 buckets: the last holds bad switches
  for (int64_t j = 0; j < m; ++j) ++sc.cnt[std::min<int64_t>(sc.s[j], K)];
  if (sc.cnt[K] > 0) return false;
  const int64_t e0 = static_cast<int64_t>(sc.rows.size());
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) {
    sc.start[k] = acc;
    if (sc.cnt[k] > 0) {
      int64_t y, x;
      if (!target(g, ph, pw, k, &y, &x)) return false;
      sc.gy.push_back(y);
      sc.gx.push_back(x);
      sc.gj.push_back(e0 + acc);
      sc.gm.push_back(sc.cnt[k]);
    }
    acc += sc.cnt[k];
  }
  sc.rows.resize(e0 + m);
  sc.vals.resize(e0 + m);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t pos = e0 + sc.start[sc.s[j]]++;
    sc.vals[pos] = sc.v[j];
    sc.rows[pos] = wrows[sc.c[j]];
  }
  return true;
}

// Scatter task: the rows [r0, r1) of the output of image n.
//   val(i): the pooled value at flat NHWC index i; sw: switches (null: the
//   identity pooling); wrows[c]: filter c as (kH, kW, C_in) (null for a
//   channel without nonzeros); outp: (N, H, W, C_in).
template <typename A, typename Val>
CNNVIS_ALWAYS_INLINE void scatter_task(const Geom& g, const Val& val, const uint8_t* sw,
                                       const A* const* wt, const uint8_t* nonzero, A* outp,
                                       int64_t n, int64_t r0, int64_t r1, Scratch<A>& sc,
                                       std::atomic<bool>& bad) {
  const int64_t span = (g.kh - 1) * g.dh;
  // Conv rows y with [y*sh - pad_h, y*sh - pad_h + span] meeting [r0, r1),
  // then the pooled rows whose windows hold such a y.
  const int64_t ylo =
      std::max<int64_t>(0, floor_div(r0 + g.pad_h - span + g.sh - 1, g.sh));
  const int64_t yhi = std::min<int64_t>(g.CH - 1, floor_div(r1 - 1 + g.pad_h, g.sh));
  if (ylo > yhi) return;
  const int64_t plo =
      std::max<int64_t>(0, floor_div(ylo + g.pool_ph - g.pool_kh + g.pool_sh, g.pool_sh));
  const int64_t phi = std::min<int64_t>(g.PH - 1, floor_div(yhi + g.pool_ph, g.pool_sh));
  const int64_t nseg = g.nseg(), len = g.seglen(), ci = g.ci;
  const int64_t chunk = kChunkBytes / static_cast<int64_t>(sizeof(A));
  const int64_t pb = band_rows(g);
  for (int64_t b0 = plo; b0 <= phi; b0 += pb) {
    sc.clear();
    const int64_t b1 = std::min(phi + 1, b0 + pb);
    for (int64_t ph = b0; ph < b1; ++ph)
      for (int64_t pw = 0; pw < g.PW; ++pw)
        if (!add_position<A, Val>(g, val, sw, wt, nonzero, n, ph, pw, sc)) {
          bad = true;
          return;
        }
    const int64_t ng = static_cast<int64_t>(sc.gy.size());
    if (ng == 0) continue;
    for (int64_t kh = 0; kh < g.kh; ++kh)
      for (int64_t seg = 0; seg < nseg; ++seg)
        for (int64_t t0 = 0; t0 < len; t0 += chunk) {
          const int64_t t1 = std::min(len, t0 + chunk);
          for (int64_t q = 0; q < ng; ++q) {
            const int64_t iy = sc.gy[q] * g.sh - g.pad_h + kh * g.dh;
            if (iy < r0 || iy >= r1) continue;
            // The part of the run inside the map's columns: taps
            // [kw_lo, kw_hi) of one run of kW*C_in values, or one tap.
            const int64_t ix0 = sc.gx[q] * g.sw - g.pad_w + seg * g.dw;
            int64_t lo, hi;
            if (nseg == 1) {
              lo = std::max<int64_t>(0, -ix0) * ci;
              hi = std::min<int64_t>(g.kw, g.W - ix0) * ci;
            } else {
              lo = 0;
              hi = (ix0 >= 0 && ix0 < g.W) ? ci : 0;
            }
            const int64_t a = std::max(t0, lo), b = std::min(t1, hi);
            if (a >= b) continue;
            A* o = outp + ((n * g.H + iy) * g.W + ix0) * ci + a;  // a >= lo: inside the row
            acc_rows<A>(o, sc.rows.data() + sc.gj[q], (kh * g.kw + seg) * ci + a,
                        sc.vals.data() + sc.gj[q], sc.gm[q], b - a);
          }
        }
  }
}

// Correlate task: rows [c0, c1) of gw (C, kH, kW, C_in), from xp (N, Hp, Wp,
// C_in). Accumulates into gw (zeroed by the caller).
template <typename A, typename Val>
CNNVIS_ALWAYS_INLINE void correlate_task(const Geom& g, const Val& val, const uint8_t* sw,
                                         const A* xp, A* gw, int64_t c0, int64_t c1,
                                         std::atomic<bool>& bad) {
  const int64_t C = g.c, nb = c1 - c0;
  const int64_t wrow = g.kh * g.kw * g.ci;
  const int64_t nseg = g.nseg(), len = g.seglen();
  const int64_t chunk = kChunkBytes / static_cast<int64_t>(sizeof(A));
  const int64_t pb = band_rows(g);
  std::vector<std::vector<const A*>> rows(nb);
  std::vector<std::vector<A>> vals(nb);
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t b0 = 0; b0 < g.PH; b0 += pb) {
      const int64_t b1 = std::min(g.PH, b0 + pb);
      for (auto& r : rows) r.clear();
      for (auto& v : vals) v.clear();
      for (int64_t ph = b0; ph < b1; ++ph) {
        for (int64_t pw = 0; pw < g.PW; ++pw) {
          const int64_t base = ((n * g.PH + ph) * g.PW + pw) * C;
          bool any = false;
          for (int64_t c = c0; c < c1; ++c) any |= val(base + c) != A(0);
          if (!any) continue;
          for (int64_t c = c0; c < c1; ++c) {
            const A v = val(base + c);
            if (v == A(0)) continue;
            int64_t y, x;
            if (!target(g, ph, pw, sw ? sw[base + c] : 0, &y, &x)) {
              bad = true;
              return;
            }
            rows[c - c0].push_back(xp + ((n * g.Hp() + y * g.sh) * g.Wp() + x * g.sw) * g.ci);
            vals[c - c0].push_back(v);
          }
        }
      }
      for (int64_t kh = 0; kh < g.kh; ++kh)
        for (int64_t seg = 0; seg < nseg; ++seg)
          for (int64_t t0 = 0; t0 < len; t0 += chunk) {
            const int64_t cl = std::min(chunk, len - t0);
            const int64_t xoff = (kh * g.dh * g.Wp() + seg * g.dw) * g.ci + t0;
            for (int64_t c = c0; c < c1; ++c) {
              const auto& r = rows[c - c0];
              if (r.empty()) continue;
              acc_rows<A>(gw + c * wrow + (kh * g.kw + seg) * g.ci + t0, r.data(), xoff,
                          vals[c - c0].data(), static_cast<int64_t>(r.size()), cl);
            }
          }
    }
  }
}

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

template <typename A, typename Val>
void scatter_generic(const Geom& g, const Val& val, const uint8_t* sw, const A* const* wt,
                     const uint8_t* nz, A* outp, int64_t n, int64_t r0, int64_t r1,
                     Scratch<A>& sc, std::atomic<bool>& bad) {
  scatter_task<A, Val>(g, val, sw, wt, nz, outp, n, r0, r1, sc, bad);
}
template <typename A, typename Val>
void correlate_generic(const Geom& g, const Val& val, const uint8_t* sw, const A* xp, A* gw,
                       int64_t c0, int64_t c1, std::atomic<bool>& bad) {
  correlate_task<A, Val>(g, val, sw, xp, gw, c0, c1, bad);
}
#if CNNVIS_X86_DISPATCH
template <typename A, typename Val>
CNNVIS_TARGET_AVX2 void scatter_avx2(const Geom& g, const Val& val, const uint8_t* sw,
                                     const A* const* wt, const uint8_t* nz, A* outp, int64_t n,
                                     int64_t r0, int64_t r1, Scratch<A>& sc,
                                     std::atomic<bool>& bad) {
  scatter_task<A, Val>(g, val, sw, wt, nz, outp, n, r0, r1, sc, bad);
}
template <typename A, typename Val>
CNNVIS_TARGET_AVX2 void correlate_avx2(const Geom& g, const Val& val, const uint8_t* sw,
                                       const A* xp, A* gw, int64_t c0, int64_t c1,
                                       std::atomic<bool>& bad) {
  correlate_task<A, Val>(g, val, sw, xp, gw, c0, c1, bad);
}
#endif

[[noreturn]] void bad_switch() {
  TORCH_CHECK_VALUE(false, "switches: some switch points outside its pooling window or outside "
                    "the conv output map; check the pooling arguments and output_size");
  abort();
}

// Calls f(val) with the value functor of `mode` over the NHWC pooled tensors.
template <typename A, typename F>
void with_values(Values mode, const at::Tensor& a, const at::Tensor& b, const F& f) {
  const A* ap = a.const_data_ptr<A>();
  switch (mode) {
    case Values::kMaskedGrad:
      f(MaskedGrad<A>{ap, b.const_data_ptr<A>()});
      break;
    case Values::kRectified:
      f(Rectified<A>{ap});
      break;
    case Values::kPlain:
      f(Plain<A>{ap});
      break;
  }
}

// x (N, C, H, W) as a zero-padded NHWC (N, H + 2ph, W + 2pw, C) tensor.
at::Tensor padded_nhwc(const at::Tensor& x, int64_t ph, int64_t pw) {
  if (ph == 0 && pw == 0) return x.contiguous(kCL).permute({0, 2, 3, 1});
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor xp = at::empty({N, H + 2 * ph, W + 2 * pw, C}, x.options());
  // Zero only the border, then copy the interior.
  xp.narrow(1, 0, ph).zero_();
  xp.narrow(1, ph + H, ph).zero_();
  xp.narrow(1, ph, H).narrow(2, 0, pw).zero_();
  xp.narrow(1, ph, H).narrow(2, pw + W, pw).zero_();
  xp.narrow(1, ph, H).narrow(2, pw, W).copy_(x.permute({0, 2, 3, 1}));
  return xp;
}

}  // namespace

bool worthwhile(const Geom& g) {
  // Runs shorter than two 8-float vectors leave the accumulators mostly idle
  // (3-channel first layers): the dense GEMM formulation wins there.
  return g.seglen() >= 16;
}

namespace {
// Nonzeros of one pooled position; marks their channels in u. One lane
// width (int32 flags) and no branches, so the channel loop vectorizes.
template <typename A, typename Val>
CNNVIS_ALWAYS_INLINE int32_t survey_position(const Val& val, int64_t base, int64_t C,
                                             int32_t* CNNVIS_RESTRICT u) {
  int32_t k = 0;
  CNNVIS_IVDEP
  for (int64_t c = 0; c < C; ++c) {
    const int32_t nz = val(base + c) != A(0);
    k += nz;
    u[c] |= nz;
  }
  return k;
}
}  // namespace

Survey survey(const Geom& g, Values mode, const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ac = a.contiguous(kCL);
  const at::Tensor bc = b.defined() ? b.contiguous(kCL) : at::Tensor();
  const int64_t positions = g.n * g.PH * g.PW, C = g.c;
  Survey sv;
  sv.nonzero.assign(positions, 0);
  sv.used.assign(C, 0);
  std::atomic<int64_t> nnz{0};
  std::mutex mu;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "switch_sparse::survey", [&] {
    using A = scalar_t;
    with_values<A>(mode, ac, bc, [&](const auto& val) {
      at::parallel_for(0, positions, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)),
                       [&](int64_t begin, int64_t end) {
        std::vector<int32_t> u(C, 0);
        int64_t cnt = 0;
        uint8_t* flags = sv.nonzero.data();
        for (int64_t q = begin; q < end; ++q) {
          const int32_t k = survey_position<A>(val, q * C, C, u.data());
          flags[q] = k > 0;
          cnt += k;
        }
        nnz += cnt;
        std::lock_guard<std::mutex> lock(mu);
        for (int64_t c = 0; c < C; ++c) sv.used[c] |= static_cast<uint8_t>(u[c] != 0);
      });
    });
  });
  sv.nnz = nnz;
  return sv;
}

at::Tensor scatter(const Geom& g, Values mode, const at::Tensor& a, const at::Tensor& b,
                   const at::Tensor& switches, const at::Tensor& weight, const Survey* known) {
  const at::Tensor ac = a.contiguous(kCL);
  const at::Tensor bc = b.defined() ? b.contiguous(kCL) : at::Tensor();
  const Survey sv = known ? Survey() : survey(g, mode, ac, bc);
  const Survey& svr = known ? *known : sv;
  const at::Tensor sc = switches.defined() ? switches.contiguous(kCL) : at::Tensor();
  // NHWC, i.e. the (N, C_in, H, W) result in channels-last; the taps that
  // fall in the padding are clipped, so no padded buffer or crop copy.
  at::Tensor outp = at::zeros({g.n, g.H, g.W, g.ci}, a.options());
  std::atomic<bool> bad{false};
  const int64_t threads = at::get_num_threads();
  const int64_t bands = std::max<int64_t>(
      1, std::min<int64_t>(g.H, (4 * threads + g.n - 1) / std::max<int64_t>(1, g.n)));
  const int64_t band_h = (g.H + bands - 1) / bands;
#if CNNVIS_X86_DISPATCH
  const bool avx2 = cpu_has_avx2_fma();
#endif
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "switch_sparse::scatter", [&] {
    using A = scalar_t;
    const uint8_t* sp = sc.defined() ? sc.const_data_ptr<uint8_t>() : nullptr;
    A* op = outp.mutable_data_ptr<A>();
    with_values<A>(mode, ac, bc, [&](const auto& val) {
      using Val = std::decay_t<decltype(val)>;
      const std::vector<uint8_t>& used = svr.used;
      const uint8_t* nzp = svr.nonzero.data();
      std::vector<int64_t> sel;
      for (int64_t c = 0; c < g.c; ++c)
        if (used[c]) sel.push_back(c);
      const bool all = static_cast<int64_t>(sel.size()) == g.c;
      const at::Tensor wsel =
          all ? weight
              : weight.index_select(0, at::tensor(sel, at::TensorOptions().dtype(at::kLong)));
      const at::Tensor wt = wsel.permute({0, 2, 3, 1}).contiguous();  // (C_used, kH, kW, C_in)
      const A* wp = wt.const_data_ptr<A>();
      const int64_t wrow = g.kh * g.kw * g.ci;
      std::vector<const A*> wrows(g.c, nullptr);
      for (size_t k = 0; k < sel.size(); ++k) wrows[sel[k]] = wp + static_cast<int64_t>(k) * wrow;
      const A* const* wr = wrows.data();
      at::parallel_for(0, g.n * bands, 1, [&](int64_t begin, int64_t end) {
        Scratch<A> scratch(g);
        for (int64_t item = begin; item < end && !bad; ++item) {
          const int64_t n = item / bands, band = item % bands;
          const int64_t r0 = band * band_h, r1 = std::min(g.H, r0 + band_h);
#if CNNVIS_X86_DISPATCH
          if (avx2) {
            scatter_avx2<A, Val>(g, val, sp, wr, nzp, op, n, r0, r1, scratch, bad);
            continue;
          }
#endif
          scatter_generic<A, Val>(g, val, sp, wr, nzp, op, n, r0, r1, scratch, bad);
        }
      });
    });
  });
  if (bad) bad_switch();
  return outp.permute({0, 3, 1, 2});
}

at::Tensor correlate(const Geom& g, Values mode, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& switches, const at::Tensor& xin) {
  const at::Tensor ac = a.contiguous(kCL);
  const at::Tensor bc = b.defined() ? b.contiguous(kCL) : at::Tensor();
  const at::Tensor sc = switches.defined() ? switches.contiguous(kCL) : at::Tensor();
  const at::Tensor xp = padded_nhwc(xin, g.pad_h, g.pad_w);
  at::Tensor gw = at::zeros({g.c, g.kh, g.kw, g.ci}, a.options());
  std::atomic<bool> bad{false};
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(g.c, 2 * threads));
  const int64_t per = (g.c + blocks - 1) / blocks;
#if CNNVIS_X86_DISPATCH
  const bool avx2 = cpu_has_avx2_fma();
#endif
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "switch_sparse::correlate", [&] {
    using A = scalar_t;
    const uint8_t* sp = sc.defined() ? sc.const_data_ptr<uint8_t>() : nullptr;
    const A* xpp = xp.const_data_ptr<A>();
    A* gp = gw.mutable_data_ptr<A>();
    with_values<A>(mode, ac, bc, [&](const auto& val) {
      using Val = std::decay_t<decltype(val)>;
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end && !bad; ++blk) {
          const int64_t c0 = blk * per, c1 = std::min(g.c, c0 + per);
          if (c0 >= c1) continue;
#if CNNVIS_X86_DISPATCH
          if (avx2) {
            correlate_avx2<A, Val>(g, val, sp, xpp, gp, c0, c1, bad);
            continue;
          }
#endif
          correlate_generic<A, Val>(g, val, sp, xpp, gp, c0, c1, bad);
        }
      });
    });
  });
  if (bad) bad_switch();
  return gw.permute({0, 3, 1, 2}).contiguous();
}

}  // namespace switch_sparse
}  // namespace cnnvis
