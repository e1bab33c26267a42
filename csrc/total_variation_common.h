// Numerical body of total_variation, shared by the CPU launcher
// (cpu/total_variation_kernel.cpp, which calls it over whole rows) and the
// CUDA launcher (cuda/total_variation_kernel.cu, one pixel per thread).
// No ATen types.
//
// Definitions, for one (H, W) plane, with forward differences that are zero
// past the last column / row:
//   dx[i,j] = x[i,j+1] - x[i,j]   (0 for j = W-1)
//   dy[i,j] = x[i+1,j] - x[i,j]   (0 for i = H-1)
//   isotropic   term[i,j] = (dx^2 + dy^2 + eps)^(beta/2)
//   anisotropic term[i,j] = |dx| + |dy|
// With a = d term / d dx and b = d term / d dy at every pixel, the gradient is
//   grad[i,j] = a[i,j-1] + b[i-1,j] - a[i,j] - b[i,j]
// (a[i,-1] = b[-1,j] = 0), so one pass over rows that keeps the previous row's
// b gives value and gradient together.
#pragma once

#include <cmath>

#include "macros.h"

namespace cnnvis {

// Which formula a launch uses: isotropic with beta = 2 or beta = 1 (no
// pow()), isotropic with any other beta, or anisotropic.
enum class TVKind { kBeta2, kBeta1, kGeneral, kAniso };

template <typename A>
HOST_DEVICE_INLINE A tv_abs(A v) {
  return v < A(0) ? -v : v;
}

// sign with sign(0) = 0, the derivative autograd uses for |v|.
template <typename A>
HOST_DEVICE_INLINE A tv_sign(A v) {
  return static_cast<A>(v > A(0)) - static_cast<A>(v < A(0));  // branch-free, vectorizes
}

// pow in the accumulation type (powf for float on the host, not pow(double)).
template <typename A>
HOST_DEVICE_INLINE A tv_pow(A base, A e) {
#if defined(__CUDA_ARCH__)
  return pow(base, e);
#else
  return std::pow(base, e);
#endif
}

// t = dx^2 + dy^2 + eps, the argument of the isotropic power.
template <typename A>
HOST_DEVICE_INLINE A tv_t(A dx, A dy, A eps) {
  return dx * dx + dy * dy + eps;
}

// One TV term from its differences. t = tv_t(dx, dy, eps) and root = sqrt(t)
// are passed in (root is only read for kBeta1, t is ignored for kAniso) so
// that a caller can compute them in vectorized loops. *a and *b receive the
// derivatives of the term w.r.t. dx and dy (only when WithGrad).
template <TVKind K, bool WithGrad, typename A>
HOST_DEVICE_INLINE A tv_term(A dx, A dy, A t, A root, A half_beta, A beta, A* a, A* b) {
  A v, g;
  if (K == TVKind::kBeta2) {
    v = t;
    g = A(2);
  } else if (K == TVKind::kBeta1) {
    v = root;
    g = A(1) / root;
  } else if (K == TVKind::kGeneral) {
    v = tv_pow(t, half_beta);
    // beta * t^(beta/2 - 1), as autograd's pow backward gives it, from v when
    // v / t is exact: not where t is 0, nor where t or v overflowed (inf / inf
    // would make NaN where autograd gives 0 or inf). v - v == 0: v is finite.
    if (WithGrad)
      g = t > A(0) && v - v == A(0) ? beta * v / t : beta * tv_pow(t, half_beta - A(1));
  } else {
    if (WithGrad) {
      *a = tv_sign(dx);
      *b = tv_sign(dy);
    }
    return tv_abs(dx) + tv_abs(dy);
  }
  if (WithGrad) {
    *a = g * dx;
    *b = g * dy;
  }
  return v;
}

// The gradient at one pixel from the derivatives of the three terms that
// contain it, scaled by the upstream gradient.
template <typename A>
HOST_DEVICE_INLINE A tv_grad_at(A a_left, A b_up, A a, A b, A scale) {
  return scale * ((a_left + b_up) - (a + b));
}

}  // namespace cnnvis
