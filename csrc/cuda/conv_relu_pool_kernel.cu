// CUDA backend of conv_relu_pool. The convolution runs in cuDNN through ATen
// (channels-last, bias fused by cuDNN); ReLU + max pooling + argmax is one
// kernel reading the conv output once, one thread per pooled value, running
// the same relu_max_window body as the CPU backend. The backward rebuilds the
// conv-output gradient with gather_conv_grad (one thread per conv-output
// element, each written once, no atomics, deterministic), then calls ATen's
// convolution backward. half and bfloat16 compare and accumulate in float.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../conv_relu_pool.h"
#include "../conv_relu_pool_common.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;
constexpr int kThreads = 256;

struct PoolParams {
  int64_t n, c, conv_h, conv_w, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw;
};

PoolParams make_params(const ConvPoolGeometry& g) {
  return {g.n, g.c_out, g.conv_h, g.conv_w, g.out_h, g.out_w,
          g.pool_kh, g.pool_kw, g.pool_sh, g.pool_sw, g.pool_ph, g.pool_pw};
}

template <typename scalar_t>
__global__ void relu_pool_forward_kernel(const scalar_t* __restrict__ y, scalar_t* __restrict__ out,
                                         uint8_t* __restrict__ sw, PoolParams p, int64_t total) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % p.c;
    int64_t r = i / p.c;
    const int64_t ow = r % p.out_w;
    r /= p.out_w;
    const int64_t oh = r % p.out_h;
    const int64_t n = r / p.out_h;
    int64_t hstart, h0, h1, wstart, w0, w1;
    pool_window(oh, p.sh, p.ph, p.kh, p.conv_h, &hstart, &h0, &h1);
    pool_window(ow, p.sw, p.pw, p.kw, p.conv_w, &wstart, &w0, &w1);
    acc_t best;
    uint8_t s;
    relu_max_window<scalar_t, acc_t>(y + n * p.conv_h * p.conv_w * p.c + c, p.conv_w * p.c, p.c,
                                     h0, h1, w0, w1, hstart, wstart, p.kw, 1, &best, &s);
    out[i] = static_cast<scalar_t>(best);
    sw[i] = s;
  }
}

template <typename scalar_t>
__global__ void conv_grad_gather_kernel(const scalar_t* __restrict__ gout,
                                        const scalar_t* __restrict__ out,
                                        const uint8_t* __restrict__ sw,
                                        scalar_t* __restrict__ gconv, PoolParams p,
                                        int64_t total) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % p.c;
    int64_t r = i / p.c;
    const int64_t w = r % p.conv_w;
    r /= p.conv_w;
    const int64_t h = r % p.conv_h;
    const int64_t n = r / p.conv_h;
    int64_t ph_lo, ph_hi, pw_lo, pw_hi;
    windows_containing(h, p.sh, p.ph, p.kh, p.out_h, &ph_lo, &ph_hi);
    windows_containing(w, p.sw, p.pw, p.kw, p.out_w, &pw_lo, &pw_hi);
    const int64_t base = n * p.out_h * p.out_w * p.c + c;
    acc_t acc;
    gather_conv_grad<scalar_t, acc_t>(gout + base, out + base, sw + base, p.out_w * p.c, p.c, h, w,
                                      ph_lo, ph_hi, pw_lo, pw_hi, p.sh, p.sw, p.ph, p.pw, p.kw, 1,
                                      &acc);
    gconv[i] = static_cast<scalar_t>(acc);
  }
}

int64_t blocks_for(int64_t total) {
  const int64_t max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 32;
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, max_blocks));
}

std::tuple<at::Tensor, at::Tensor> conv_relu_pool_cuda(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    bool ceil_mode) {
  const auto g = check_conv_relu_pool(x, weight, bias, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode);
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::convolution(x.contiguous(kCL), weight, bias, stride, padding, dilation,
                                 false, {0, 0}, groups)
                     .contiguous(kCL);
  if (g.identity_pool) {
    y = with_canonical_strides(y, kCL).relu_();
    return {y, at::empty(y.sizes(), y.options().dtype(at::kByte).memory_format(kCL)).zero_()};
  }
  at::Tensor out = at::empty({g.n, g.c_out, g.out_h, g.out_w}, y.options().memory_format(kCL));
  at::Tensor sw = at::empty(out.sizes(), out.options().dtype(at::kByte).memory_format(kCL));
  const int64_t total = out.numel();
  if (total == 0) return {out, sw};
  const auto p = make_params(g);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(),
                                  "conv_relu_pool_cuda", [&] {
    relu_pool_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        y.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        sw.mutable_data_ptr<uint8_t>(), p, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, sw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_pool_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& out, const at::Tensor& switches, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    bool ceil_mode, std::array<bool, 3> output_mask) {
  const auto g = check_conv_relu_pool(x, weight, c10::nullopt, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode);
  check_conv_relu_pool_backward(g, grad_out, x, out, switches);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor go = grad_out.contiguous(kCL);
  const at::Tensor o = out.contiguous(kCL);
  const at::Tensor s = switches.contiguous(kCL);
  const at::Tensor masked = at::where(o <= 0, at::zeros({}, go.options()), go);
  at::Tensor grad_bias = output_mask[2] ? masked.sum({0, 2, 3}, false, at::kFloat).to(x.scalar_type())
                                        : at::empty({0}, x.options());
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_w = at::empty({0}, x.options());
  if (!output_mask[0] && !output_mask[1]) return {grad_x, grad_w, grad_bias};
  if (g.n == 0) {
    if (output_mask[0]) grad_x = at::empty(x.sizes(), x.options().memory_format(kCL)).zero_();
    if (output_mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
    return {grad_x, grad_w, grad_bias};
  }
  at::Tensor gconv;
  if (g.identity_pool) {
    gconv = masked.contiguous(kCL);
  } else {
    gconv = at::empty({g.n, g.c_out, g.conv_h, g.conv_w}, go.options().memory_format(kCL));
    const int64_t total = gconv.numel();
    const auto p = make_params(g);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(),
                                    "conv_relu_pool_backward_cuda", [&] {
      conv_grad_gather_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), o.const_data_ptr<scalar_t>(), s.const_data_ptr<uint8_t>(),
          gconv.mutable_data_ptr<scalar_t>(), p, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  conv_backward_from_conv_grad(gconv, x, weight, stride, padding, dilation, groups, output_mask,
                               grad_x, grad_w);
  return {grad_x, grad_w, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) {
  m.impl("conv_relu_pool", &conv_relu_pool_cuda);
  m.impl("_conv_relu_pool_backward", &conv_relu_pool_backward_cuda);
}

}  // namespace cnnvis
