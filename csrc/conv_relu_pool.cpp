// conv_relu_pool: out = max_pool2d(relu(conv2d(x, weight, bias))) with uint8
// argmax switches, and its backward. The schemas and the argument checks are
// defined here, once; the CPU and CUDA backends implement the schemas in cpu/
// and cuda/, and Python (cnnvis_ext/ops/conv_relu_pool.py) registers the fake
// kernels, which run these checks through the _C bindings below, and the
// autograd formula.
#include "conv_relu_pool.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "checks.h"
#include "pool_window.h"
#include "python_checks.h"

namespace cnnvis {
namespace {

// conv_relu_pool's checks, on metadata.
ConvPoolGeometry check_conv_relu_pool_meta(const TensorMeta& x, const TensorMeta& weight,
                                           const std::optional<TensorMeta>& bias,
                                           at::IntArrayRef stride, at::IntArrayRef padding,
                                           at::IntArrayRef dilation, int64_t groups,
                                           at::IntArrayRef pool_kernel,
                                           at::IntArrayRef pool_stride,
                                           at::IntArrayRef pool_padding, bool ceil_mode) {
  check_conv_pool_args(x, "x", "(N, C, H, W)", weight, groups, stride, padding, dilation,
                       pool_kernel, pool_stride, pool_padding);
  ConvPoolGeometry g{};
  g.n = x.size(0);
  g.c_in = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.c_out = weight.size(0);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  TORCH_CHECK_VALUE(g.c_in == weight.size(1) * groups, "x: has ", g.c_in,
                    " channels but weight expects C_in/groups * groups = ", weight.size(1), " * ",
                    groups, " = ", weight.size(1) * groups);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.c_out, "bias: expected shape (",
                      g.c_out, ",), got ", bias->sizes);
    check_same_dtype_device(*bias, "bias", x, "x");
  }
  const auto conv = conv_out_size("x", g.h, g.w, g.kh, g.kw, stride, padding, dilation);
  g.conv_h = conv[0];
  g.conv_w = conv[1];

  set_pool_fields(g, pool_kernel, pool_stride, pool_padding);
  check_pool_window(pool_kernel, pool_padding);
  TORCH_CHECK_VALUE(g.pool_kh <= g.conv_h + 2 * g.pool_ph && g.pool_kw <= g.conv_w + 2 * g.pool_pw,
                    "pool_kernel: window ", pool_kernel, " is larger than the padded conv output (",
                    g.conv_h + 2 * g.pool_ph, ", ", g.conv_w + 2 * g.pool_pw, ")");
  g.out_h = PoolWindow::output_size(g.conv_h, g.pool_kh, g.pool_ph, g.pool_sh, ceil_mode);
  g.out_w = PoolWindow::output_size(g.conv_w, g.pool_kw, g.pool_pw, g.pool_sw, ceil_mode);
  TORCH_CHECK_VALUE(g.out_h >= 1 && g.out_w >= 1, "pool_kernel: pooled output would be empty (",
                    g.out_h, ", ", g.out_w, ")");
  return g;
}

// _conv_relu_pool_backward's checks of its other tensors, on metadata.
void check_conv_relu_pool_backward_meta(const ConvPoolGeometry& g, const TensorMeta& grad_out,
                                        const TensorMeta& x, const TensorMeta& out,
                                        const TensorMeta& switches) {
  const std::vector<int64_t> expected{g.n, g.c_out, g.out_h, g.out_w};
  TORCH_CHECK_TYPE(switches.dtype == at::kByte,
                   "switches: expected uint8 switches from conv_relu_pool, got ", switches.dtype);
  check_shape(switches, "switches", expected);
  check_shape(out, "out", expected);
  check_shape(grad_out, "grad_out", expected);
  TORCH_CHECK_TYPE(out.dtype == x.dtype && grad_out.dtype == x.dtype, "grad_out/out: dtypes ",
                   grad_out.dtype, "/", out.dtype, " do not match x's dtype ", x.dtype);
  TORCH_CHECK_VALUE(grad_out.device == x.device && out.device == x.device &&
                        switches.device == x.device,
                    "grad_out/out/switches: must be on x's device ", x.device);
}

