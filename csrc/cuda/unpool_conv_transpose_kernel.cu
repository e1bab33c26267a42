// CUDA backend of unpool_conv_transpose, one deconvnet (Zeiler & Fergus) step.
//
// Forward:
//   1. check_switches_kernel: one thread per pooled value; raises (through a
//      device flag read back once) when a switch points outside its window or
//      the map, and counts the nonzeros of the rectified input (for "auto").
//   2. unpool_gather_kernel: one thread per unpooled (conv-output) element
//      (NHWC), running the gather_unpool body shared with the CPU backend:
//      every element is written exactly once, no zero-fill, no atomics,
//      overlapping windows summed in a fixed order; rectification after the
//      sum when windows overlap.
//   3. dense: ATen's transposed convolution (cuDNN, channels-last) filters the
//      unpooled map. sparse (density below kSparseDensityThresholdCUDA): the
//      nonzeros of the unpooled map are listed (at::nonzero) and one thread
//      per (nonzero, tap, input channel) adds value * weight into a float
//      (double for float64) accumulator with atomicAdd (tap_target body);
//      the cost scales with the number of nonzeros. The atomic sums make the
//      sparse path's last bits depend on the order of the additions.
// Backward: grad_p gathers cuDNN's conv2d(grad_out, weight) at the switch
// positions (gather_switch_grad, one thread per pooled value, masked by the
// rectification); grad_weight is ATen's transposed-convolution weight
// gradient of the materialized unpooled map.
// half and bfloat16 accumulate in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../pool_window.h"
#include "../unpool_conv_transpose.h"
#include "../unpool_conv_transpose_common.h"
#include "cuda_helpers.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// flags[0]: a switch points outside its window / the map; flags[1]: number
// of nonzeros of the (pre-)rectified pooled map. p and sw are NHWC (C
// channels); sw may be null (the identity pooling).
template <typename scalar_t>
__global__ void check_switches_kernel(const scalar_t* __restrict__ p, const uint8_t* __restrict__ sw,
                                      PoolWindow pool, int64_t C, bool rectify, int64_t total,
                                      unsigned long long* __restrict__ flags) {
  using acc_t = cuda_acc_t<scalar_t>;
  unsigned long long count = 0;
  bool bad = false;
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const acc_t v = rectify_value(static_cast<acc_t>(p[i]), rectify);
    if (v != acc_t(0)) ++count;
    if (sw != nullptr) {
      const NHWCIndex e = nhwc_index(i, pool.out_h, pool.out_w, C);
      int64_t y, x;
      if (!pool.switch_position(e.h, e.w, sw[i], &y, &x)) bad = true;
    }
  }
  if (bad) flags[0] = 1ULL;
  if (count) atomicAdd(flags + 1, count);
}

// u[n, y, x, c] (NHWC) = rectify(sum of the pooled values whose switch names
// (y, x)), one thread per element; `pre` rectifies each pooled value,
// `post` the sum.
template <typename scalar_t>
__global__ void unpool_gather_kernel(const scalar_t* __restrict__ p, const uint8_t* __restrict__ sw,
                                     scalar_t* __restrict__ u, PoolWindow pool, int64_t C,
                                     bool pre, bool post, int64_t total) {
  using acc_t = cuda_acc_t<scalar_t>;
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const PooledGather q = pooled_gather(i, pool, C);
    acc_t acc;
    gather_unpool<scalar_t, acc_t>(p + q.base, sw == nullptr ? nullptr : sw + q.base,
                                   pool.out_w * C, C, pool, q.e.h, q.e.w, q.win, 1, pre, &acc);
    u[i] = static_cast<scalar_t>(rectify_value(acc, post));
  }
}

// Sparse forward: one thread per (nonzero, tap, input channel of the group).
// idx: (K, 4) int64 (n, c, y, x) of the unpooled map's nonzeros; wt: the
// filters as (C_out, kH, kW, C_in/groups); acc: (N, H, W, C_in).
template <typename scalar_t, typename acc_t>
__global__ void scatter_kernel(const int64_t* __restrict__ idx, const scalar_t* __restrict__ u,
                               const scalar_t* __restrict__ wt, acc_t* __restrict__ acc,
                               UnpoolConvTGeometry g, int64_t total) {
  const int64_t taps = g.kh * g.kw, cog = g.c_out / g.groups;
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const int64_t ci = i % g.cig;
    const int64_t r = i / g.cig;
    const int64_t tap = r % taps;
    const int64_t k = r / taps;
    const int64_t* e = idx + 4 * k;
    const int64_t n = e[0], c = e[1], y = e[2], x = e[3];
    int64_t iy, ix;
    if (!tap_target(y, x, tap / g.kw, tap % g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.h, g.w,
                    &iy, &ix))
      continue;
    const acc_t v = static_cast<acc_t>(u[((n * g.conv_h + y) * g.conv_w + x) * g.c_out + c]);
    const acc_t wv = static_cast<acc_t>(wt[(c * taps + tap) * g.cig + ci]);
    atomicAdd(acc + ((n * g.h + iy) * g.w + ix) * g.c_in + (c / cog) * g.cig + ci, v * wv);
  }
}

