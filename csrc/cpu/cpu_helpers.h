// What the CPU launchers share besides the instruction-set dispatch (isa.h):
// the check of a CPU kernel's input, the backend type the op drivers of the
// <op>.h headers take (see conv_relu_pool.h), and how work is cut for
// at::parallel_for.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

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
