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
#include <type_traits>
#include <vector>

#include "../macros.h"
#include "../pool_window.h"
#include "../unpool_conv_transpose_common.h"
#include "isa.h"

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

// GCC vector types of VB bytes (32: AVX2, 64: AVX-512; the generic copy
// lowers them to what the target has).
template <typename A, int VB>
struct VecU {
  typedef A type __attribute__((vector_size(VB), aligned(sizeof(A)), may_alias));
  static constexpr int lanes = VB / static_cast<int>(sizeof(A));
};

// One pass of acc_rows: vectors [t, t + U * L) of NO output runs,
// o[i] += sum_j v[i][j] * rows[j][off + t, ...), with the rows taken S at a
// time into S accumulator sets (NO * S * U independent FMA chains: the
// FMA latency needs about eight). Each loaded row vector feeds all NO
// outputs. PF: software prefetch of the rows kAhead entries ahead (they are
// scattered over the panel).
constexpr int64_t kAhead = 4;  // software prefetch distance, in entries

template <typename A, int VB, int NO, int U, int S, bool PF>
CNNVIS_ALWAYS_INLINE void acc_pass(A* const* o, const A* const* rows, int64_t off,
                                   const A* const* v, int64_t m, int64_t t) {
  using V = typename VecU<A, VB>::type;
  constexpr int L = VecU<A, VB>::lanes;
  V acc[NO][S][U];
  for (int i = 0; i < NO; ++i)
    for (int s = 0; s < S; ++s)
      for (int u = 0; u < U; ++u) {
        if (s == 0)
          std::memcpy(&acc[i][0][u], o[i] + t + u * L, sizeof(V));
        else
          acc[i][s][u] = V{};
      }
  int64_t j = 0;
  for (; j + S <= m; j += S) {
    if (PF && j + kAhead + S - 1 < m)
      for (int s = 0; s < S; ++s) {
        const A* rn = rows[j + kAhead + s] + off + t;
        for (int u = 0; u < U * L; u += 64 / static_cast<int>(sizeof(A))) __builtin_prefetch(rn + u);
      }
    for (int s = 0; s < S; ++s) {
      const A* r = rows[j + s] + off + t;
      for (int u = 0; u < U; ++u) {
        V b;
        std::memcpy(&b, r + u * L, sizeof(V));
        for (int i = 0; i < NO; ++i) acc[i][s][u] += v[i][j + s] * b;
      }
    }
  }
  for (; j < m; ++j) {
    const A* r = rows[j] + off + t;
    for (int u = 0; u < U; ++u) {
      V b;
      std::memcpy(&b, r + u * L, sizeof(V));
      for (int i = 0; i < NO; ++i) acc[i][0][u] += v[i][j] * b;
    }
  }
  for (int i = 0; i < NO; ++i)
    for (int u = 0; u < U; ++u) {
      V a = acc[i][0][u];
      for (int s = 1; s < S; ++s) a += acc[i][s][u];
      std::memcpy(o[i] + t + u * L, &a, sizeof(V));
    }
}

