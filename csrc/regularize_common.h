// Numerical body of regularize_, shared by the CPU launcher
// (cpu/regularize_kernel.cpp) and the CUDA launcher
// (cuda/regularize_kernel.cu). No ATen types.
//
// Per element:   x <- (x + lr * grad) * (1 - decay)           (reg_update)
// per pixel p:   norm(p) = sqrt(sum_c x[c,p]^2)               (reg_pixel_stats)
//                contrib(p) = sum_c x[c,p] * grad[c,p]
// per image:     threshold = torch.quantile(values, pct / 100, interpolation="linear")
//                (quantile_rank + quantile_lerp, in x's dtype like torch)
// per element:   x <- clamp(zeroed ? 0 : x, lo, hi)           (reg_finish)
#pragma once

#include <cstdint>

#include "macros.h"

namespace cnnvis {

template <typename A>
HOST_DEVICE_INLINE A reg_update(A x, A g, A lr, A keep, bool add, bool scale) {
  A v = add ? x + lr * g : x;
  return scale ? v * keep : v;
}

// torch.clamp(v, lo, hi) for lo <= hi: NaN stays NaN.
template <typename A>
HOST_DEVICE_INLINE A reg_clamp(A v, A lo, A hi) {
  const A t = v < lo ? lo : v;
  return t > hi ? hi : t;
}

template <typename A>
HOST_DEVICE_INLINE A reg_finish(A v, bool zero, A lo, A hi) {
  return reg_clamp(zero ? A(0) : v, lo, hi);
}

// Accumulates one channel's share of a pixel's squared norm and contribution.
template <typename A>
HOST_DEVICE_INLINE void reg_pixel_stats(A x, A g, A* sq, A* contrib) {
  *sq += x * x;
  *contrib += x * g;
}

// Linear-interpolation quantile position of q in m sorted values, computed in
// the values' dtype as torch.quantile does: rank = q * (m - 1),
// below = trunc(rank), above = ceil(rank), weight = rank - below.
template <typename A>
HOST_DEVICE_INLINE void quantile_rank(int64_t m, A q, int64_t* below, int64_t* above, A* weight) {
  const A rank = q * static_cast<A>(m - 1);
  int64_t b = static_cast<int64_t>(rank);
  if (b > m - 1) b = m - 1;
  int64_t a = (static_cast<A>(b) < rank) ? b + 1 : b;
  if (a > m - 1) a = m - 1;
  *below = b;
  *above = a;
  *weight = rank - static_cast<A>(b);
}

// torch.lerp(below, above, weight).
template <typename A>
HOST_DEVICE_INLINE A quantile_lerp(A below, A above, A weight) {
  const A w_abs = weight < A(0) ? -weight : weight;
  return w_abs < A(0.5) ? below + weight * (above - below)
                        : above - (above - below) * (A(1) - weight);
}

}  // namespace cnnvis
