// CPU backend of unpool_conv_transpose.
//
// Forward, two formulations chosen by the density of the (rectified) input:
//   sparse: every nonzero of p scatters value * weight[c, :, kh, kw] into
//     the output for every tap; cost ~ nnz * kH * kW * C_in, independent of
//     the map size except for one read of p. For groups 1 without
//     rectification after overlapping sums this is switch_sparse::scatter
//     (register-blocked, AVX-512/AVX2/generic copies; its survey of p also
//     decides "auto", against kSwitchSparseDensityThresholdCPU without
//     pooling and kSwitchSparsePooledDensityThresholdCPU with it, so every
//     2x2-pooled map takes it); otherwise the nonzeros are listed
//     per image and scattered one by one (scatter_taps), parallel over
//     (image, channel block, output row band).
//   dense: relu(p) is unpooled into a channels-last buffer by a gather that
//     writes each element once (no zero-fill; gather_unpool, shared with the
//     CUDA backend) and ATen's transposed convolution (oneDNN / GEMM, faster
//     channels-last than NCHW at every measured shape) filters it.
// "auto" takes the sparse path when nnz / (N * C_out * H_conv * W_conv) is
// below the threshold (kSparseDensityThresholdCPU for scatter_taps: the
// per-nonzero axpy runs at a fraction of GEMM speed, so it wins only when
// most of the map is zero).
//
// Backward: grad_p gathers conv2d(grad_out, weight) at the switch positions
// (masked by the rectification); grad_weight is ATen's transposed-conv
// weight gradient with the unpooled map materialized.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../pool_window.h"
#include "../unpool_conv_transpose.h"
#include "../unpool_conv_transpose_common.h"
#include "cpu_helpers.h"
#include "switch_sparse.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;
constexpr int64_t kScatterBlock = 256;  // sparse scatter: output channels per task

template <typename T>
struct NonZero {
  int32_t c, y, x;
  T v;
};


// u (NHWC (N, CH, CW, C)) = unpool(rectify_pre(p)), rectified after the sum
// when `post`: a gather (gather_unpool, the body the CUDA backend runs too)
// that writes every element of u exactly once, with the whole channel
// vector per call (contiguous, vectorized), so u needs no zero-fill and is
// produced in a single pass. Overlapping windows are summed in the fixed
// (oh, ow) order. Parallel over (image, row). The switches must have been
// checked (check_switches).
template <typename scalar_t>
void unpool_dense(const scalar_t* pp, const uint8_t* sp, scalar_t* up,
                  const UnpoolConvTGeometry& g, bool pre, bool post) {
  const PoolWindow pool = g.pool();
  const int64_t C = g.c_out, PH = g.pooled_h, PW = g.pooled_w, CH = g.conv_h, CW = g.conv_w;
  at::parallel_for(0, g.n * CH, grain_for(CW * C), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / CH, y = row % CH;
      const scalar_t* pn = pp + n * PH * PW * C;
      const uint8_t* sn = sp ? sp + n * PH * PW * C : nullptr;
      WindowRange win;
      pool.rows_containing(y, &win.ph_lo, &win.ph_hi);
      scalar_t* ur = up + row * CW * C;
      for (int64_t x = 0; x < CW; ++x) {
        pool.cols_containing(x, &win.pw_lo, &win.pw_hi);
        scalar_t* acc = ur + x * C;
        gather_unpool<scalar_t, scalar_t>(pn, sn, PW * C, C, pool, y, x, win, C, pre, acc);
        if (post) {
          CNNVIS_IVDEP
          for (int64_t c = 0; c < C; ++c) acc[c] = rectify_value(acc[c], true);
        }
      }
    }
  });
}

// The number of nonzeros of the (rectified) pooled map, counted in
// parallel per image, branch-free (vectorizes; NaN counts).
template <typename scalar_t>
int64_t count_nonzeros(const scalar_t* pp, const UnpoolConvTGeometry& g, bool rectify) {
  const int64_t per_image = g.pooled_h * g.pooled_w * g.c_out;
  std::vector<int64_t> counts(g.n, 0);
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* pn = pp + n * per_image;
      int64_t cnt = 0;
      if (rectify) {
        for (int64_t i = 0; i < per_image; ++i)
          cnt += static_cast<int64_t>((pn[i] > scalar_t(0)) | (pn[i] != pn[i]));
      } else {
        for (int64_t i = 0; i < per_image; ++i) cnt += static_cast<int64_t>(pn[i] != scalar_t(0));
      }
      counts[n] = cnt;
    }
  });
  int64_t nnz = 0;
  for (auto c : counts) nnz += c;
  return nnz;
}