// o[i][0, len) += sum_j v[i][j] * rows[j][off, off + len) for NO (1 or 2)
// outputs that share the rows (two pooled positions' nonzeros of the same
// channels: each row vector is loaded once for both). Passes of 8, 4, 2 and
// 1 vectors, each with about eight accumulator chains; scalars last.
// Over: the rows may be read up to one vector past off + len (the padded
// filter panels), so the last partial vector is computed as a whole one
// and only its first lanes are added; otherwise those values go one by one.
// pf: prefetch the rows in the wide passes (worth it where the rows come
// from L2; where they sit in L1 the prefetches only take load slots).
template <typename A, int VB, int NO, bool Over = false>
CNNVIS_ALWAYS_INLINE void acc_rows(A* const* o, const A* const* rows, int64_t off,
                                   const A* const* v, int64_t m, int64_t len, bool pf) {
  constexpr int L = VecU<A, VB>::lanes;
  int64_t t = 0;
  for (; t + 8 * L <= len; t += 8 * L) {
    if (pf)
      acc_pass<A, VB, NO, 8, 1, true>(o, rows, off, v, m, t);
    else
      acc_pass<A, VB, NO, 8, 1, false>(o, rows, off, v, m, t);
  }
  for (; t + 4 * L <= len; t += 4 * L) {
    if (pf)
      acc_pass<A, VB, NO, 4, 3 - NO, true>(o, rows, off, v, m, t);
    else
      acc_pass<A, VB, NO, 4, 3 - NO, false>(o, rows, off, v, m, t);
  }
  for (; t + 2 * L <= len; t += 2 * L) acc_pass<A, VB, NO, 2, 4 / NO, false>(o, rows, off, v, m, t);
  for (; t + L <= len; t += L) acc_pass<A, VB, NO, 1, 2 * NO, false>(o, rows, off, v, m, t);
  if (t == len) return;
  if (Over) {
    A part[NO][L] = {};
    A* p[NO];
    for (int i = 0; i < NO; ++i) p[i] = part[i];
    acc_pass<A, VB, NO, 1, 2 * NO, false>(p, rows, off + t, v, m, 0);
    for (int i = 0; i < NO; ++i)
      for (int64_t k = 0; t + k < len; ++k) o[i][t + k] += part[i][k];
    return;
  }
  for (; t < len; ++t)
    for (int i = 0; i < NO; ++i) {
      A a = o[i][t];
      for (int64_t j = 0; j < m; ++j) a += v[i][j] * rows[j][off + t];
      o[i][t] = a;
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
constexpr int64_t kChunkBytes = 1024;     // scatter run chunk: 256 floats, 128 doubles
constexpr int64_t kCorrelateChunkBytes = 512;  // correlate run chunk
constexpr int64_t kBandPositions = 64;    // pooled positions per band, at least
constexpr int64_t kL1PanelBytes = 32 * 1024;  // a panel this size stays in L1 (no prefetch)
constexpr int64_t kSplitChannels = 128;  // input channels per chunk, at least, in the channel split

inline int64_t band_rows(const Geom& g) {
  const int64_t pw = std::max<int64_t>(1, g.pool.out_w);
  return std::max<int64_t>(1, (kBandPositions + g.pool.out_w - 1) / pw);
}

// The nonzeros of one pooled row (n, ph), grouped by (position, switch):
// entries (panel row of the channel, value), and per group its target
// (gy, gx) in the conv output, first entry and count. A pair group holds
// the channels that are nonzero at two neighbouring positions, with given
// switches at both: a second target (gy2, gx2; gy2 < 0 for a single group)
// and the second position's values in vals2, so that its product loads each
// filter row once for both targets.
template <typename A>
struct RowGroups {
  std::vector<const A*> rows;
  std::vector<A> vals, vals2;
  std::vector<int32_t> gy, gx, gy2, gx2, gj, gm;
  void clear() {  // keeps the capacity, for reuse
    rows.clear(), vals.clear(), vals2.clear();
    for (auto* v : {&gy, &gx, &gy2, &gx2, &gj, &gm}) v->clear();
  }
};

// Positions are paired when both hold at least kPairEntries * K^2 nonzeros
// (K switch slots): a pair group then has about kPairEntries entries, enough
// to amortize loading and storing two output runs instead of one.
constexpr int64_t kPairEntries = 8;
constexpr int64_t kPairMaxSlots = 16;

// Per-thread temporaries of the grouping.
struct Scratch {
  std::vector<int32_t> c, key, cnt, start;
  std::vector<int32_t> slot_c;  // add_position_avx512: per slot, channels
  std::vector<float> slot_v;    // and values (K regions of C + 16)
  explicit Scratch(const Geom& g)
      : c(g.c), key(g.c), cnt(buckets(g) + 1), start(buckets(g) + 1) {}
  static int64_t buckets(const Geom& g) {
    const int64_t K = g.pool.area();
    return K <= kPairMaxSlots ? (K + 1) * (K + 1) : K;
  }
};

// Pair partners are pair_distance(g) positions apart in a pooled row: the
// least distance at which the output runs of the two targets cannot
// overlap when they fall in one output row (a pair's product holds both
// runs in registers at once). 0: no pairs (more than kPairMaxSlots slots,
// or no such distance nearby).
inline int64_t pair_distance(const Geom& g) {
  if (g.pool.area() > kPairMaxSlots) return 0;
  const int64_t span = (g.kw - 1) * g.dw + 1;  // output columns of one run
  for (int64_t d = 1; d <= 8; ++d)
    if ((d * g.pool.sw - g.pool.kw + 1) * g.sw >= span) return d;
  return 0;
}

// Whether pooled positions (ph, pw) and (ph, pw + d) of image n are grouped
// as a pair (see kPairEntries).
inline bool pairs_at(const Geom& g, const int32_t* count, int64_t n, int64_t ph, int64_t pw,
                     int64_t d) {
  const int64_t K = g.pool.area();
  if (d == 0 || pw + d >= g.pool.out_w) return false;
  const int64_t q = (n * g.pool.out_h + ph) * g.pool.out_w + pw, need = kPairEntries * K * K;
  return count[q] >= need && count[q + d] >= need;
}

#if CNNVIS_X86_DISPATCH
// add_position for one float position with AVX-512 (at most kPairMaxSlots
// slots): per 16 channels, the nonzero lanes of each switch slot are
// compressed into that slot's list (register compress, full-vector store),
// so no histogram or per-entry scatter through memory.
template <typename Val>
CNNVIS_TARGET_AVX512 __attribute__((noinline)) bool add_position_avx512(
    const Geom& g, const Val& val, const uint8_t* sw, const float* const* wrows, int64_t ph,
    int64_t pw, int64_t base, Scratch& sc, std::vector<float>& v, RowGroups<float>& rg) {
  const int64_t C = g.c, K = g.pool.area(), stride = C + 16;
  if (static_cast<int64_t>(sc.slot_c.size()) < K * stride) {
    sc.slot_c.resize(K * stride);
    sc.slot_v.resize(K * stride);
  }
  float* CNNVIS_RESTRICT xv = v.data();
  CNNVIS_IVDEP
  for (int64_t c = 0; c < C; ++c) xv[c] = val(base + c);
  int32_t cnt[kPairMaxSlots] = {};
  __mmask16 bad = 0;
  const __m512i kv = _mm512_set1_epi32(static_cast<int32_t>(K));
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const int64_t nl = std::min<int64_t>(16, C - c0);
    const __mmask16 lane = nl == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nl) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(lane, xv + c0);
    // Unordered compare: a NaN counts as a nonzero, as everywhere else.
    const __mmask16 nz = _mm512_mask_cmp_ps_mask(lane, x, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    if (nz == 0) continue;
    __m512i sv = _mm512_setzero_si512();
    if (sw && nl == 16) {
      sv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sw + base + c0)));
    } else if (sw) {  // the last, partial 16 channels
      alignas(16) uint8_t b[16] = {};
      std::memcpy(b, sw + base + c0, static_cast<size_t>(nl));
      sv = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(b)));
    }
    bad |= _mm512_mask_cmpge_epi32_mask(nz, sv, kv);
    const __m512i ci = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(c0)), iota);
    for (int64_t k = 0; k < K; ++k) {
      const __mmask16 mk = _mm512_mask_cmpeq_epi32_mask(nz, sv, _mm512_set1_epi32(static_cast<int32_t>(k)));
      if (mk == 0) continue;
      _mm512_storeu_si512(sc.slot_c.data() + k * stride + cnt[k], _mm512_maskz_compress_epi32(mk, ci));
      _mm512_storeu_ps(sc.slot_v.data() + k * stride + cnt[k], _mm512_maskz_compress_ps(mk, x));
      cnt[k] += __builtin_popcount(static_cast<unsigned>(mk));
    }
  }
  if (bad) return false;
  for (int64_t k = 0; k < K; ++k) {
    if (cnt[k] == 0) continue;
    int64_t y, x;
    if (!g.pool.switch_position(ph, pw, k, &y, &x)) return false;
    const int64_t e0 = static_cast<int64_t>(rg.rows.size());
    rg.gy.push_back(static_cast<int32_t>(y));
    rg.gx.push_back(static_cast<int32_t>(x));
    rg.gy2.push_back(-1);
    rg.gx2.push_back(-1);
    rg.gj.push_back(static_cast<int32_t>(e0));
    rg.gm.push_back(cnt[k]);
    rg.rows.resize(e0 + cnt[k]);
    rg.vals.resize(e0 + cnt[k]);
    const float** CNNVIS_RESTRICT rp = rg.rows.data() + e0;
    const int32_t* CNNVIS_RESTRICT sc_c = sc.slot_c.data() + k * stride;
    for (int64_t j = 0; j < cnt[k]; ++j) rp[j] = wrows[sc_c[j]];
    std::memcpy(rg.vals.data() + e0, sc.slot_v.data() + k * stride, cnt[k] * sizeof(float));
  }
  return true;
}
#endif

