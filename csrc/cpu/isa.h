// CPU feature detection and the one dispatch idiom of the CPU kernels that
// have a copy per instruction set.
//
// A kernel is a struct with a CNNVIS_ALWAYS_INLINE member template
//   template <CpuIsa I, ...> static R run(args)
// and the most capable instruction set it has a copy for, kMaxIsa.
// run_on_isa<Kernel>(isa, args...) calls the copy of run compiled for the
// best instruction set both `isa` and the kernel allow: a generic copy
// (built for the baseline target), and on x86-64 with GCC/Clang one compiled
// for AVX2 + FMA and one for AVX-512F. The body is inlined into each copy, so
// each is vectorized for its own target; I tells the body which one it is in
// (vector widths, hand-written intrinsic paths).
//
// cpu_isa() is the best instruction set this CPU runs, capped by the
// environment variable CNNVIS_CPU_ISA ("generic", "avx2" or "avx512"; unset
// or anything else: no cap), read once per process. The tests use it to
// check every copy on one machine; users can use it on a CPU whose 512-bit
// units slow its clock.
#pragma once

#include <cstdlib>
#include <cstring>
#include <utility>

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

// A lambda in a kernel body is a function of its own, compiled for the
// baseline target unless it is inlined into the copy: mark it
// CNNVIS_INLINE_LAMBDA (after its parameter list).
#if defined(__GNUC__)
#define CNNVIS_ALWAYS_INLINE __attribute__((always_inline)) inline
#define CNNVIS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define CNNVIS_ALWAYS_INLINE inline
#define CNNVIS_INLINE_LAMBDA
#endif

namespace cnnvis {

enum class CpuIsa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The width of the vector types a copy uses (GCC vector extensions): the
// generic copy lowers 32-byte vectors to what the baseline target has.
constexpr int vector_bytes(CpuIsa isa) { return isa == CpuIsa::kAvx512 ? 64 : 32; }

// The best instruction set this CPU runs that CNNVIS_CPU_ISA allows.
inline CpuIsa cpu_isa() {
  static const CpuIsa best = [] {
    const char* e = std::getenv("CNNVIS_CPU_ISA");
    CpuIsa cap = CpuIsa::kAvx512;
    if (e != nullptr && std::strcmp(e, "generic") == 0) cap = CpuIsa::kGeneric;
    if (e != nullptr && std::strcmp(e, "avx2") == 0) cap = CpuIsa::kAvx2;
#if CNNVIS_X86_DISPATCH
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (cap >= CpuIsa::kAvx512 && avx2 && __builtin_cpu_supports("avx512f"))
      return CpuIsa::kAvx512;
    if (cap >= CpuIsa::kAvx2 && avx2) return CpuIsa::kAvx2;
#endif
    (void)cap;
    return CpuIsa::kGeneric;
  }();
  return best;
}

namespace isa_copies {

template <typename Kernel, typename... Args>
decltype(auto) generic(Args&&... args) {
  return Kernel::template run<CpuIsa::kGeneric>(std::forward<Args>(args)...);
}
#if CNNVIS_X86_DISPATCH
template <typename Kernel, typename... Args>
CNNVIS_TARGET_AVX2 decltype(auto) avx2(Args&&... args) {
  return Kernel::template run<CpuIsa::kAvx2>(std::forward<Args>(args)...);
}
template <typename Kernel, typename... Args>
CNNVIS_TARGET_AVX512 decltype(auto) avx512(Args&&... args) {
  return Kernel::template run<CpuIsa::kAvx512>(std::forward<Args>(args)...);
}
#endif

}  // namespace isa_copies

// Kernel::run<I>(args...) in its copy for I, the best of `isa` and
// Kernel::kMaxIsa.
template <typename Kernel, typename... Args>
CNNVIS_ALWAYS_INLINE decltype(auto) run_on_isa(CpuIsa isa, Args&&... args) {
#if CNNVIS_X86_DISPATCH
  if constexpr (Kernel::kMaxIsa >= CpuIsa::kAvx512) {
    if (isa >= CpuIsa::kAvx512) return isa_copies::avx512<Kernel>(std::forward<Args>(args)...);
  }
  if constexpr (Kernel::kMaxIsa >= CpuIsa::kAvx2) {
    if (isa >= CpuIsa::kAvx2) return isa_copies::avx2<Kernel>(std::forward<Args>(args)...);
  }
#endif
  (void)isa;
  return isa_copies::generic<Kernel>(std::forward<Args>(args)...);
}

}  // namespace cnnvis
