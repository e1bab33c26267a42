// The _C Python module: importing it loads every op's registration
// (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in the other translation units)
// and exposes, through pybind11, the facts of the build and the argument
// checks of every op. Python's fake kernels call the checks on the metadata
// of their (fake) tensors, so an op raises the same error, with the message
// written once in C++, eagerly and under FakeTensorMode / torch.compile.
#include <torch/csrc/Exceptions.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "op_checks.h"

namespace {

using cnnvis::TensorMeta;
using IntList = std::vector<int64_t>;

// A tensor as Python describes it to the checks: (sizes, strides, dtype,
// device); see cnnvis_ext/ops/common.py, meta().
using PyMeta = std::tuple<IntList, IntList, at::ScalarType, c10::Device>;

TensorMeta meta(const PyMeta& m) {
  return TensorMeta(std::get<0>(m), std::get<1>(m), std::get<2>(m), std::get<3>(m));
}

std::optional<TensorMeta> meta(const std::optional<PyMeta>& m) {
  if (!m.has_value()) return std::nullopt;
  return meta(*m);
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["version"] = CNNVIS_VERSION;
  d["cuda_compiled"] = static_cast<bool>(CNNVIS_WITH_CUDA);
  d["cuda_version"] = CNNVIS_WITH_CUDA ? pybind11::object(pybind11::str(CNNVIS_CUDA_VERSION))
                                       : pybind11::object(pybind11::none());
  d["torch_version"] = CNNVIS_TORCH_VERSION;
  d["compiler"] =
#if defined(__clang__)
      "clang " __clang_version__;
#elif defined(__GNUC__)
      "gcc " __VERSION__;
#else
      "unknown";
#endif
  d["openmp"] =
#if defined(_OPENMP)
      true;
#else
      false;
#endif
  return d;
}

// Each binding runs one op's check and returns what the fake kernel needs.
// HANDLE_TH_ERRORS turns c10::ValueError / TypeError into Python's, with the
// message the dispatcher gives for the same check.

std::tuple<IntList, IntList> conv_relu_pool_check(
    const PyMeta& x, const PyMeta& weight, const std::optional<PyMeta>& bias,
    const IntList& stride, const IntList& padding, const IntList& dilation, int64_t groups,
    const IntList& pool_kernel, const IntList& pool_stride, const IntList& pool_padding,
    bool ceil_mode) {
  HANDLE_TH_ERRORS
  const auto g = cnnvis::check_conv_relu_pool(meta(x), meta(weight), meta(bias), stride, padding,
                                              dilation, groups, pool_kernel, pool_stride,
                                              pool_padding, ceil_mode);
  return {IntList{g.n, g.c_out, g.out_h, g.out_w}, IntList{g.conv_h, g.conv_w}};
  END_HANDLE_TH_ERRORS_PYBIND
}

void conv_relu_pool_backward_check(const PyMeta& grad_out, const PyMeta& x, const PyMeta& weight,
                                   const PyMeta& out, const PyMeta& switches,
                                   const IntList& stride, const IntList& padding,
                                   const IntList& dilation, int64_t groups,
                                   const IntList& pool_kernel, const IntList& pool_stride,
                                   const IntList& pool_padding, bool ceil_mode) {
  HANDLE_TH_ERRORS
  const auto g = cnnvis::check_conv_relu_pool(meta(x), meta(weight), std::nullopt, stride,
                                              padding, dilation, groups, pool_kernel,
                                              pool_stride, pool_padding, ceil_mode);
  cnnvis::check_conv_relu_pool_backward(g, meta(grad_out), meta(x), meta(out), meta(switches));
  END_HANDLE_TH_ERRORS_PYBIND
}

void unpool_conv_transpose_check(const PyMeta& p, const std::optional<PyMeta>& switches,
                                 const PyMeta& weight, const IntList& stride,
                                 const IntList& padding, const IntList& dilation, int64_t groups,
                                 const IntList& pool_kernel, const IntList& pool_stride,
                                 const IntList& pool_padding, const IntList& output_size,
                                 const IntList& input_size, const std::string& algorithm) {
  HANDLE_TH_ERRORS
  cnnvis::check_unpool_conv_transpose(meta(p), meta(switches), meta(weight), stride, padding,
                                      dilation, groups, pool_kernel, pool_stride, pool_padding,
                                      output_size, input_size, algorithm);
  END_HANDLE_TH_ERRORS_PYBIND
}

void unpool_conv_transpose_backward_check(const PyMeta& grad_out, const PyMeta& p,
                                          const std::optional<PyMeta>& switches,
                                          const PyMeta& weight, const IntList& stride,
                                          const IntList& padding, const IntList& dilation,
                                          int64_t groups, const IntList& pool_kernel,
                                          const IntList& pool_stride,
                                          const IntList& pool_padding,
                                          const IntList& output_size,
                                          const IntList& input_size) {
  HANDLE_TH_ERRORS
  const auto g = cnnvis::check_unpool_conv_transpose(
      meta(p), meta(switches), meta(weight), stride, padding, dilation, groups, pool_kernel,
      pool_stride, pool_padding, output_size, input_size, "auto");
  cnnvis::check_unpool_conv_transpose_backward(g, meta(grad_out), meta(p));
  END_HANDLE_TH_ERRORS_PYBIND
}

void total_variation_check(const PyMeta& x, double beta, double eps,
                           const std::string& reduction, const std::string& mode) {
  HANDLE_TH_ERRORS
  cnnvis::check_total_variation(meta(x), beta, eps, reduction, mode);
  END_HANDLE_TH_ERRORS_PYBIND
}

void total_variation_backward_check(const PyMeta& grad_out, const PyMeta& x, double beta,
                                    double eps, const std::string& reduction,
                                    const std::string& mode) {
  HANDLE_TH_ERRORS
  const auto o = cnnvis::check_total_variation(meta(x), beta, eps, reduction, mode);
  cnnvis::check_total_variation_grad_out(meta(grad_out), meta(x), o);
  END_HANDLE_TH_ERRORS_PYBIND
}

void gaussian_blur_check(const PyMeta& x, const PyMeta& sigma, int64_t kernel_size,
                         const std::string& x_name) {
  HANDLE_TH_ERRORS
  cnnvis::check_gaussian_blur(meta(x), meta(sigma), kernel_size, x_name.c_str());
  END_HANDLE_TH_ERRORS_PYBIND
}

void regularize_check(const PyMeta& x, const PyMeta& grad, double lr, double decay,
                      double blur_sigma, double norm_pct, double contrib_pct, double lo,
                      double hi) {
  HANDLE_TH_ERRORS
  cnnvis::check_regularize(meta(x), meta(grad), lr, decay, blur_sigma, norm_pct, contrib_pct, lo,
                           hi);
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cnnvis_ext compiled kernels (ops are registered under torch.ops.cnnvis)";
  m.def("build_info", &build_info,
        "Facts about this build: version, whether CUDA kernels were compiled, the CUDA "
        "version they target, the torch version compiled against.");

  // The checks: tensors are passed as (sizes, strides, dtype, device); each
  // raises the op's ValueError / TypeError or returns what the comment says.
  m.def("_conv_relu_pool_check", &conv_relu_pool_check,
        "conv_relu_pool's checks; returns the output size (N, C_out, H_p, W_p) and the size "
        "of the convolution output (H, W) that is pooled.");
  m.def("_conv_relu_pool_backward_check", &conv_relu_pool_backward_check,
        "_conv_relu_pool_backward's checks.");
  m.def("_unpool_conv_transpose_check", &unpool_conv_transpose_check,
        "unpool_conv_transpose's checks.");
  m.def("_unpool_conv_transpose_backward_check", &unpool_conv_transpose_backward_check,
        "_unpool_conv_transpose_backward's checks.");
  m.def("_total_variation_check", &total_variation_check,
        "total_variation's and total_variation_and_grad's checks.");
  m.def("_total_variation_backward_check", &total_variation_backward_check,
        "_total_variation_backward's checks.");
  m.def("_gaussian_blur_check", &gaussian_blur_check,
        "gaussian_blur's checks (x_name 'x') and _gaussian_blur_backward's (x_name 'grad_out'), "
        "all but sigma's values, which only the kernels read.");
  m.def("_regularize_check", &regularize_check, "regularize_'s checks.");
}