// Appends the groups of pooled position (ph, pw) of image n, or of the pair
// (ph, pw), (ph, pw + d) when d > 0, to rg: the channels with a nonzero
// value, counting-sorted by switch (by the pair of switches, K standing for
// "zero here"; a channel nonzero at one position only makes a single group
// of that position). False on a bad switch. Avx512: float positions go through
// add_position_avx512.
template <typename A, typename Val, bool Avx512 = false>
CNNVIS_ALWAYS_INLINE bool add_position(const Geom& g, const Val& val, const uint8_t* sw,
                                       const A* const* wrows, const int32_t* count, int64_t n,
                                       int64_t ph, int64_t pw, int64_t d, Scratch& sc,
                                       std::vector<A>& v, std::vector<A>& v2, RowGroups<A>& rg) {
  const int64_t C = g.c, K = g.pool.area();
  const int64_t q = (n * g.pool.out_h + ph) * g.pool.out_w + pw, base = q * C, base2 = base + d * C;
  const int np = d > 0 ? 2 : 1;
  if (np == 1 && count[q] == 0) return true;
#if CNNVIS_X86_DISPATCH
  if constexpr (Avx512 && std::is_same<A, float>::value) {
    if (np == 1 && K <= kPairMaxSlots)
      return add_position_avx512(g, val, sw, wrows, ph, pw, base, sc, v, rg);
  }
#endif
  const int64_t nb = np == 2 ? (K + 1) * (K + 1) : K;
  // Branch-free compaction of the nonzeros (every channel is written at
  // slot m, which only advances past a nonzero).
  int32_t* CNNVIS_RESTRICT cc = sc.c.data();
  int32_t* CNNVIS_RESTRICT kk = sc.key.data();
  A* CNNVIS_RESTRICT vv = v.data();
  A* CNNVIS_RESTRICT vv2 = v2.data();
  int64_t m = 0;
  int32_t bad = 0;
  if (np == 1) {
    for (int64_t c = 0; c < C; ++c) {
      const A x = val(base + c);
      const int32_t h = x != A(0);
      const int32_t k = sw ? sw[base + c] : 0;
      bad |= h & (k >= K);
      cc[m] = static_cast<int32_t>(c);
      kk[m] = k;
      vv[m] = x;
      m += h;
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const A x = val(base + c), x2 = val(base2 + c);
      const int32_t h = x != A(0), h2 = x2 != A(0);
      const int32_t s1 = sw ? sw[base + c] : 0, s2 = sw ? sw[base2 + c] : 0;
      bad |= (h & (s1 >= K)) | (h2 & (s2 >= K));
      const int32_t k = h ? s1 : static_cast<int32_t>(K), k2 = h2 ? s2 : static_cast<int32_t>(K);
      cc[m] = static_cast<int32_t>(c);
      kk[m] = k * static_cast<int32_t>(K + 1) + k2;
      vv[m] = x;
      vv2[m] = x2;
      m += h | h2;
    }
  }
  if (bad) return false;
  std::fill(sc.cnt.begin(), sc.cnt.begin() + nb, 0);
  for (int64_t j = 0; j < m; ++j) ++sc.cnt[sc.key[j]];
  const int64_t e0 = static_cast<int64_t>(rg.rows.size());
  int32_t acc = 0;
  for (int64_t b = 0; b < nb; ++b) {
    sc.start[b] = acc;
    if (sc.cnt[b] > 0) {
      // Slot k at (ph, pw) (K: none), slot k2 at (ph, pw + d) (K: none).
      const int64_t k = np == 2 ? b / (K + 1) : b, k2 = np == 2 ? b % (K + 1) : K;
      int64_t y = -1, x = -1, y2 = -1, x2 = -1;
      if (k < K && !g.pool.switch_position(ph, pw, k, &y, &x)) return false;
      if (k2 < K && !g.pool.switch_position(ph, pw + d, k2, &y2, &x2)) return false;
      if (k == K) std::swap(y, y2), std::swap(x, x2);  // a single group of the second position
      rg.gy.push_back(static_cast<int32_t>(y));
      rg.gx.push_back(static_cast<int32_t>(x));
      rg.gy2.push_back(static_cast<int32_t>(y2));
      rg.gx2.push_back(static_cast<int32_t>(x2));
      rg.gj.push_back(static_cast<int32_t>(e0 + acc));
      rg.gm.push_back(sc.cnt[b]);
    }
    acc += sc.cnt[b];
  }
  rg.rows.resize(e0 + m);
  rg.vals.resize(e0 + m);
  if (np == 2) rg.vals2.resize(e0 + m);
  const A** CNNVIS_RESTRICT rp = rg.rows.data() + e0;
  A* CNNVIS_RESTRICT vp = rg.vals.data() + e0;
  int32_t* CNNVIS_RESTRICT st = sc.start.data();
  if (np == 1) {
    for (int64_t j = 0; j < m; ++j) {
      const int64_t pos = st[kk[j]]++;
      rp[pos] = wrows[cc[j]];
      vp[pos] = vv[j];
    }
    return true;
  }
  A* CNNVIS_RESTRICT vp2 = rg.vals2.data() + e0;
  for (int64_t j = 0; j < m; ++j) {
    const int32_t b = kk[j];
    const int64_t pos = st[b]++;
    rp[pos] = wrows[cc[j]];
    // A single group of the second position keeps its values in vals.
    vp[pos] = b / (K + 1) < K ? vv[j] : vv2[j];
    vp2[pos] = vv2[j];
  }
  return true;
}

// Per-thread state of the grouping, and the grouping of one pooled row
// (n, ph) into rr: pairs (pw, pw + d) taken greedily from the left where
// pairs_at says so, then add_position per position or pair (add_position<
// ..., true> where `avx512`). False on a bad switch.
template <typename A>
struct Grouper {
  Scratch scratch;
  std::vector<A> v, v2;
  std::vector<int64_t> partner;
  std::vector<uint8_t> taken;
  int64_t K, dist;
  explicit Grouper(const Geom& g)
      : scratch(g), v(g.c), v2(g.c), partner(g.pool.out_w), taken(g.pool.out_w), K(g.pool.area()),
        dist(pair_distance(g)) {}

