// What every CUDA launcher shares: the block size, the grid size, the
// grid-stride loop, the launch of a one-dimensional kernel, the dtypes the
// kernels are compiled for, the index of an NHWC element (and of the pooled
// windows a gather over them reads), the checks of a CUDA kernel's input,
// and the backend type the op drivers of the <op>.h headers take (see
// conv_relu_pool.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <utility>

#include "../pool_window.h"

namespace cnnvis {

// Threads per block of the one-dimensional kernels.
constexpr int kThreads = 256;

// Blocks for `total` elements, one thread each, capped at 32 blocks per SM
// (the grid-stride loop covers the rest); at least one.
inline unsigned blocks_for(int64_t total) {
  const int64_t max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 32;
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, max_blocks)));
}

// The grid-stride loop: `i` runs over [0, n) across every thread of the grid.
#define CNNVIS_CUDA_KERNEL_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Runs `kernel` over `total` elements (blocks_for(total) blocks of kThreads)
// on the current stream and checks the launch; nothing when total is 0.
template <typename... Params, typename... Args>
void launch_1d(void (*kernel)(Params...), int64_t total, Args&&... args) {
  if (total <= 0) return;
  kernel<<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The dtypes of the CUDA kernels: float32, float64, float16 and bfloat16
// (the last two compare and accumulate in float, cuda_acc_t).
#define CNNVIS_DISPATCH_CUDA_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <typename T>
using cuda_acc_t = at::acc_type<T, /*is_cuda=*/true>;

// The coordinates of flat index i of an NHWC (N, H, W, C) tensor.
struct NHWCIndex {
  int64_t n, h, w, c;
};
__device__ __forceinline__ NHWCIndex nhwc_index(int64_t i, int64_t H, int64_t W, int64_t C) {
  NHWCIndex e;
  e.c = i % C;
  int64_t r = i / C;
  e.w = r % W;
  r /= W;
  e.h = r % H;
  e.n = r / H;
  return e;
}

// How a thread that gathers conv-output element i (NHWC, C channels) from the
// pooled windows containing it reads them: the element's coordinates, the
// windows, and the offset of its image and channel in the pooled maps (NHWC).
struct PooledGather {
  NHWCIndex e;
  WindowRange win;
  int64_t base;
};
__device__ __forceinline__ PooledGather pooled_gather(int64_t i, const PoolWindow& pool,
                                                      int64_t C) {
  PooledGather q;
  q.e = nhwc_index(i, pool.in_h, pool.in_w, C);
  q.win = pool.windows_containing(q.e.h, q.e.w);
  q.base = q.e.n * pool.out_h * pool.out_w * C + q.e.c;
  return q;
}

// flag[0] = 1 if a switch of the pooled map (NHWC, C channels, `total`
// switches) points outside its window or outside the map. (A template, so
// that every .cu that includes this header may instantiate it.)
template <typename Switch>
__global__ void bad_switch_kernel(const Switch* __restrict__ sw, PoolWindow pool, int64_t C,
                                  int64_t total, int* __restrict__ flag) {
  CNNVIS_CUDA_KERNEL_LOOP(i, total) {
    const NHWCIndex e = nhwc_index(i, pool.out_h, pool.out_w, C);
    int64_t y, x;
    if (!pool.switch_position(e.h, e.w, sw[i], &y, &x)) flag[0] = 1;
  }
}

// Raises bad_switch() if a switch of `sw` (NHWC, C channels) points outside
// its window or outside the map, which a gather would silently drop (one
// device-to-host copy).
inline void check_switches(const at::Tensor& sw, const PoolWindow& pool, int64_t C) {
  if (sw.numel() == 0) return;
  auto flag = at::zeros({1}, sw.options().dtype(at::kInt));
  launch_1d(bad_switch_kernel<uint8_t>, sw.numel(), sw.const_data_ptr<uint8_t>(), pool, C, sw.numel(),
            flag.mutable_data_ptr<int>());
  if (flag.item<int>() != 0) bad_switch();
}

// A tensor a CUDA kernel reads: on a CUDA device, float32, float64, float16
// or bfloat16. The messages name the argument.
inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                       t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
                   name, ": dtype ", t.scalar_type(),
                   " is not supported on CUDA (float32, float64, float16, bfloat16)");
}

// The plane of the (N, C, H, W) tensor `t` can be indexed with int (the
// tiled kernels do): H and W fit in int32.
inline void check_plane_fits_int32(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.size(2) <= INT32_MAX && t.size(3) <= INT32_MAX, name,
                    ": H and W must fit in int32, got ", t.sizes());
}

// The base of every op's CUDA backend.
struct CudaBackend {
  static void check(const at::Tensor& t, const char* name) { check_cuda_tensor(t, name); }
};

}  // namespace cnnvis
