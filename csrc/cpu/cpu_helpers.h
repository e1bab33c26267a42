// What the CPU launchers share besides the instruction-set dispatch (isa.h):
// the check of a CPU kernel's input and of pooling switches, the backend type the op drivers of the
// <op>.h headers take (see conv_relu_pool.h), and how work is cut for
// at::parallel_for.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../pool_window.h"

namespace cnnvis {

// A tensor a CPU kernel reads: on the CPU, float32 or float64. The messages
// name the argument.
inline void check_cpu_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   ": dtype ", t.scalar_type(), " is not supported on CPU (float32, float64)");
}

// The base of every op's CPU backend.
struct CpuBackend {
  static void check(const at::Tensor& t, const char* name) { check_cpu_tensor(t, name); }
};

// The at::parallel_for grain for items of `work` elementary steps each:
// enough items per task that a task does about `target` steps.
inline int64_t grain_for(int64_t work, int64_t target = 32768) {
  return std::max<int64_t>(1, target / std::max<int64_t>(1, work));
}

// Raises bad_switch() if a switch of the pooled map (NHWC: `rows` = N * H_p
// rows of pool.out_w * C uint8 switches) points outside its window or
// outside the map: a gather would silently drop that value. When every
// window lies inside the map (no pool padding, no ceil-mode overhang) only
// the window bound needs checking: one vectorizable max over the switches.
inline void check_switches(const uint8_t* sp, const PoolWindow& pool, int64_t rows, int64_t C) {
  if (sp == nullptr) return;
  const int64_t PH = pool.out_h, PW = pool.out_w;
  const int64_t area = pool.area();
  const bool inside = pool.windows_inside();
  std::atomic<bool> bad{false};
  at::parallel_for(0, rows, grain_for(PW * C, 65536), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end && !bad; ++row) {
      const uint8_t* s = sp + row * PW * C;
      if (inside) {
        uint8_t m = 0;
        for (int64_t i = 0; i < PW * C; ++i) m = std::max(m, s[i]);
        if (m >= area) bad = true;
        continue;
      }
      const int64_t oh = row % PH;
      for (int64_t ow = 0; ow < PW; ++ow)
        for (int64_t c = 0; c < C; ++c) {
          int64_t y, x;
          if (!pool.switch_position(oh, ow, s[ow * C + c], &y, &x)) bad = true;
        }
    }
  });
  if (bad) bad_switch();
}

// How the planes of a plane-by-plane kernel are cut into bands of rows, the
// work items of at::parallel_for (plane, band): one band per plane when there
// are enough planes, else enough bands for every thread to get about four
// items, each of at least min_rows rows.
struct RowBands {
  int64_t count, rows;  // bands per plane, rows per band (the last may have fewer)
};
inline RowBands row_bands(int64_t planes, int64_t H, int64_t min_rows) {
  const int64_t threads = at::get_num_threads();
  int64_t bands = 1;
  if (planes < 4 * threads)
    bands = std::max<int64_t>(
        1, std::min<int64_t>((4 * threads + planes - 1) / planes, H / min_rows));
  const int64_t rows = (H + bands - 1) / bands;
  return {(H + rows - 1) / rows, rows};
}

}  // namespace cnnvis
