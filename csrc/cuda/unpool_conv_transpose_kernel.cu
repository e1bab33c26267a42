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
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../conv_relu_pool_common.h"
#include "../unpool_conv_transpose.h"
#include "../unpool_conv_transpose_common.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;
constexpr int kThreads = 256;

// Geometry handed to the kernels by value.
struct Params {
  int64_t n, c, ph, pw;          // pooled map (C = C_out)
  int64_t ch, cw;                // unpooled map (conv output)
  int64_t ci, h, w, cig, cog;    // result (C_in, H, W), channels per group in/out
  int64_t kh, kw, sh, sw, pad_h, pad_w, dh, dw;
  int64_t pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw;
};

Params make_params(const UnpoolConvTGeometry& g) {
  return {g.n,  g.c_out, g.pooled_h, g.pooled_w, g.conv_h, g.conv_w, g.c_in,
          g.h,  g.w,     g.cig,      g.c_out / g.groups,    g.kh,   g.kw, g.sh,
          g.sw, g.ph,    g.pw,       g.dh,       g.dw,      g.pool_kh, g.pool_kw,
          g.pool_sh,     g.pool_sw,  g.pool_ph,  g.pool_pw};
}

int64_t blocks_for(int64_t total) {
  const int64_t max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 32;
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, max_blocks));
}

// Whether two pooling windows can share a position.
bool overlapping(const UnpoolConvTGeometry& g) {
  return !g.identity_pool && (g.pool_kh > g.pool_sh || g.pool_kw > g.pool_sw);
}

// flags[0]: a switch points outside its window / the map; flags[1]: number
// of nonzeros of the (pre-)rectified pooled map. p and sw are NHWC.
template <typename scalar_t>
__global__ void check_switches_kernel(const scalar_t* __restrict__ p, const uint8_t* __restrict__ sw,
                                      Params q, bool rectify, int64_t total,
                                      unsigned long long* __restrict__ flags) {
  unsigned long long count = 0;
  bool bad = false;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const acc_t v = rectify_value(static_cast<acc_t>(p[i]), rectify);
    if (v != acc_t(0)) ++count;
    if (sw != nullptr) {
      int64_t r = i / q.c;
      const int64_t ow = r % q.pw;
      r /= q.pw;
      const int64_t oh = r % q.ph;
      int64_t y, x;
      if (!switch_position(oh, ow, sw[i], q.pool_sh, q.pool_sw, q.pool_ph, q.pool_pw, q.pool_kh,
                           q.pool_kw, q.ch, q.cw, &y, &x))
        bad = true;
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
                                     scalar_t* __restrict__ u, Params q, bool pre, bool post,
                                     int64_t total) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % q.c;
    int64_t r = i / q.c;
    const int64_t x = r % q.cw;
    r /= q.cw;
    const int64_t y = r % q.ch;
    const int64_t n = r / q.ch;
    int64_t ph_lo, ph_hi, pw_lo, pw_hi;
    windows_containing(y, q.pool_sh, q.pool_ph, q.pool_kh, q.ph, &ph_lo, &ph_hi);
    windows_containing(x, q.pool_sw, q.pool_pw, q.pool_kw, q.pw, &pw_lo, &pw_hi);
    const int64_t base = n * q.ph * q.pw * q.c + c;
    acc_t acc;
    gather_unpool<scalar_t, acc_t>(p + base, sw == nullptr ? nullptr : sw + base, q.pw * q.c, q.c,
                                   y, x, ph_lo, ph_hi, pw_lo, pw_hi, q.pool_sh, q.pool_sw,
                                   q.pool_ph, q.pool_pw, q.pool_kw, 1, pre, &acc);
    u[i] = static_cast<scalar_t>(rectify_value(acc, post));
  }
}

// Sparse forward: one thread per (nonzero, tap, input channel of the group).
// idx: (K, 4) int64 (n, c, y, x) of the unpooled map's nonzeros; wt: the
// filters as (C_out, kH, kW, C_in/groups); acc: (N, H, W, C_in).
template <typename scalar_t, typename acc_t>
__global__ void scatter_kernel(const int64_t* __restrict__ idx, const scalar_t* __restrict__ u,
                               const scalar_t* __restrict__ wt, acc_t* __restrict__ acc, Params q,
                               int64_t total) {
  const int64_t taps = q.kh * q.kw;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ci = i % q.cig;
    const int64_t r = i / q.cig;
    const int64_t tap = r % taps;
    const int64_t k = r / taps;
    const int64_t* e = idx + 4 * k;
    const int64_t n = e[0], c = e[1], y = e[2], x = e[3];
    int64_t iy, ix;
    if (!tap_target(y, x, tap / q.kw, tap % q.kw, q.sh, q.sw, q.pad_h, q.pad_w, q.dh, q.dw, q.h,
                    q.w, &iy, &ix))
      continue;
    const acc_t v = static_cast<acc_t>(u[((n * q.ch + y) * q.cw + x) * q.c + c]);
    const acc_t wv = static_cast<acc_t>(wt[(c * taps + tap) * q.cig + ci]);
    atomicAdd(acc + ((n * q.h + iy) * q.w + ix) * q.ci + (c / q.cog) * q.cig + ci, v * wv);
  }
}