  template <typename Val>
  bool row(const Geom& g, const Val& val, const uint8_t* sw, const A* const* wrows,
           const int32_t* count, bool avx512, int64_t n, int64_t ph, RowGroups<A>& rr) {
    const int32_t* cnt = count + (n * g.pool.out_h + ph) * g.pool.out_w;
    // Reservations: entries (at most the nonzeros) and groups (at most
    // min(nonzeros, buckets) per position or pair).
    std::fill(partner.begin(), partner.end(), int64_t{0});
    std::fill(taken.begin(), taken.end(), uint8_t{0});
    int64_t m = 0, k = 0;
    for (int64_t pw = 0; pw < g.pool.out_w; ++pw) {
      if (taken[pw]) continue;
      if (pairs_at(g, count, n, ph, pw, dist)) {
        partner[pw] = dist;
        taken[pw + dist] = 1;
        const int64_t c2 = cnt[pw] + cnt[pw + dist];
        m += c2;
        k += std::min<int64_t>(c2, (K + 1) * (K + 1));
      } else {
        m += cnt[pw];
        k += std::min<int64_t>(cnt[pw], K);
      }
    }
    rr.rows.reserve(m);
    rr.vals.reserve(m);
    for (auto* x : {&rr.gy, &rr.gx, &rr.gy2, &rr.gx2, &rr.gj, &rr.gm}) x->reserve(k);
    for (int64_t pw = 0; pw < g.pool.out_w; ++pw) {
      if (taken[pw]) continue;
      if (partner[pw] > 0 && rr.vals2.capacity() < static_cast<size_t>(m)) rr.vals2.reserve(m);
      const bool ok =
          avx512 ? add_position<A, Val, true>(g, val, sw, wrows, count, n, ph, pw, partner[pw],
                                              scratch, v, v2, rr)
                 : add_position<A, Val, false>(g, val, sw, wrows, count, n, ph, pw, partner[pw],
                                               scratch, v, v2, rr);
      if (!ok) return false;
    }
    return true;
  }
};

// The filters as panels: the runs of every filter row cut into chunks of
// `chunk` values, and chunk tc of run ks of every used channel u stored
// together, (runs, nch, used, chunk), zero-padded: while the groups of a band
// use one chunk, its panel (used * chunk values) is what they read, sized to
// stay in L1 when the band reuses each filter often (dense maps). The row of
// channel u is wpack + u * chunk, and chunk (ks, tc) lies `offset` further.
// In column mode (runs shorter than two vectors: few input channels) the
// whole filter (kH, kW, C_in) is one run: a group's product is one column,
// added into the output's kH x kW neighbourhood afterwards. With per-tap
// runs (`tap`: the channel split of few wide images) every tap is a run of
// C_in values, so that chunk tc covers the same input channels in every
// run and a task that owns those channels owns its outputs.
struct Panels {
  int64_t chunk, nch, used;
  bool col;
  bool tap = false;
  int64_t runs(const Geom& g) const { return col ? 1 : g.kh * nseg(g); }
  int64_t len(const Geom& g) const { return col ? g.kh * g.kw * g.ci : (tap ? g.ci : g.seglen()); }
  int64_t nseg(const Geom& g) const { return tap ? g.kw : g.nseg(); }
  int64_t offset(int64_t ks, int64_t tc) const { return (ks * nch + tc) * used * chunk; }
};

// The pooled rows [*plo, *phi] whose nonzeros can reach output rows [r0, r1):
// conv rows y with [y*sh - pad_h, y*sh - pad_h + span] meeting [r0, r1),
// then the pooled rows whose windows hold such a y. False when none.
inline bool pooled_rows_for(const Geom& g, int64_t r0, int64_t r1, int64_t* plo, int64_t* phi) {
  const int64_t span = (g.kh - 1) * g.dh;
  const int64_t ylo =
      std::max<int64_t>(0, floor_div(r0 + g.pad_h - span + g.sh - 1, g.sh));
  const int64_t yhi = std::min<int64_t>(g.pool.in_h - 1, floor_div(r1 - 1 + g.pad_h, g.sh));
  if (ylo > yhi) return false;
  *plo = std::max<int64_t>(0, floor_div(ylo + g.pool.ph - g.pool.kh + g.pool.sh, g.pool.sh));
  *phi = std::min<int64_t>(g.pool.out_h - 1, floor_div(yhi + g.pool.ph, g.pool.sh));
  return *plo <= *phi;
}

// Scatter task: the rows [r0, r1) of the output of image n, the run chunks
// [tc0, tc1) only, from the groups of its pooled rows (rows: one per ph);
// outp: (N, H, W, C_in).
template <typename A, int VB>
CNNVIS_ALWAYS_INLINE void scatter_task(const Geom& g, const RowGroups<A>* rows, const Panels& pn,
                                       A* outp, int64_t n, int64_t r0, int64_t r1, int64_t tc0,
                                       int64_t tc1) {
  int64_t plo, phi;
  if (!pooled_rows_for(g, r0, r1, &plo, &phi)) return;
  const int64_t ci = g.ci, chunk = pn.chunk;
  const int64_t nseg = pn.nseg(g), len = pn.len(g);
  // The panel of one chunk (what a chunk's groups read) in L1 or not.
  const bool pf = pn.used * chunk * static_cast<int64_t>(sizeof(A)) > kL1PanelBytes;
  for (int64_t kh = 0; kh < g.kh; ++kh)
    for (int64_t seg = 0; seg < nseg; ++seg)
      for (int64_t tc = tc0, t0 = tc0 * chunk; tc < tc1 && t0 < len; t0 += chunk, ++tc) {
        const int64_t t1 = std::min(len, t0 + chunk);
        const int64_t base = pn.offset(kh * nseg + seg, tc) - t0;
        for (int64_t ph = plo; ph <= phi; ++ph) {
          const RowGroups<A>& r = rows[ph];
          const int64_t ng = static_cast<int64_t>(r.gy.size());
          for (int64_t q = 0; q < ng; ++q) {
            // The part [a, b) of the chunk that lands inside the band's rows
            // and the map's columns for the target (y, x); false if none.
            auto clip = [&](int64_t y, int64_t x, A** o, int64_t* a, int64_t* b) {
              const int64_t iy = y * g.sh - g.pad_h + kh * g.dh;
              if (iy < r0 || iy >= r1) return false;
              // Taps [kw_lo, kw_hi) of one run of kW*C_in values, or one tap.
              const int64_t ix0 = x * g.sw - g.pad_w + seg * g.dw;
              int64_t lo, hi;
              if (nseg == 1) {
                lo = std::max<int64_t>(0, -ix0) * ci;
                hi = std::min<int64_t>(g.kw, g.W - ix0) * ci;
              } else {
                lo = 0;
                hi = (ix0 >= 0 && ix0 < g.W) ? ci : 0;
              }
              *a = std::max(t0, lo), *b = std::min(t1, hi);
              if (*a >= *b) return false;
              *o = outp + ((n * g.H + iy) * g.W + ix0) * ci + *a;  // a >= lo: inside the row
              return true;
            };
            const A* const* er = r.rows.data() + r.gj[q];
            const int64_t em = r.gm[q];
            A* o[2];
            int64_t a, b, a2, b2;
            const bool in = clip(r.gy[q], r.gx[q], &o[0], &a, &b);
            if (r.gy2[q] < 0) {
              if (in) {
                const A* v = r.vals.data() + r.gj[q];
                acc_rows<A, VB, 1, true>(o, er, base + a, &v, em, b - a, pf);
              }
              continue;
            }
            const bool in2 = clip(r.gy2[q], r.gx2[q], &o[1], &a2, &b2);
            const A* v[2] = {r.vals.data() + r.gj[q], r.vals2.data() + r.gj[q]};
            // Both runs at once when they are the same part of the chunk and
            // cannot overlap (pair_distance makes that the rule).
            if (in && in2 && a == a2 && b == b2 &&
                (o[1] - o[0] >= b - a || o[0] - o[1] >= b - a)) {
              acc_rows<A, VB, 2, true>(o, er, base + a, v, em, b - a, pf);
              continue;
            }
            // One target outside the band or clipped differently (map edges).
            if (in) acc_rows<A, VB, 1, true>(o, er, base + a, v, em, b - a, pf);
            if (in2) acc_rows<A, VB, 1, true>(o + 1, er, base + a2, v + 1, em, b2 - a2, pf);
          }
        }
      }
}