// The sparse forward for any groups and rectification: the nonzeros of
// every image are listed (summed per position and rectified where `post`),
// then scattered through the filter taps (scatter_taps), parallel over
// (image, group, block of input channels, band of output rows).
template <typename scalar_t>
at::Tensor scatter_listed(const UnpoolConvTGeometry& g, const UnpoolInputs& in,
                          const at::Tensor& weight) {
  const PoolWindow pool = g.pool();
  const int64_t N = g.n, C = g.c_out, PH = g.pooled_h, PW = g.pooled_w;
  const int64_t CI = g.c_in, H = g.h, W = g.w;
  const scalar_t* pp = in.p.const_data_ptr<scalar_t>();
  const uint8_t* sp = in.switches.defined() ? in.switches.const_data_ptr<uint8_t>() : nullptr;
  // List the nonzeros of every image ...
  std::vector<std::vector<NonZero<scalar_t>>> nz(N);
  std::atomic<bool> bad{false};
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* pn = pp + n * PH * PW * C;
      const uint8_t* sn = sp ? sp + n * PH * PW * C : nullptr;
      auto& list = nz[n];
      for (int64_t oh = 0; oh < PH; ++oh) {
        for (int64_t ow = 0; ow < PW; ++ow) {
          const int64_t off = (oh * PW + ow) * C;
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t v = rectify_value(pn[off + c], in.pre);
            if (v == scalar_t(0)) continue;
            int64_t y, x;
            if (!pool.switch_position(oh, ow, sn ? sn[off + c] : 0, &y, &x)) {
              bad = true;
              continue;
            }
            list.push_back({static_cast<int32_t>(c), static_cast<int32_t>(y),
                            static_cast<int32_t>(x), v});
          }
        }
      }
    }
  });
  if (bad) bad_switch();
  if (in.post) {
    // Overlapping windows: sum the values that land on one position, then
    // rectify the sums.
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        auto& list = nz[n];
        std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
          return a.c != b.c ? a.c < b.c : (a.y != b.y ? a.y < b.y : a.x < b.x);
        });
        size_t k = 0;
        for (size_t i = 0; i < list.size();) {
          auto e = list[i++];
          while (i < list.size() && list[i].c == e.c && list[i].y == e.y && list[i].x == e.x)
            e.v += list[i++].v;
          e.v = rectify_value(e.v, true);
          if (e.v != scalar_t(0)) list[k++] = e;
        }
        list.resize(k);
      }
    });
  }
  // ... then scatter them through the filter taps. The taps are read from
  // a (C_used, kH, kW, cig) copy of the filters that occur, so that a
  // one-hot input does not pay for re-laying out the whole weight.
  std::vector<int64_t> slot(C, -1);
  std::vector<int64_t> used;
  for (const auto& list : nz)
    for (const auto& e : list)
      if (slot[e.c] < 0) {
        slot[e.c] = static_cast<int64_t>(used.size());
        used.push_back(e.c);
      }
  at::Tensor wsel = static_cast<int64_t>(used.size()) == C
                        ? weight
                        : weight.index_select(
                              0, at::tensor(used, at::TensorOptions().dtype(at::kLong)));
  if (static_cast<int64_t>(used.size()) == C)
    for (int64_t c = 0; c < C; ++c) slot[c] = c;
  const at::Tensor wt = wsel.permute({0, 2, 3, 1}).contiguous();  // (C_used, kH, kW, cig)
  const scalar_t* wp = wt.const_data_ptr<scalar_t>();
  at::Tensor out = at::empty({N, CI, H, W}, in.p.options().memory_format(kCL)).zero_();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t cig = g.cig, cog = C / g.groups, taps = g.kh * g.kw;
  const int64_t nb = (cig + kScatterBlock - 1) / kScatterBlock;
  const int64_t items0 = N * g.groups * nb;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(H, (want + items0 - 1) / items0));
  const int64_t band_h = (H + bands - 1) / bands;
  at::parallel_for(0, items0 * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t band = item % bands;
      int64_t r = item / bands;
      const int64_t blk = r % nb;
      r /= nb;
      const int64_t grp = r % g.groups;
      const int64_t n = r / g.groups;
      const int64_t ci_lo = blk * kScatterBlock, ci_hi = std::min(cig, ci_lo + kScatterBlock);
      const int64_t row_lo = band * band_h, row_hi = std::min(H, row_lo + band_h);
      scalar_t* on = op + n * H * W * CI + grp * cig;
      for (const auto& e : nz[n]) {
        if (e.c / cog != grp) continue;
        scatter_taps<scalar_t, scalar_t>(e.v, wp + slot[e.c] * taps * cig, e.y, e.x, g.kh, g.kw,
                                         cig, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, row_lo, row_hi,
                                         W, CI, ci_lo, ci_hi, on);
      }
    }
  });
  return out;
}