// The Python faces of the checks: the output size (N, C_out, H_p, W_p) and
// the size (H, W) of the convolution output that is pooled.
std::tuple<IntList, IntList> conv_relu_pool_sizes(
    const PyMeta& x, const PyMeta& weight, const std::optional<PyMeta>& bias,
    const IntList& stride, const IntList& padding, const IntList& dilation, int64_t groups,
    const IntList& pool_kernel, const IntList& pool_stride, const IntList& pool_padding,
    bool ceil_mode) {
  const auto g = check_conv_relu_pool_meta(meta(x), meta(weight), meta(bias), stride, padding,
                                           dilation, groups, pool_kernel, pool_stride,
                                           pool_padding, ceil_mode);
  return {IntList{g.n, g.c_out, g.out_h, g.out_w}, IntList{g.conv_h, g.conv_w}};
}

void conv_relu_pool_backward_checks(const PyMeta& grad_out, const PyMeta& x, const PyMeta& weight,
                                    const PyMeta& out, const PyMeta& switches,
                                    const IntList& stride, const IntList& padding,
                                    const IntList& dilation, int64_t groups,
                                    const IntList& pool_kernel, const IntList& pool_stride,
                                    const IntList& pool_padding, bool ceil_mode) {
  const auto g = check_conv_relu_pool_meta(meta(x), meta(weight), std::nullopt, stride, padding,
                                           dilation, groups, pool_kernel, pool_stride,
                                           pool_padding, ceil_mode);
  check_conv_relu_pool_backward_meta(g, meta(grad_out), meta(x), meta(out), meta(switches));
}

}  // namespace

ConvPoolGeometry check_conv_relu_pool(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups,
                                      at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                      at::IntArrayRef pool_padding, bool ceil_mode) {
  return check_conv_relu_pool_meta(TensorMeta(x), TensorMeta(weight), meta_of(bias), stride,
                                   padding, dilation, groups, pool_kernel, pool_stride,
                                   pool_padding, ceil_mode);
}

void check_conv_relu_pool_backward(const ConvPoolGeometry& g, const at::Tensor& grad_out,
                                   const at::Tensor& x, const at::Tensor& out,
                                   const at::Tensor& switches) {
  check_conv_relu_pool_backward_meta(g, TensorMeta(grad_out), TensorMeta(x), TensorMeta(out),
                                     TensorMeta(switches));
}

void bind_conv_relu_pool_checks(pybind11::module_& m) {
  m.def("_conv_relu_pool_check", &PythonCheck<&conv_relu_pool_sizes>::call,
        "conv_relu_pool's checks; returns the output size (N, C_out, H_p, W_p) and the size "
        "(H, W) of the convolution output that is pooled.");
  m.def("_conv_relu_pool_backward_check", &PythonCheck<&conv_relu_pool_backward_checks>::call,
        "_conv_relu_pool_backward's checks.");
}

void conv_backward_from_conv_grad(const at::Tensor& gconv, const at::Tensor& x,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, std::array<bool, 3> output_mask,
                                  at::Tensor& grad_x, at::Tensor& grad_w) {
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  auto grads = at::convolution_backward(gconv, x.contiguous(kCL), weight, c10::nullopt, stride,
                                        padding, dilation, /*transposed=*/false, {0, 0}, groups,
                                        {output_mask[0], output_mask[1], false});
  if (output_mask[0]) grad_x = with_canonical_strides(std::get<0>(grads), kCL);
  if (output_mask[1])
    grad_w = with_canonical_strides(std::get<1>(grads), at::MemoryFormat::Contiguous);
}

at::Tensor with_canonical_strides(const at::Tensor& t, at::MemoryFormat fmt) {
  std::vector<int64_t> strides(t.dim());
  const auto sizes = t.sizes();
  if (fmt == at::MemoryFormat::ChannelsLast && t.dim() == 4) {
    strides[1] = 1;
    strides[3] = sizes[1];
    strides[2] = sizes[3] * sizes[1];
    strides[0] = sizes[2] * sizes[3] * sizes[1];
  } else {
    int64_t s = 1;
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      strides[d] = s;
      s *= std::max<int64_t>(sizes[d], 1);
    }
  }
  if (t.strides() == at::IntArrayRef(strides)) return t;
  at::Tensor out = at::empty_strided(sizes, strides, t.options());
  out.copy_(t);
  return out;
}

}  // namespace cnnvis

TORCH_LIBRARY_FRAGMENT(cnnvis, m) {
  m.def(
      "conv_relu_pool(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, "
      "bool ceil_mode) -> (Tensor out, Tensor switches)");
  m.def(
      "_conv_relu_pool_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor out, "
      "Tensor switches, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, bool ceil_mode, "
      "bool[3] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