// grad_p[n, oh, ow, c] (NHWC): the conv2d(grad_out, weight) value at the
// position the switch names, masked by the rectification (of p itself, or
// of the unpooled sum u when windows overlap).
template <typename scalar_t>
__global__ void grad_p_kernel(const scalar_t* __restrict__ gconv, const scalar_t* __restrict__ p,
                              const uint8_t* __restrict__ sw, const scalar_t* __restrict__ u,
                              scalar_t* __restrict__ gp, PoolWindow pool, int64_t C, bool rectify,
                              int64_t total) {
  using acc_t = cuda_acc_t<scalar_t>;
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const NHWCIndex e = nhwc_index(i, pool.out_h, pool.out_w, C);
    int64_t y = 0, x = 0;
    const bool inside = pool.switch_position(e.h, e.w, sw == nullptr ? 0 : sw[i], &y, &x);
    const int64_t nb = e.n * pool.in_h * pool.in_w * C;
    const scalar_t pv =
        u == nullptr ? p[i] : (inside ? u[nb + (y * pool.in_w + x) * C + e.c] : scalar_t(0));
    gp[i] = static_cast<scalar_t>(gather_switch_grad<scalar_t, acc_t>(
        gconv + nb, y, x, inside, pool.in_w, C, e.c, pv, rectify));
  }
}

const uint8_t* switches_or_null(const UnpoolInputs& in) {
  return in.switches.defined() ? in.switches.const_data_ptr<uint8_t>() : nullptr;
}

// Validates the switches (bad_switch()) and returns the number of nonzeros
// of the input, rectified where `rectify` (one device-to-host copy).
int64_t check_switches_and_count(const UnpoolConvTGeometry& g, const UnpoolInputs& in,
                                 bool rectify) {
  auto flags = at::zeros({2}, in.p.options().dtype(at::kLong));
  CNNVIS_DISPATCH_CUDA_FLOATING(in.p.scalar_type(), "unpool_conv_transpose_check_cuda", [&] {
    launch_1d(check_switches_kernel<scalar_t>, in.p.numel(), in.p.const_data_ptr<scalar_t>(),
              switches_or_null(in), g.pool(), g.c_out, rectify, in.p.numel(),
              reinterpret_cast<unsigned long long*>(flags.mutable_data_ptr<int64_t>()));
  });
  const auto host = flags.cpu();
  const int64_t* f = host.const_data_ptr<int64_t>();
  if (f[0] != 0) bad_switch();
  return f[1];
}

// The unpooled map (N, C_out, CH, CW), channels-last, of switches that have
// been checked.
at::Tensor unpool_checked(const UnpoolConvTGeometry& g, const UnpoolInputs& in, bool post) {
  at::Tensor u = at::empty({g.n, g.c_out, g.conv_h, g.conv_w}, in.p.options().memory_format(kCL));
  CNNVIS_DISPATCH_CUDA_FLOATING(in.p.scalar_type(), "unpool_conv_transpose_unpool_cuda", [&] {
    launch_1d(unpool_gather_kernel<scalar_t>, u.numel(), in.p.const_data_ptr<scalar_t>(),
              switches_or_null(in), u.mutable_data_ptr<scalar_t>(), g.pool(), g.c_out, in.pre,
              post, u.numel());
  });
  return u;
}

struct UnpoolConvTransposeCuda : CudaBackend {
  static at::Tensor unpool(const UnpoolConvTGeometry& g, const UnpoolInputs& in, bool post) {
    check_switches_and_count(g, in, in.pre);
    return unpool_checked(g, in, post);
  }

  static at::Tensor forward(const UnpoolConvTGeometry& g, const UnpoolInputs& in,
                            const at::Tensor& weight) {
    const int64_t nnz = check_switches_and_count(g, in, in.pre);
    const int64_t dense_size = g.n * g.c_out * g.conv_h * g.conv_w;
    bool sparse = g.algorithm == UnpoolAlgorithm::kSparse;
    if (g.algorithm == UnpoolAlgorithm::kAuto) {
      sparse = static_cast<double>(nnz) <
               kSparseDensityThresholdCUDA * static_cast<double>(dense_size);
    }
    const at::Tensor u = unpool_checked(g, in, in.post);
    if (!sparse) return conv_transpose_unpooled(g, u, weight);
    const at::Tensor idx = at::nonzero(u);  // (K, 4): n, c, y, x
    const at::Tensor wt = weight.permute({0, 2, 3, 1}).contiguous();  // (C_out, kH, kW, cig)
    const auto acc_type = at::toOpMathType(in.p.scalar_type());
    at::Tensor acc = at::zeros({g.n, g.c_in, g.h, g.w},
                               in.p.options().dtype(acc_type).memory_format(kCL));
    const int64_t total = idx.size(0) * g.kh * g.kw * g.cig;
    CNNVIS_DISPATCH_CUDA_FLOATING(in.p.scalar_type(), "unpool_conv_transpose_scatter_cuda", [&] {
      using acc_t = cuda_acc_t<scalar_t>;
      launch_1d(scatter_kernel<scalar_t, acc_t>, total, idx.const_data_ptr<int64_t>(),
                u.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                acc.mutable_data_ptr<acc_t>(), g, total);
    });
    return acc_type == in.p.scalar_type() ? acc : acc.to(in.p.scalar_type()).contiguous(kCL);
  }

  static at::Tensor grad_p(const UnpoolConvTGeometry& g, const UnpoolInputs& in,
                           const at::Tensor& gconv, const at::Tensor& u) {
    at::Tensor grad_p = at::empty(in.p.sizes(), in.p.options().memory_format(kCL));
    CNNVIS_DISPATCH_CUDA_FLOATING(in.p.scalar_type(), "unpool_conv_transpose_backward_cuda", [&] {
      launch_1d(grad_p_kernel<scalar_t>, grad_p.numel(), gconv.const_data_ptr<scalar_t>(),
                in.p.const_data_ptr<scalar_t>(), switches_or_null(in),
                u.defined() ? u.const_data_ptr<scalar_t>() : nullptr,
                grad_p.mutable_data_ptr<scalar_t>(), g.pool(), g.c_out, in.pre || in.post,
                grad_p.numel());
    });
    return grad_p;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) {
  register_unpool_conv_transpose<UnpoolConvTransposeCuda>(m);
}

}  // namespace cnnvis