struct UnpoolConvTransposeCpu : CpuBackend {
  static at::Tensor unpool(const UnpoolConvTGeometry& g, const UnpoolInputs& in, bool post) {
    at::Tensor u = at::empty({g.n, g.c_out, g.conv_h, g.conv_w}, in.p.options().memory_format(kCL));
    AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "unpool_conv_transpose_unpool_cpu", [&] {
      const uint8_t* sp = in.switches.defined() ? in.switches.const_data_ptr<uint8_t>() : nullptr;
      check_switches(sp, g.pool(), g.n * g.pooled_h, g.c_out);
      unpool_dense<scalar_t>(in.p.const_data_ptr<scalar_t>(), sp, u.mutable_data_ptr<scalar_t>(),
                             g, in.pre, post);
    });
    return u;
  }

  // Two formulations chosen by the density of the (rectified) input, see
  // the top of this file.
  static at::Tensor forward(const UnpoolConvTGeometry& g, const UnpoolInputs& in,
                            const at::Tensor& weight) {
    const int64_t dense_size = g.n * g.c_out * g.conv_h * g.conv_w;
    if (!in.post && g.groups == 1 && g.algorithm != UnpoolAlgorithm::kDense) {
      // Switch-sparse scatter (switch_sparse.h): register-blocked, the
      // nonzeros of one pooled position that share a switch added into
      // their common target together; its survey of p also decides "auto".
      const switch_sparse::Geom sg{g.n,  g.c_out, g.pool(), g.c_in, g.kh, g.kw, g.sh,
                                   g.sw, g.dh,    g.dw,     g.ph,   g.pw, g.h,  g.w};
      const auto mode = in.pre ? switch_sparse::Values::kRectified : switch_sparse::Values::kPlain;
      const auto sv = switch_sparse::survey(sg, mode, in.p, at::Tensor());
      const double threshold = g.identity_pool ? kSwitchSparseDensityThresholdCPU
                                               : kSwitchSparsePooledDensityThresholdCPU;
      if (g.algorithm == UnpoolAlgorithm::kSparse ||
          static_cast<double>(sv.nnz) < threshold * static_cast<double>(dense_size))
        return switch_sparse::scatter(sg, mode, in.p, at::Tensor(), in.switches, weight, &sv);
      return conv_transpose_unpooled(g, unpool(g, in, in.post), weight);
    }
    bool sparse = g.algorithm == UnpoolAlgorithm::kSparse;
    AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "unpool_conv_transpose_count_cpu", [&] {
      if (g.algorithm == UnpoolAlgorithm::kAuto) {
        const int64_t nnz = count_nonzeros(in.p.const_data_ptr<scalar_t>(), g, in.pre || in.post);
        sparse = static_cast<double>(nnz) <
                 kSparseDensityThresholdCPU * static_cast<double>(dense_size);
      }
    });
    if (!sparse) return conv_transpose_unpooled(g, unpool(g, in, in.post), weight);
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "unpool_conv_transpose_cpu", [&] {
      out = scatter_listed<scalar_t>(g, in, weight);
    });
    return out;
  }

  static at::Tensor grad_p(const UnpoolConvTGeometry& g, const UnpoolInputs& in,
                           const at::Tensor& gconv, const at::Tensor& u) {
    const PoolWindow pool = g.pool();
    const int64_t C = g.c_out, PH = g.pooled_h, PW = g.pooled_w, CH = g.conv_h, CW = g.conv_w;
    const bool rectify = in.pre || in.post;
    at::Tensor grad_p = at::empty(in.p.sizes(), in.p.options().memory_format(kCL));
    AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "unpool_conv_transpose_backward_cpu", [&] {
      const scalar_t* pp = in.p.const_data_ptr<scalar_t>();
      const uint8_t* sp = in.switches.defined() ? in.switches.const_data_ptr<uint8_t>() : nullptr;
      const scalar_t* upt = u.defined() ? u.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* gc = gconv.const_data_ptr<scalar_t>();
      scalar_t* gp = grad_p.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.n * PH, grain_for(PW * C, 4096), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / PH, oh = row % PH;
          const scalar_t* gcn = gc + n * CH * CW * C;
          for (int64_t ow = 0; ow < PW; ++ow) {
            const int64_t off = ((n * PH + oh) * PW + ow) * C;
            for (int64_t c = 0; c < C; ++c) {
              int64_t y = 0, x = 0;
              const bool inside = pool.switch_position(oh, ow, sp ? sp[off + c] : 0, &y, &x);
              // ReLU mask: p itself, or the sum at its position when
              // rectifying after unpooling.
              const scalar_t pv =
                  upt ? (inside ? upt[((n * CH + y) * CW + x) * C + c] : scalar_t(0))
                      : pp[off + c];
              gp[off + c] = gather_switch_grad<scalar_t, scalar_t>(gcn, y, x, inside, CW, C, c,
                                                                   pv, rectify);
            }
          }
        }
      });
    });
    return grad_p;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CPU, m) { register_unpool_conv_transpose<UnpoolConvTransposeCpu>(m); }

}  // namespace cnnvis