// grad_p[n, oh, ow, c] (NHWC): the conv2d(grad_out, weight) value at the
// position the switch names, masked by the rectification (of p itself, or
// of the unpooled sum u when windows overlap).
template <typename scalar_t>
__global__ void grad_p_kernel(const scalar_t* __restrict__ gconv, const scalar_t* __restrict__ p,
                              const uint8_t* __restrict__ sw, const scalar_t* __restrict__ u,
                              scalar_t* __restrict__ gp, Params q, bool rectify, int64_t total) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % q.c;
    int64_t r = i / q.c;
    const int64_t ow = r % q.pw;
    r /= q.pw;
    const int64_t oh = r % q.ph;
    const int64_t n = r / q.ph;
    int64_t y = 0, x = 0;
    const bool inside = switch_position(oh, ow, sw == nullptr ? 0 : sw[i], q.pool_sh, q.pool_sw,
                                        q.pool_ph, q.pool_pw, q.pool_kh, q.pool_kw, q.ch, q.cw,
                                        &y, &x);
    const int64_t nb = n * q.ch * q.cw * q.c;
    const scalar_t pv =
        u == nullptr ? p[i] : (inside ? u[nb + (y * q.cw + x) * q.c + c] : scalar_t(0));
    gp[i] = static_cast<scalar_t>(
        gather_switch_grad<scalar_t, acc_t>(gconv + nb, y, x, inside, q.cw, q.c, c, pv, rectify));
  }
}

void check_cuda(const at::Tensor& p) {
  TORCH_CHECK_VALUE(p.is_cuda(), "p: expected a CUDA tensor, got ", p.device());
}