// Adds one column (a filter-shaped (kH, kW, C_in) product) into the
// output's kH x kW neighbourhood of conv position (y, x) of image n, the
// rows inside [r0, r1) and the columns inside the map: with dilation_w 1 the
// taps of a filter row are one contiguous run in both.
template <typename A>
CNNVIS_ALWAYS_INLINE void add_column(const Geom& g, const A* CNNVIS_RESTRICT col, int64_t y,
                                     int64_t x, int64_t n, int64_t r0, int64_t r1,
                                     A* CNNVIS_RESTRICT outp) {
  const int64_t ci = g.ci, iy0 = y * g.sh - g.pad_h, ix0 = x * g.sw - g.pad_w;
  for (int64_t kh = 0; kh < g.kh; ++kh) {
    const int64_t iy = iy0 + kh * g.dh;
    if (iy < r0 || iy >= r1) continue;
    A* orow = outp + (n * g.H + iy) * g.W * ci;
    const A* crow = col + kh * g.kw * ci;
    if (g.dw == 1) {
      const int64_t kw0 = std::max<int64_t>(0, -ix0), kw1 = std::min<int64_t>(g.kw, g.W - ix0);
      A* o = orow + (ix0 + kw0) * ci;
      const A* c = crow + kw0 * ci;
      for (int64_t t = 0; t < (kw1 - kw0) * ci; ++t) o[t] += c[t];
      continue;
    }
    for (int64_t kw = 0; kw < g.kw; ++kw) {
      const int64_t ix = ix0 + kw * g.dw;
      if (ix < 0 || ix >= g.W) continue;
      for (int64_t t = 0; t < ci; ++t) orow[ix * ci + t] += crow[kw * ci + t];
    }
  }
}

// Calls pos(ph, pw, base) for every pooled position (ph, pw) of image n that
// holds a nonzero and whose nonzeros can reach output rows [r0, r1), base
// the offset of its channel 0 in the pooled maps (NHWC); false as soon as
// pos returns false (a bad switch).
template <typename F>
CNNVIS_ALWAYS_INLINE bool for_each_column_position(const Geom& g, const int32_t* count, int64_t n,
                                                   int64_t r0, int64_t r1, F&& pos) {
  int64_t plo, phi;
  if (!pooled_rows_for(g, r0, r1, &plo, &phi)) return true;
  for (int64_t ph = plo; ph <= phi; ++ph)
    for (int64_t pw = 0; pw < g.pool.out_w; ++pw) {
      const int64_t q = (n * g.pool.out_h + ph) * g.pool.out_w + pw;
      if (count[q] != 0 && !pos(ph, pw, q * g.c)) return false;
    }
  return true;
}

// Column task (column mode: few input channels, so a filter is a few
// vectors): the rows [r0, r1) of the output of image n, straight from the
// pooled values, position by position; then each column is added into the
// output's kH x kW neighbourhood of its target, the rows inside [r0, r1)
// only. False on a bad switch. Two formulations:
//   K = 0: every nonzero adds value * filter into the column of its switch
//     (cols: one column of pn.chunk values per switch slot, in L1), without
//     grouping; hit marks the slots that got one.
//   K (1 or 4) switch slots and columns of NV vectors, for dense positions:
//     instead of adding each nonzero into the column of its switch (a
//     dependency through memory per nonzero), every channel adds into all K
//     columns, masked (vk: the channel's value where its switch is k, else
//     0), so the K * NV accumulators stay in registers and the loop has no
//     data-dependent branch: K times the multiply-adds of the nonzeros, at
//     the FMA units' rate. vk: (K + 2) * C scratch; wrows: every channel's
//     row.
template <typename A, typename Val, int VB, int K = 0, int NV = 0>
CNNVIS_ALWAYS_INLINE bool column_task(const Geom& g, const Val& val, const uint8_t* sw,
                                      const A* const* wrows, const Panels& pn,
                                      const int32_t* count, A* outp, int64_t n, int64_t r0,
                                      int64_t r1, A* cols, uint8_t* hit, A* vk) {
  using V = typename VecU<A, VB>::type;
  constexpr int L = VecU<A, VB>::lanes;
  const int64_t C = g.c, area = g.pool.area(), lenp = pn.chunk;
  return for_each_column_position(
      g, count, n, r0, r1, [&](int64_t ph, int64_t pw, int64_t base) CNNVIS_INLINE_LAMBDA {
        if constexpr (K == 0) {
          std::fill(cols, cols + area * lenp, A(0));
          std::fill(hit, hit + area, uint8_t(0));
          for (int64_t c = 0; c < C; ++c) {
            const A v = val(base + c);
            if (v == A(0)) continue;
            const int64_t k = sw ? sw[base + c] : 0;
            if (k >= area) return false;
            hit[k] = 1;
            A* o = cols + k * lenp;
            const A* w = wrows[c];
            for (int64_t t = 0; t < lenp; t += L) {  // lenp: whole vectors (padded panels)
              V a, b;
              std::memcpy(&a, o + t, sizeof(V));
              std::memcpy(&b, w + t, sizeof(V));
              a += v * b;
              std::memcpy(o + t, &a, sizeof(V));
            }
          }
          for (int64_t k = 0; k < area; ++k) {
            if (!hit[k]) continue;
            int64_t y, x;
            if (!g.pool.switch_position(ph, pw, k, &y, &x)) return false;
            add_column(g, cols + k * lenp, y, x, n, r0, r1, outp);
          }
        } else {
          // Branch-free loops over the channels (they vectorize): the values,
          // the switches (as int32: one lane width), then one masked copy per slot.
          A* CNNVIS_RESTRICT xv = vk + K * C;
          int32_t* CNNVIS_RESTRICT sv = reinterpret_cast<int32_t*>(xv + C);
          int32_t bad = 0;
          CNNVIS_IVDEP
          for (int64_t c = 0; c < C; ++c) xv[c] = val(base + c);
          if (sw) {
            CNNVIS_IVDEP
            for (int64_t c = 0; c < C; ++c) {
              sv[c] = sw[base + c];
              bad |= sv[c] >= K;
            }
            if (bad) return false;
          } else {
            std::fill(sv, sv + C, 0);
          }
          int32_t hits[K];
          for (int k = 0; k < K; ++k) {
            A* CNNVIS_RESTRICT dst = vk + k * C;
            int32_t h = 0;
            CNNVIS_IVDEP
            for (int64_t c = 0; c < C; ++c) {
              const bool mine = sv[c] == k;
              dst[c] = mine ? xv[c] : A(0);
              h += static_cast<int32_t>(mine & (xv[c] != A(0)));
            }
            hits[k] = h;
          }
          V acc[K][NV];
          for (int k = 0; k < K; ++k)
            for (int i = 0; i < NV; ++i) acc[k][i] = V{};
          for (int64_t c = 0; c < C; ++c) {
            const A* w = wrows[c];
            V wv[NV];
            for (int i = 0; i < NV; ++i) std::memcpy(&wv[i], w + i * L, sizeof(V));
            for (int k = 0; k < K; ++k) {
              const A b = vk[k * C + c];
              for (int i = 0; i < NV; ++i) acc[k][i] += b * wv[i];
            }
          }
          for (int k = 0; k < K; ++k) {
            if (hits[k] == 0) continue;
            int64_t y, x;
            if (!g.pool.switch_position(ph, pw, k, &y, &x)) return false;
            A* col = cols + k * lenp;
            for (int i = 0; i < NV; ++i) std::memcpy(col + i * L, &acc[k][i], sizeof(V));
            add_column(g, col, y, x, n, r0, r1, outp);
          }
        }
        return true;
      });
}

