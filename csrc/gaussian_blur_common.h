// Numerical body of gaussian_blur, shared by the CPU launcher
// (cpu/gaussian_blur_kernel.cpp, row-vectorized) and the CUDA launcher
// (cuda/gaussian_blur_kernel.cu, one output per thread). No ATen types.
//
// The blur of one (H, W) plane with a 1-D kernel k of radius r (size 2r+1):
//   y = Bv Bh x,  B = K R
// along each axis, where R pads by r with reflection (torch "reflect", the
// edge sample is not repeated: ... x2 x1 | x0 x1 x2 ... x_{n-1} | x_{n-2} ...)
// and K is the valid correlation with k. When r >= n, "reflect" padding is
// undefined in PyTorch; here reflection is repeated (the index is folded with
// period 2(n-1), and every index maps to 0 when n = 1), which extends the
// definition continuously and keeps the blur a normalized average of image
// samples. The adjoint (the backward) is B^T = R^T K^T: a zero-padded
// correlation with k followed by folding the padded samples back onto the
// pixels they were copied from.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace cnnvis {

// Position in [0, n) of padded index p under (repeated) reflection.
HOST_DEVICE_INLINE int64_t blur_fold(int64_t p, int64_t n) {
  if (n <= 1) return 0;
  if (p >= 0 && p < n) return p;
  const int64_t period = 2 * (n - 1);
  int64_t m = p % period;
  if (m < 0) m += period;
  return m < n ? m : period - m;
}

// The normalized Gaussian taps w[0 .. 2r] for sigma, as
// torchvision.transforms.functional.gaussian_blur builds them:
// exp(-0.5 * ((i - r) / sigma)^2) / sum. sigma = 0 gives the identity
// (a single 1 at the centre).
template <typename A>
HOST_DEVICE_INLINE void gaussian_weights(double sigma, int64_t radius, A* w) {
  if (!(sigma > 0)) {
    for (int64_t i = 0; i <= 2 * radius; ++i) w[i] = A(i == radius ? 1 : 0);
    return;
  }
  double total = 0;
  for (int64_t i = 0; i <= 2 * radius; ++i) {
    const double d = static_cast<double>(i - radius) / sigma;
    total += exp(-0.5 * d * d);
  }
  for (int64_t i = 0; i <= 2 * radius; ++i) {
    const double d = static_cast<double>(i - radius) / sigma;
    w[i] = static_cast<A>(exp(-0.5 * d * d) / total);
  }
}

// One output of the 1-D blur along an axis of length n (stride s between
// samples): sum_t w[r + t] * line[fold(j + t)].
template <typename T, typename A>
HOST_DEVICE_INLINE A blur_tap_sum(const T* line, int64_t s, int64_t n, int64_t j, int64_t radius,
                                  const A* w) {
  A acc = A(0);
  for (int64_t t = -radius; t <= radius; ++t)
    acc += w[radius + t] * static_cast<A>(line[blur_fold(j + t, n) * s]);
  return acc;
}

// Zero-padded correlation at padded position p (in [-r, n-1+r]):
// sum_t w[r + t] * line[p - t] over the samples inside [0, n).
template <typename T, typename A>
HOST_DEVICE_INLINE A blur_zero_padded_at(const T* line, int64_t s, int64_t n, int64_t p,
                                         int64_t radius, const A* w) {
  A acc = A(0);
  const int64_t t0 = p - (n - 1) > -radius ? p - (n - 1) : -radius;  // p - t <= n-1
  const int64_t t1 = p < radius ? p : radius;                         // p - t >= 0
  for (int64_t t = t0; t <= t1; ++t) acc += w[radius + t] * static_cast<A>(line[(p - t) * s]);
  return acc;
}

// One output of the 1-D adjoint at pixel j: the zero-padded correlation at j
// plus, at every padded position outside [0, n) that reflects onto j, the
// correlation there.
template <typename T, typename A>
HOST_DEVICE_INLINE A blur_adjoint_at(const T* line, int64_t s, int64_t n, int64_t j,
                                     int64_t radius, const A* w) {
  A acc = blur_zero_padded_at(line, s, n, j, radius, w);
  if (n == 1 || j <= radius || j >= n - 1 - radius) {
    for (int64_t q = -radius; q < 0; ++q)
      if (blur_fold(q, n) == j) acc += blur_zero_padded_at(line, s, n, q, radius, w);
    for (int64_t q = n; q < n + radius; ++q)
      if (blur_fold(q, n) == j) acc += blur_zero_padded_at(line, s, n, q, radius, w);
  }
  return acc;
}

}  // namespace cnnvis
