// The _C Python module: importing it loads every op's registration
// (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in the other translation units)
// and exposes, through pybind11, the facts of the build and the argument
// checks of every op (bound by its <op>.cpp). Python's fake kernels call the
// checks on the metadata of their (fake) tensors, so an op raises the same
// error, with the message written once in C++, eagerly and under
// FakeTensorMode / torch.compile.
#include <torch/extension.h>

#include "python_checks.h"

namespace {

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cnnvis_ext compiled kernels (ops are registered under torch.ops.cnnvis)";
  m.def("build_info", &build_info,
        "Facts about this build: version, whether CUDA kernels were compiled, the CUDA "
        "version they target, the torch version compiled against.");
  cnnvis::bind_conv_relu_pool_checks(m);
  cnnvis::bind_unpool_conv_transpose_checks(m);
  cnnvis::bind_total_variation_checks(m);
  cnnvis::bind_gaussian_blur_checks(m);
  cnnvis::bind_regularize_checks(m);
}