// Validates the switches (raising ValueError) and returns the number of
// nonzeros of the rectified input (one device-to-host copy).
int64_t check_switches_and_count(const at::Tensor& pc, const at::Tensor& sc, const Params& q,
                                 bool rectify) {
  auto flags = at::zeros({2}, pc.options().dtype(at::kLong));
  const int64_t total = pc.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(),
                                  "unpool_conv_transpose_check_cuda", [&] {
    check_switches_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        pc.const_data_ptr<scalar_t>(), sc.defined() ? sc.const_data_ptr<uint8_t>() : nullptr, q,
        rectify, total, reinterpret_cast<unsigned long long*>(flags.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto host = flags.cpu();
  const int64_t* f = host.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(f[0] == 0, "switches: some switch points outside its pooling window or "
                    "outside the output_size map; check output_size and the pooling arguments");
  return f[1];
}

// The unpooled map (N, C_out, CH, CW), channels-last.
at::Tensor unpool(const at::Tensor& pc, const at::Tensor& sc, const Params& q, bool pre,
                  bool post) {
  at::Tensor u = at::empty({q.n, q.c, q.ch, q.cw}, pc.options().memory_format(kCL));
  const int64_t total = u.numel();
  if (total == 0) return u;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(),
                                  "unpool_conv_transpose_unpool_cuda", [&] {
    unpool_gather_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        pc.const_data_ptr<scalar_t>(), sc.defined() ? sc.const_data_ptr<uint8_t>() : nullptr,
        u.mutable_data_ptr<scalar_t>(), q, pre, post, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return u;
}

at::Tensor unpool_conv_transpose_cuda(const at::Tensor& p,
                                      const c10::optional<at::Tensor>& switches,
                                      const at::Tensor& weight, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups, at::IntArrayRef pool_kernel,
                                      at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                                      at::IntArrayRef output_size, at::IntArrayRef input_size,
                                      bool rectify, c10::string_view algorithm) {
  const auto g = check_unpool_conv_transpose(p, switches, weight, stride, padding, dilation,
                                             groups, pool_kernel, pool_stride, pool_padding,
                                             output_size, input_size, algorithm);
  check_cuda(p);
  c10::cuda::CUDAGuard guard(p.device());
  if (g.n == 0 || g.c_out == 0) {
    return at::empty({g.n, g.c_in, g.h, g.w}, p.options().memory_format(kCL)).zero_();
  }
  const at::Tensor pc = p.contiguous(kCL);
  const bool has_sw = switches.has_value() && switches->defined();
  const at::Tensor sc = has_sw ? switches->contiguous(kCL) : at::Tensor();
  const bool post = rectify && overlapping(g);
  const bool pre = rectify && !post;
  const auto q = make_params(g);

  const int64_t nnz = check_switches_and_count(pc, sc, q, pre);
  bool sparse = g.algorithm == 1;
  if (g.algorithm == 0) {
    sparse = static_cast<double>(nnz) <
             kSparseDensityThresholdCUDA * static_cast<double>(g.n * g.c_out * g.conv_h * g.conv_w);
  }
  const at::Tensor u = unpool(pc, sc, q, pre, post);
  if (!sparse) {
    return at::convolution(u, weight.contiguous(), c10::nullopt, stride, padding, dilation,
                           /*transposed=*/true, {g.oph, g.opw}, groups)
        .contiguous(kCL);
  }
  const at::Tensor idx = at::nonzero(u);  // (K, 4): n, c, y, x
  const at::Tensor wt = weight.permute({0, 2, 3, 1}).contiguous();  // (C_out, kH, kW, cig)
  const auto acc_type = at::toOpMathType(p.scalar_type());
  at::Tensor acc = at::zeros({g.n, g.c_in, g.h, g.w},
                             p.options().dtype(acc_type).memory_format(kCL));
  const int64_t total = idx.size(0) * g.kh * g.kw * g.cig;
  if (total > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(),
                                    "unpool_conv_transpose_scatter_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
      scatter_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          idx.const_data_ptr<int64_t>(), u.const_data_ptr<scalar_t>(),
          wt.const_data_ptr<scalar_t>(), acc.mutable_data_ptr<acc_t>(), q, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return acc_type == p.scalar_type() ? acc : acc.to(p.scalar_type()).contiguous(kCL);
}

std::tuple<at::Tensor, at::Tensor> unpool_conv_transpose_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& p, const c10::optional<at::Tensor>& switches,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, at::IntArrayRef pool_kernel,
    at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef output_size,
    at::IntArrayRef input_size, bool rectify, std::array<bool, 2> output_mask) {
  const auto g = check_unpool_conv_transpose(p, switches, weight, stride, padding, dilation,
                                             groups, pool_kernel, pool_stride, pool_padding,
                                             output_size, input_size, "auto");
  check_cuda(p);
  check_unpool_conv_transpose_backward(g, grad_out, p);
  c10::cuda::CUDAGuard guard(p.device());
  at::Tensor grad_p = at::empty({0}, p.options());
  at::Tensor grad_w = at::empty({0}, p.options());
  if (g.n == 0 || g.c_out == 0) {
    if (output_mask[0]) grad_p = at::empty(p.sizes(), p.options().memory_format(kCL)).zero_();
    if (output_mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
    return {grad_p, grad_w};
  }
  const at::Tensor go = grad_out.contiguous(kCL);
  const at::Tensor pc = p.contiguous(kCL);
  const bool has_sw = switches.has_value() && switches->defined();
  const at::Tensor sc = has_sw ? switches->contiguous(kCL) : at::Tensor();
  const bool post = rectify && overlapping(g);
  const bool pre = rectify && !post;
  const auto q = make_params(g);
  check_switches_and_count(pc, sc, q, pre);
  // The unpooled map, not yet rectified when the rectification follows the sums.
  at::Tensor u = unpool(pc, sc, q, pre, /*post=*/false);
  if (output_mask[0]) {
    // The adjoint of the transposed convolution is the convolution.
    const at::Tensor gconv = at::convolution(go, weight.contiguous(), c10::nullopt, stride,
                                             padding, dilation, /*transposed=*/false, {0, 0},
                                             groups)
                                 .contiguous(kCL);
    grad_p = at::empty(pc.sizes(), pc.options().memory_format(kCL));
    const int64_t total = grad_p.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(),
                                    "unpool_conv_transpose_backward_cuda", [&] {
      grad_p_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          gconv.const_data_ptr<scalar_t>(), pc.const_data_ptr<scalar_t>(),
          has_sw ? sc.const_data_ptr<uint8_t>() : nullptr,
          post ? u.const_data_ptr<scalar_t>() : nullptr, grad_p.mutable_data_ptr<scalar_t>(), q,
          rectify, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (output_mask[1]) {
    if (post) u.relu_();
    auto grads = at::convolution_backward(go, u, weight.contiguous(), c10::nullopt, stride,
                                          padding, dilation, /*transposed=*/true,
                                          {g.oph, g.opw}, groups, {false, true, false});
    grad_w = std::get<1>(grads).contiguous();
  }
  return {grad_p, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) {
  m.impl("unpool_conv_transpose", &unpool_conv_transpose_cuda);
  m.impl("_unpool_conv_transpose_backward", &unpool_conv_transpose_backward_cuda);
}

}  // namespace cnnvis
