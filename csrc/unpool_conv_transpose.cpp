// unpool_conv_transpose: one deconvnet (Zeiler & Fergus) step,
//   conv_transpose2d(unpool(relu(p) if rectify else p, switches), weight),
// and its backward. The schemas and the argument checks are defined here,
// once; the CPU and CUDA backends implement the schemas in cpu/ and cuda/, and
// Python (cnnvis_ext/ops/unpool_conv_transpose.py) registers the fake kernels,
// which run these checks through the _C bindings below, and the autograd
// formula.
#include "unpool_conv_transpose.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "checks.h"
#include "pool_window.h"
#include "python_checks.h"

namespace cnnvis {
namespace {

// unpool_conv_transpose's checks, on metadata.
UnpoolConvTGeometry check_unpool_conv_transpose_meta(
    const TensorMeta& p, const std::optional<TensorMeta>& switches, const TensorMeta& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef output_size, at::IntArrayRef input_size, c10::string_view algorithm) {
  check_conv_pool_args(p, "p", "(N, C_out, H_p, W_p)", weight, groups, stride, padding, dilation,
                       pool_kernel, pool_stride, pool_padding);
  check_pair(output_size, "output_size", 1);
  check_pair(input_size, "input_size", 1);
  UnpoolConvTGeometry g{};
  g.algorithm = check_choice<UnpoolAlgorithm>("algorithm", algorithm,
                                              {{"auto", UnpoolAlgorithm::kAuto},
                                               {"sparse", UnpoolAlgorithm::kSparse},
                                               {"dense", UnpoolAlgorithm::kDense}});
  g.n = p.size(0);
  g.c_out = p.size(1);
  g.pooled_h = p.size(2);
  g.pooled_w = p.size(3);
  TORCH_CHECK_VALUE(weight.size(0) == g.c_out, "weight: has C_out=", weight.size(0),
                    " filters but p has ", g.c_out, " channels");
  g.cig = weight.size(1);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.groups = groups;
  g.c_in = g.cig * groups;
  take_pair(stride, g.sh, g.sw);
  take_pair(padding, g.ph, g.pw);
  take_pair(dilation, g.dh, g.dw);
  take_pair(output_size, g.conv_h, g.conv_w);
  take_pair(input_size, g.h, g.w);

  // input_size must be an input size whose convolution gives output_size;
  // the transposed convolution's output_padding follows from it.
  const auto conv = conv_out_size("input_size", g.h, g.w, g.kh, g.kw, stride, padding, dilation);
  TORCH_CHECK_VALUE(conv[0] == g.conv_h && conv[1] == g.conv_w, "input_size: a convolution of an ",
                    input_size, " input gives a (", conv[0], ", ", conv[1],
                    ") output, not output_size=", output_size);
  g.oph = g.h + 2 * g.ph - (g.dh * (g.kh - 1) + 1) - (g.conv_h - 1) * g.sh;
  g.opw = g.w + 2 * g.pw - (g.dw * (g.kw - 1) + 1) - (g.conv_w - 1) * g.sw;

  set_pool_fields(g, pool_kernel, pool_stride, pool_padding);
  check_pool_window(pool_kernel, pool_padding);
  // The pooled map must be what pooling output_size gives (floor or ceil mode).
  int64_t pooled[2][2];  // [axis][ceil_mode]
  for (int ceil = 0; ceil < 2; ++ceil) {
    pooled[0][ceil] = PoolWindow::output_size(g.conv_h, g.pool_kh, g.pool_ph, g.pool_sh, ceil);
    pooled[1][ceil] = PoolWindow::output_size(g.conv_w, g.pool_kw, g.pool_pw, g.pool_sw, ceil);
  }
  const bool h_ok = g.pooled_h == pooled[0][0] || g.pooled_h == pooled[0][1];
  const bool w_ok = g.pooled_w == pooled[1][0] || g.pooled_w == pooled[1][1];
  TORCH_CHECK_VALUE(h_ok && w_ok, "output_size: pooling an ", output_size, " map with kernel ",
                    pool_kernel, ", stride ", pool_stride, " and padding ", pool_padding,
                    " gives (", pooled[0][0], ", ", pooled[1][0], ") pooled values, but p is ",
                    p.sizes);

  if (switches.has_value()) {
    TORCH_CHECK_TYPE(switches->dtype == at::kByte,
                     "switches: expected uint8 switches (as conv_relu_pool returns), got ",
                     switches->dtype, "; convert max_pool2d indices with indices_to_switches");
    TORCH_CHECK_VALUE(switches->sizes == p.sizes, "switches: expected the shape of p ", p.sizes,
                      ", got ", switches->sizes);
    TORCH_CHECK_VALUE(switches->device == p.device, "switches: on ", switches->device,
                      " but p is on ", p.device);
  } else {
    TORCH_CHECK_VALUE(g.identity_pool, "switches: required unless the pooling is the identity "
                      "(pool_kernel=1, pool_stride=1, pool_padding=0), got pool_kernel=",
                      pool_kernel);
  }
  return g;
}

// _unpool_conv_transpose_backward's check of grad_out, on metadata.
void check_unpool_conv_transpose_backward_meta(const UnpoolConvTGeometry& g,
                                               const TensorMeta& grad_out, const TensorMeta& p) {
  check_shape(grad_out, "grad_out", {g.n, g.c_in, g.h, g.w});
  check_same_dtype_device(grad_out, "grad_out", p, "p");
}

// The Python faces of the checks.
void unpool_conv_transpose_checks(const PyMeta& p, const std::optional<PyMeta>& switches,
                                  const PyMeta& weight, const IntList& stride,
                                  const IntList& padding, const IntList& dilation, int64_t groups,
                                  const IntList& pool_kernel, const IntList& pool_stride,
                                  const IntList& pool_padding, const IntList& output_size,
                                  const IntList& input_size, const std::string& algorithm) {
  check_unpool_conv_transpose_meta(meta(p), meta(switches), meta(weight), stride, padding,
                                   dilation, groups, pool_kernel, pool_stride, pool_padding,
                                   output_size, input_size, algorithm);
}

void unpool_conv_transpose_backward_checks(
    const PyMeta& grad_out, const PyMeta& p, const std::optional<PyMeta>& switches,
    const PyMeta& weight, const IntList& stride, const IntList& padding, const IntList& dilation,
    int64_t groups, const IntList& pool_kernel, const IntList& pool_stride,
    const IntList& pool_padding, const IntList& output_size, const IntList& input_size) {
  const auto g = check_unpool_conv_transpose_meta(
      meta(p), meta(switches), meta(weight), stride, padding, dilation, groups, pool_kernel,
      pool_stride, pool_padding, output_size, input_size, "auto");
  check_unpool_conv_transpose_backward_meta(g, meta(grad_out), meta(p));
}

}  // namespace

UnpoolConvTGeometry check_unpool_conv_transpose(
    const at::Tensor& p, const c10::optional<at::Tensor>& switches, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef output_size, at::IntArrayRef input_size, c10::string_view algorithm) {
  return check_unpool_conv_transpose_meta(TensorMeta(p), meta_of(switches), TensorMeta(weight),
                                          stride, padding, dilation, groups, pool_kernel,
                                          pool_stride, pool_padding, output_size, input_size,
                                          algorithm);
}

void check_unpool_conv_transpose_backward(const UnpoolConvTGeometry& g, const at::Tensor& grad_out,
                                          const at::Tensor& p) {
  check_unpool_conv_transpose_backward_meta(g, TensorMeta(grad_out), TensorMeta(p));
}

void bind_unpool_conv_transpose_checks(pybind11::module_& m) {
  m.def("_unpool_conv_transpose_check", &PythonCheck<&unpool_conv_transpose_checks>::call,
        "unpool_conv_transpose's checks.");
  m.def("_unpool_conv_transpose_backward_check",
        &PythonCheck<&unpool_conv_transpose_backward_checks>::call,
        "_unpool_conv_transpose_backward's checks.");
}

}  // namespace cnnvis

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def(
      "unpool_conv_transpose(Tensor p, Tensor? switches, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, int[2] pool_kernel, int[2] pool_stride, "
      "int[2] pool_padding, int[2] output_size, int[2] input_size, bool rectify, "
      "str algorithm=\"auto\") -> Tensor");
  m.def(
      "_unpool_conv_transpose_backward(Tensor grad_out, Tensor p, Tensor? switches, "
      "Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, int[2] output_size, "
      "int[2] input_size, bool rectify, bool[2] output_mask) -> (Tensor grad_p, "
      "Tensor grad_weight)");
}