// The column task for this geometry: its masked formulation where K and NV
// are instantiated (2x2 or no pooling, columns of at most 4 vectors) and
// the positions are dense enough that K masked multiply-adds per channel
// beat one per nonzero; the K = 0 formulation otherwise.
template <typename A, typename Val, int VB>
CNNVIS_ALWAYS_INLINE bool column_any(const Geom& g, const Val& val, const uint8_t* sw,
                                     const A* const* wr, const Panels& pn, const int32_t* count,
                                     A* outp, int64_t n, int64_t r0, int64_t r1, A* cols,
                                     uint8_t* hit, A* vk, bool dense) {
  constexpr int L = VecU<A, VB>::lanes;
  const int64_t K = g.pool.area(), nv = pn.chunk / L;
  if (dense && pn.chunk % L == 0) {
#define CNNVIS_COLUMN_DENSE(KK, NN) \
  if (K == KK && nv == NN)          \
    return column_task<A, Val, VB, KK, NN>(g, val, sw, wr, pn, count, outp, n, r0, r1, cols, hit, vk);
    CNNVIS_COLUMN_DENSE(4, 1)
    CNNVIS_COLUMN_DENSE(4, 2)
    CNNVIS_COLUMN_DENSE(4, 4)
    CNNVIS_COLUMN_DENSE(1, 1)
    CNNVIS_COLUMN_DENSE(1, 2)
    CNNVIS_COLUMN_DENSE(1, 4)
#undef CNNVIS_COLUMN_DENSE
  }
  return column_task<A, Val, VB>(g, val, sw, wr, pn, count, outp, n, r0, r1, cols, hit, vk);
}

// Correlate task: rows [c0, c1) of gw (C, kH, kW, C_in), from xp (N, Hp, Wp,
// C_in). Accumulates into gw (zeroed by the caller).
template <typename A, typename Val, int VB>
CNNVIS_ALWAYS_INLINE void correlate_task(const Geom& g, const Val& val, const uint8_t* sw,
                                         const A* xp, A* gw, int64_t c0, int64_t c1,
                                         std::atomic<bool>& bad) {
  const int64_t C = g.c, nb = c1 - c0;
  const int64_t wrow = g.kh * g.kw * g.ci;
  const int64_t nseg = g.nseg(), len = g.seglen();
  const int64_t chunk = kCorrelateChunkBytes / static_cast<int64_t>(sizeof(A));
  const int64_t pb = band_rows(g);
  std::vector<std::vector<const A*>> rows(nb);
  std::vector<std::vector<A>> vals(nb);
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t b0 = 0; b0 < g.pool.out_h; b0 += pb) {
      const int64_t b1 = std::min(g.pool.out_h, b0 + pb);
      for (auto& r : rows) r.clear();
      for (auto& v : vals) v.clear();
      for (int64_t ph = b0; ph < b1; ++ph) {
        for (int64_t pw = 0; pw < g.pool.out_w; ++pw) {
          const int64_t base = ((n * g.pool.out_h + ph) * g.pool.out_w + pw) * C;
          bool any = false;
          for (int64_t c = c0; c < c1; ++c) any |= val(base + c) != A(0);
          if (!any) continue;
          for (int64_t c = c0; c < c1; ++c) {
            const A v = val(base + c);
            if (v == A(0)) continue;
            int64_t y, x;
            if (!g.pool.switch_position(ph, pw, sw ? sw[base + c] : 0, &y, &x)) {
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
              A* o = gw + c * wrow + (kh * g.kw + seg) * g.ci + t0;
              const A* v = vals[c - c0].data();
              acc_rows<A, VB, 1>(&o, r.data(), xoff, &v, static_cast<int64_t>(r.size()), cl, true);
            }
          }
    }
  }
}

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// The tasks, each with a copy per instruction set (isa.h): generic
// (32-byte vector types, lowered to what the build targets), AVX2 + FMA, and
// AVX-512 (64-byte vectors: twice the multiply-adds per instruction where the
// core has full 512-bit units).
struct ScatterTask {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx512;
  template <CpuIsa I, typename A>
  static CNNVIS_ALWAYS_INLINE void run(const Geom& g, const RowGroups<A>* rows, const Panels& pn,
                                       A* outp, int64_t n, int64_t r0, int64_t r1, int64_t tc0,
                                       int64_t tc1) {
    scatter_task<A, vector_bytes(I)>(g, rows, pn, outp, n, r0, r1, tc0, tc1);
  }
};
struct ColumnTask {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx512;
  template <CpuIsa I, typename A, typename Val>
  static CNNVIS_ALWAYS_INLINE bool run(const Geom& g, const Val& val, const uint8_t* sw,
                                       const A* const* wr, const Panels& pn, const int32_t* count,
                                       A* outp, int64_t n, int64_t r0, int64_t r1, A* cols,
                                       uint8_t* hit, A* vk, bool dense) {
    return column_any<A, Val, vector_bytes(I)>(g, val, sw, wr, pn, count, outp, n, r0, r1, cols,
                                               hit, vk, dense);
  }
};
struct CorrelateTask {
  static constexpr CpuIsa kMaxIsa = CpuIsa::kAvx512;
  template <CpuIsa I, typename A, typename Val>
  static CNNVIS_ALWAYS_INLINE void run(const Geom& g, const Val& val, const uint8_t* sw,
                                       const A* xp, A* gw, int64_t c0, int64_t c1,
                                       std::atomic<bool>& bad) {
    correlate_task<A, Val, vector_bytes(I)>(g, val, sw, xp, gw, c0, c1, bad);
  }
};

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

