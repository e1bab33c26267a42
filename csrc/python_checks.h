// What an <op>.cpp needs to bind its argument checks into the _C module, for
// Python's fake kernels (cnnvis_ext/ops/<op>.py): tensors arrive as
// (sizes, strides, dtype, device) tuples (cnnvis_ext/ops/common.py, meta()),
// and a failed check leaves as Python's ValueError / TypeError with the
// message the dispatcher gives for the same check on real tensors.
#pragma once

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"

namespace cnnvis {

using IntList = std::vector<int64_t>;
using PyMeta = std::tuple<IntList, IntList, at::ScalarType, c10::Device>;

inline TensorMeta meta(const PyMeta& m) {
  return TensorMeta(std::get<0>(m), std::get<1>(m), std::get<2>(m), std::get<3>(m));
}

inline std::optional<TensorMeta> meta(const std::optional<PyMeta>& m) {
  if (!m.has_value()) return std::nullopt;
  return meta(*m);
}

// PythonCheck<&f>::call is f with c10 errors translated into Python's.
template <auto F>
struct PythonCheck;

template <typename R, typename... Args, R (*F)(Args...)>
struct PythonCheck<F> {
  static R call(Args... args) {
    HANDLE_TH_ERRORS
    return F(std::forward<Args>(args)...);
    END_HANDLE_TH_ERRORS_PYBIND
  }
};

// Each adds the checks of its op to the module (defined in <op>.cpp).
void bind_conv_relu_pool_checks(pybind11::module_& m);
void bind_unpool_conv_transpose_checks(pybind11::module_& m);
void bind_total_variation_checks(pybind11::module_& m);
void bind_gaussian_blur_checks(pybind11::module_& m);
void bind_regularize_checks(pybind11::module_& m);

}  // namespace cnnvis
