// CUDA backend of conv_relu_pool (the op drivers of conv_relu_pool.h run the
// convolution in cuDNN through ATen, channels-last, bias fused). ReLU + max
// pooling + argmax is one kernel reading the conv output once, one thread
// per pooled value, running the same relu_max_window body as the CPU
// backend. The backward rebuilds the conv-output gradient with
// gather_conv_grad (one thread per conv-output element, each written once,
// no atomics, deterministic); the driver then calls ATen's convolution
// backward. half and bfloat16 compare and accumulate in float.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../conv_relu_pool.h"
#include "../conv_relu_pool_common.h"
#include "cuda_helpers.h"

namespace cnnvis {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// y: the conv output, out and sw: the pooled map and its switches (NHWC, C
// channels).
template <typename scalar_t>
__global__ void relu_pool_forward_kernel(const scalar_t* __restrict__ y, scalar_t* __restrict__ out,
                                         uint8_t* __restrict__ sw, PoolWindow pool, int64_t C,
                                         int64_t total) {
  using acc_t = cuda_acc_t<scalar_t>;
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const NHWCIndex e = nhwc_index(i, pool.out_h, pool.out_w, C);
    int64_t hstart, h0, h1, wstart, w0, w1;
    pool.window_rows(e.h, &hstart, &h0, &h1);
    pool.window_cols(e.w, &wstart, &w0, &w1);
    acc_t best;
    uint8_t s;
    relu_max_window<scalar_t, acc_t>(y + e.n * pool.in_h * pool.in_w * C + e.c, pool.in_w * C, C,
                                     h0, h1, w0, w1, hstart, wstart, pool.kw, 1, &best, &s);
    out[i] = static_cast<scalar_t>(best);
    sw[i] = s;
  }
}

// gconv: the gradient of the conv output (NHWC), from grad_out, out and the
// switches (the pooled maps).
template <typename scalar_t>
__global__ void conv_grad_gather_kernel(const scalar_t* __restrict__ gout,
                                        const scalar_t* __restrict__ out,
                                        const uint8_t* __restrict__ sw,
                                        scalar_t* __restrict__ gconv, PoolWindow pool, int64_t C,
                                        int64_t total) {
  using acc_t = cuda_acc_t<scalar_t>;
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const PooledGather q = pooled_gather(i, pool, C);
    acc_t acc;
    gather_conv_grad<scalar_t, acc_t>(gout + q.base, out + q.base, sw + q.base, pool.out_w * C, C,
                                      pool, q.e.h, q.e.w, q.win, 1, &acc);
    gconv[i] = static_cast<scalar_t>(acc);
  }
}

struct ConvReluPoolCuda : CudaBackend {
  static void relu_max_pool(const ConvPoolGeometry& g, const at::Tensor& y, at::Tensor& out,
                            at::Tensor& sw) {
    CNNVIS_DISPATCH_CUDA_FLOATING(y.scalar_type(), "conv_relu_pool_cuda", [&] {
      launch_1d(relu_pool_forward_kernel<scalar_t>, out.numel(), y.const_data_ptr<scalar_t>(),
                out.mutable_data_ptr<scalar_t>(), sw.mutable_data_ptr<uint8_t>(), g.pool(),
                g.c_out, out.numel());
    });
  }

  // No formulation straight from the pooled maps: the dense cuDNN one wins
  // on a GPU.
  static bool conv_grads(const ConvPoolGeometry&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                         at::IntArrayRef, at::IntArrayRef, int64_t, std::array<bool, 3>,
                         at::Tensor&, at::Tensor&) {
    return false;
  }

  static at::Tensor conv_output_grad(const ConvPoolGeometry& g, const at::Tensor& go,
                                     const at::Tensor& o, const at::Tensor& s) {
    check_switches(s, g.pool(), g.c_out);  // the gather would drop a bad one
    at::Tensor gconv =
        at::empty({g.n, g.c_out, g.conv_h, g.conv_w}, go.options().memory_format(kCL));
    CNNVIS_DISPATCH_CUDA_FLOATING(go.scalar_type(), "conv_relu_pool_backward_cuda", [&] {
      launch_1d(conv_grad_gather_kernel<scalar_t>, gconv.numel(), go.const_data_ptr<scalar_t>(),
                o.const_data_ptr<scalar_t>(), s.const_data_ptr<uint8_t>(),
                gconv.mutable_data_ptr<scalar_t>(), g.pool(), g.c_out, gconv.numel());
    });
    return gconv;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnvis, CUDA, m) { register_conv_relu_pool<ConvReluPoolCuda>(m); }

}  // namespace cnnvis