// The panel layout of one scatter: chunks of kChunkBytes (measured: 256 to
// 2048 bytes are alike; shorter chunks spend more on the per-group calls
// than the L1-resident panels save).
// split > 0: per-tap runs cut into at least `split` chunks (the channel
// split), each of whole cache lines.
template <typename A>
Panels panels_for(const Geom& g, int64_t used, int64_t split = 0) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(A));
  Panels pn{kChunkBytes / static_cast<int64_t>(sizeof(A)), 0, used, !worthwhile(g)};
  pn.tap = split > 0 && !pn.col;
  const int64_t len = pn.len(g), padded = (len + line - 1) / line * line;
  if (pn.tap) {
    const int64_t part = (len + split - 1) / split;
    pn.chunk = std::min(pn.chunk, (part + line - 1) / line * line);
  }
  // A column is one chunk, whatever its length.
  pn.chunk = pn.col ? padded : std::min(pn.chunk, padded);
  pn.nch = (len + pn.chunk - 1) / pn.chunk;
  return pn;
}

// Packs filters sel[u] of w ((C, C_in, kH, kW), contiguous) into the panels
// of pn (zero-padded to whole chunks).
template <typename A>
at::Tensor pack_panels(const Geom& g, const Panels& pn, const at::Tensor& w,
                       const std::vector<int64_t>& sel) {
  const int64_t runs = pn.runs(g), ci = g.ci, taps = g.kh * g.kw;
  // One cache line more: acc_rows<..., Over> may read a vector past a row's end.
  at::Tensor out = at::empty({runs * pn.nch * pn.used * pn.chunk + 64 / static_cast<int64_t>(sizeof(A))},
                             w.options());
  const A* wp = w.const_data_ptr<A>();
  A* op = out.mutable_data_ptr<A>();
  std::fill(op + runs * pn.nch * pn.used * pn.chunk, op + out.numel(), A(0));
  const int64_t len = pn.len(g);
  // 64k values per task at least: small filter banks are packed by one thread.
  const int64_t grain = std::max<int64_t>(8, (int64_t{1} << 16) / std::max<int64_t>(1, ci * taps));
  at::parallel_for(0, pn.used, grain, [&](int64_t u0, int64_t u1) {
    // One filter as (kh, kw, c_in): the runs one after another (a filter
    // row of kW * C_in values, a tap of C_in with dilation_w > 1, or the
    // whole filter in column mode), then cut into the panels' chunks.
    std::vector<A> runs_buf(taps * ci);
    A* CNNVIS_RESTRICT tr = runs_buf.data();
    for (int64_t u = u0; u < u1; ++u) {
      const A* CNNVIS_RESTRICT wc = wp + sel[u] * ci * taps;  // (C_in, kH, kW)
      for (int64_t c_in = 0; c_in < ci; ++c_in)
        for (int64_t tap = 0; tap < taps; ++tap) tr[tap * ci + c_in] = wc[c_in * taps + tap];
      for (int64_t ks = 0; ks < runs; ++ks)
        for (int64_t tc = 0; tc < pn.nch; ++tc) {
          A* dst = op + pn.offset(ks, tc) + u * pn.chunk;
          const int64_t t0 = tc * pn.chunk, cnt = std::min(pn.chunk, len - t0);
          std::memcpy(dst, tr + ks * len + t0, cnt * sizeof(A));
          std::fill(dst + cnt, dst + pn.chunk, A(0));
        }
    }
  });
  return out;
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
  const int64_t positions = g.n * g.pool.out_h * g.pool.out_w, C = g.c;
  Survey sv;
  sv.count.assign(positions, 0);
  sv.used.assign(C, 0);
  std::atomic<int64_t> nnz{0};
  std::mutex mu;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "switch_sparse::survey", [&] {
    using A = scalar_t;
    with_values<A>(mode, ac, bc, [&](const auto& val) {
      // 128k values per task at least: waking the threads costs more below that.
      at::parallel_for(0, positions, std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, C)),
                       [&](int64_t begin, int64_t end) {
        std::vector<int32_t> u(C, 0);
        int64_t cnt = 0;
        int32_t* counts = sv.count.data();
        for (int64_t q = begin; q < end; ++q) {
          const int32_t k = survey_position<A>(val, q * C, C, u.data());
          counts[q] = k;
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
  const at::Tensor wc = weight.contiguous();
  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "switch_sparse::scatter", [&] {
    using A = scalar_t;
    const uint8_t* sp = sc.defined() ? sc.const_data_ptr<uint8_t>() : nullptr;
    A* op = outp.mutable_data_ptr<A>();
    // Column mode packs every filter (they are short): column_task
    // reads every channel's row.
    const bool col = !worthwhile(g);
    std::vector<int64_t> sel;
    for (int64_t c = 0; c < g.c; ++c)
      if (col || svr.used[c]) sel.push_back(c);
    // Little work (a one-hot map, a few nonzeros): one thread, no wake-ups.
    const double work = static_cast<double>(svr.nnz) * static_cast<double>(g.kh * g.kw * g.ci) +
                        static_cast<double>(g.n * g.pool.out_h * g.pool.out_w * g.c);
    const bool serial = work < 4e5;
    // Tasks: (image, band of output rows), each owning its rows (no atomics),
    // handed out dynamically since the bands at the map's edges have less
    // work; a few per thread so that one image feeds every thread (fewer in
    // column mode, where a position on a band edge is computed twice).
    const int64_t per = (col ? 4 : 8) * threads;
    const int64_t bands =
        std::max<int64_t>(1, std::min<int64_t>(g.H, (per + g.n - 1) / std::max<int64_t>(1, g.n)));
    const int64_t band_h = (g.H + bands - 1) / bands;
    // Few images of few rows and many input channels, where those bands
    // would be one or two rows: tasks split the input channels instead
    // (per-tap runs, one chunk of channels each, two chunks per thread where
    // they stay 128 channels or more), so that every task sees whole pooled
    // rows (no pair straddles a band edge) and reads only its own chunks of
    // the filters.
    const bool split = !col && !serial && threads > 1 && band_h <= 2 &&
                       g.ci >= kSplitChannels * threads;
    const int64_t parts = g.ci >= 2 * kSplitChannels * threads ? 2 * threads : threads;
    const Panels pn = panels_for<A>(g, static_cast<int64_t>(sel.size()), split ? parts : 0);
    // Masked-dense columns when at least 1 in 2 of the slots a position
    // could fill holds a nonzero on average (K masked multiply-adds per
    // channel against one per nonzero plus a dependency through memory).
    const int64_t positions = std::max<int64_t>(1, g.n * g.pool.out_h * g.pool.out_w);
    const bool dense = static_cast<double>(svr.nnz) >=
                       0.5 * static_cast<double>(positions * g.c) /
                           static_cast<double>(g.pool.area());
    const at::Tensor wpack = pack_panels<A>(g, pn, wc, sel);
    const A* wp = wpack.const_data_ptr<A>();
    std::vector<const A*> wrows(g.c, nullptr);
    for (size_t u = 0; u < sel.size(); ++u) wrows[sel[u]] = wp + static_cast<int64_t>(u) * pn.chunk;
    const int32_t* nzp = svr.count.data();
    // Many images: one task per image (grouping fused with the products).
    const bool fused = !col && !serial && !split && g.n >= 2 * threads;
    const int64_t items = split ? g.n * pn.nch : fused ? g.n : g.n * bands;
    std::atomic<int64_t> next{0};
    if (pn.col) {
      with_values<A>(mode, ac, bc, [&](const auto& val) {
        at::parallel_for(0, serial ? 1 : std::min(threads, items), 1, [&](int64_t, int64_t) {
          const int64_t K = g.pool.area();
          std::vector<A> cols(K * pn.chunk), vk(dense ? (K + 2) * g.c : 0);
          std::vector<uint8_t> hit(K);
          for (int64_t item = next++; item < items && !bad; item = next++) {
            const int64_t n = item / bands, r0 = (item % bands) * band_h;
            const int64_t r1 = std::min(g.H, r0 + band_h);
            if (r0 < r1 && !run_on_isa<ColumnTask>(isa, g, val, sp, wrows.data(), pn, nzp, op, n,
                                                   r0, r1, cols.data(), hit.data(), vk.data(),
                                                   dense))
              bad = true;
          }
        });
      });
      return;
    }
    const bool avx512 = isa == CpuIsa::kAvx512;
    if (fused) {
      // One task per image: its groups (in this thread's reused buffers, so
      // they stay in its cache), then its products.
      with_values<A>(mode, ac, bc, [&](const auto& val) {
        at::parallel_for(0, std::min(threads, items), 1, [&](int64_t, int64_t) {
          Grouper<A> gr(g);
          std::vector<RowGroups<A>> local(g.pool.out_h);
          for (int64_t n = next++; n < items && !bad; n = next++) {
            for (int64_t ph = 0; ph < g.pool.out_h; ++ph) {
              local[ph].clear();
              if (!gr.row(g, val, sp, wrows.data(), nzp, avx512, n, ph, local[ph])) {
                bad = true;
                break;
              }
            }
            if (!bad) run_on_isa<ScatterTask>(isa, g, local.data(), pn, op, n, 0, g.H, 0, pn.nch);
          }
        });
      });
      return;
    }
    // Phase 1: the groups of every pooled row, once (parallel over rows).
    std::vector<RowGroups<A>> rg(g.n * g.pool.out_h);
    with_values<A>(mode, ac, bc, [&](const auto& val) {
      const int64_t rows = g.n * g.pool.out_h;
      at::parallel_for(0, rows, serial ? rows : 1, [&](int64_t begin, int64_t end) {
        Grouper<A> gr(g);
        for (int64_t row = begin; row < end && !bad; ++row)
          if (!gr.row(g, val, sp, wrows.data(), nzp, avx512, row / g.pool.out_h,
                      row % g.pool.out_h, rg[row]))
            bad = true;
      });
    });
    if (bad) return;
    // Phase 2: the products.
    at::parallel_for(0, serial ? 1 : std::min(threads, items), 1, [&](int64_t, int64_t) {
      for (int64_t item = next++; item < items; item = next++) {
        if (split) {
          const int64_t n = item / pn.nch, tc = item % pn.nch;
          run_on_isa<ScatterTask>(isa, g, rg.data() + n * g.pool.out_h, pn, op, n, 0, g.H, tc,
                                  tc + 1);
          continue;
        }
        const int64_t n = item / bands, r0 = (item % bands) * band_h;
        const int64_t r1 = std::min(g.H, r0 + band_h);
        if (r0 < r1)
          run_on_isa<ScatterTask>(isa, g, rg.data() + n * g.pool.out_h, pn, op, n, r0, r1, 0,
                                  pn.nch);
      }
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
  const CpuIsa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "switch_sparse::correlate", [&] {
    using A = scalar_t;
    const uint8_t* sp = sc.defined() ? sc.const_data_ptr<uint8_t>() : nullptr;
    const A* xpp = xp.const_data_ptr<A>();
    A* gp = gw.mutable_data_ptr<A>();
    with_values<A>(mode, ac, bc, [&](const auto& val) {
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end && !bad; ++blk) {
          const int64_t c0 = blk * per, c1 = std::min(g.c, c0 + per);
          if (c0 >= c1) continue;
          run_on_isa<CorrelateTask>(isa, g, val, sp, xpp, gp, c0, c1, bad);
        }
      });
    });
  });
  if (bad) bad_switch();
  return gw.permute({0, 3, 1, 2}).contiguous();
}

}  // namespace switch_sparse
}  // namespace cnnvis
