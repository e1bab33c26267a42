// Run-time CPU feature dispatch shared by the CPU launchers: a kernel keeps a
// generic copy and, on x86-64 with GCC/Clang, a copy compiled for AVX2 + FMA
// (CNNVIS_TARGET_AVX2) that is picked when cpu_has_avx2_fma() says so.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CNNVIS_X86_DISPATCH 1
#define CNNVIS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define CNNVIS_X86_DISPATCH 0
#define CNNVIS_TARGET_AVX2
#endif

#if defined(__GNUC__)
#define CNNVIS_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define CNNVIS_ALWAYS_INLINE inline
#endif

namespace cnnvis {

// Whether this CPU runs AVX2 and FMA instructions (checked once).
inline bool cpu_has_avx2_fma() {
#if CNNVIS_X86_DISPATCH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace cnnvis
