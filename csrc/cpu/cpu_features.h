// Run-time CPU feature dispatch shared by the CPU launchers: a kernel keeps a
// generic copy and, on x86-64 with GCC/Clang, a copy compiled for AVX2 + FMA
// (CNNVIS_TARGET_AVX2) that is picked when cpu_has_avx2_fma() says so, and
// possibly one for AVX-512 (CNNVIS_TARGET_AVX512, cpu_has_avx512f()).
//
// The environment variable CNNVIS_CPU_ISA caps the choice, read once per
// process: "generic", "avx2" or "avx512" (the default: the best this CPU
// runs). The tests use it to check every copy on one machine; users can use
// it on a CPU whose 512-bit units slow its clock.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CNNVIS_X86_DISPATCH 1
#define CNNVIS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define CNNVIS_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define CNNVIS_X86_DISPATCH 0
#define CNNVIS_TARGET_AVX2
#define CNNVIS_TARGET_AVX512
#endif

#if defined(__GNUC__)
#define CNNVIS_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define CNNVIS_ALWAYS_INLINE inline
#endif

namespace cnnvis {

// 0 generic, 1 AVX2 + FMA, 2 AVX-512F: the most CNNVIS_CPU_ISA allows (an
// unknown value allows everything).
inline int cpu_isa_cap() {
  static const int cap = [] {
    const char* e = std::getenv("CNNVIS_CPU_ISA");
    if (e == nullptr) return 2;
    if (std::strcmp(e, "generic") == 0) return 0;
    if (std::strcmp(e, "avx2") == 0) return 1;
    return 2;
  }();
  return cap;
}

// Whether this CPU runs AVX2 and FMA instructions (checked once).
inline bool cpu_has_avx2_fma() {
#if CNNVIS_X86_DISPATCH
  static const bool ok = cpu_isa_cap() >= 1 && __builtin_cpu_supports("avx2") &&
                         __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Whether this CPU runs AVX-512F (and AVX2 + FMA), checked once.
inline bool cpu_has_avx512f() {
#if CNNVIS_X86_DISPATCH
  static const bool ok =
      cpu_isa_cap() >= 2 && __builtin_cpu_supports("avx512f") && cpu_has_avx2_fma();
  return ok;
#else
  return false;
#endif
}

}  // namespace cnnvis
