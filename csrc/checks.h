// Host-side argument checks. Every user-facing message of an op's arguments
// is written once, in these checks and in those of csrc/<op>.cpp built on
// them: the kernels run them on tensors (through the check_* functions of
// <op>.h), and the Python fake kernels run the same functions on the metadata
// of fake tensors (through the _C bindings each <op>.cpp adds, see
// python_checks.h), so a bad argument raises the same error eagerly and under
// torch.compile. Every message starts with the argument's name;
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError /
// TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

namespace cnnvis {

// What the checks read of a tensor argument. A view: the sizes and strides
// belong to the tensor (or to the Python values) it was made from.
struct TensorMeta {
  at::IntArrayRef sizes;
  at::IntArrayRef strides;
  at::ScalarType dtype;
  c10::Device device;

  TensorMeta(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype,
             c10::Device device)
      : sizes(sizes), strides(strides), dtype(dtype), device(device) {}
  explicit TensorMeta(const at::Tensor& t)
      : TensorMeta(t.sizes(), t.strides(), t.scalar_type(), t.device()) {}

  int64_t dim() const { return static_cast<int64_t>(sizes.size()); }
  int64_t size(int64_t d) const { return sizes[d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t s : sizes) n *= s;
    return n;
  }
  bool is_floating_point() const { return at::isFloatingType(dtype); }
  // Some element is reachable through two indices (a stride 0 over a
  // dimension of size > 1, as in an expanded tensor).
  bool has_internal_overlap() const {
    if (numel() == 0) return false;
    for (size_t d = 0; d < sizes.size() && d < strides.size(); ++d) {
      if (sizes[d] > 1 && strides[d] == 0) return true;
    }
    return false;
  }
};

inline std::optional<TensorMeta> meta_of(const c10::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return TensorMeta(*t);
  return std::nullopt;
}

// `t` (named `name`) is a 4-D floating-point tensor; `shape` describes its
// dimensions in the message, such as "(N, C, H, W)".
inline void check_4d_floating(const TensorMeta& t, const char* name, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, ": expected a 4-D ", shape, " tensor, got ", t.dim(),
                    "-D with shape ", t.sizes);
  TORCH_CHECK_TYPE(t.is_floating_point(), name, ": expected a floating-point tensor, got ",
                   t.dtype);
}

// `t` (named `name`) has the dtype and the device of `ref` (named `ref_name`).
inline void check_same_dtype_device(const TensorMeta& t, const char* name, const TensorMeta& ref,
                                    const char* ref_name) {
  TORCH_CHECK_TYPE(t.dtype == ref.dtype, name, ": dtype ", t.dtype, " does not match ",
                   ref_name, "'s dtype ", ref.dtype);
  TORCH_CHECK_VALUE(t.device == ref.device, name, ": on ", t.device, " but ", ref_name,
                    " is on ", ref.device);
}

// `t` (named `name`) has exactly the sizes `expected`.
inline void check_shape(const TensorMeta& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes == expected, name, ": expected shape ", expected, ", got ", t.sizes);
}

// The value that `value` (the argument `name`) selects among `choices`; the
// message of an unknown value lists the accepted ones.
template <typename T>
T check_choice(const char* name, c10::string_view value,
               std::initializer_list<std::pair<c10::string_view, T>> choices) {
  std::string accepted;
  size_t i = 0;
  for (const auto& [text, result] : choices) {
    if (value == text) return result;
    accepted += i == 0 ? "'" : (i + 1 == choices.size() ? " or '" : ", '");
    accepted += std::string(text) + "'";
    ++i;
  }
  TORCH_CHECK_VALUE(false, name, ": expected ", accepted, ", got '", std::string(value), "'");
  return choices.begin()->second;  // not reached
}

// The largest value a stride, padding, dilation, pooling or size argument
// may take. Capping them at 2^31 - 1 keeps every size the checks and the
// kernels derive from them (h + 2 * padding, dilation * (k - 1) + 1,
// kh * kw, ...) far from int64 overflow, where a wrapped value would pass a
// check or blame another argument.
constexpr int64_t kMaxPairValue = 2147483647;

// `v` holds two values (height, width), each in [min_value, kMaxPairValue].
inline void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, name, ": expected 2 values (height, width), got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min_value && v[1] >= min_value, name, ": expected values >= ",
                    min_value, ", got ", v);
  TORCH_CHECK_VALUE(v[0] <= kMaxPairValue && v[1] <= kMaxPairValue, name,
                    ": expected values <= 2147483647 (2^31 - 1), got ", v);
}

// A pooling window that uint8 switches can address (at most 255 positions)
// and whose padding is at most half of it, as max_pool2d requires.
inline void check_pool_window(at::IntArrayRef pool_kernel, at::IntArrayRef pool_padding) {
  // each side first: the product of two unchecked sides could wrap
  TORCH_CHECK_VALUE(pool_kernel[0] <= 255 && pool_kernel[1] <= 255 &&
                        pool_kernel[0] * pool_kernel[1] <= 255,
                    "pool_kernel: a window of ", pool_kernel,
                    " has more than 255 positions; uint8 switches support at most 255");
  TORCH_CHECK_VALUE(2 * pool_padding[0] <= pool_kernel[0] && 2 * pool_padding[1] <= pool_kernel[1],
                    "pool_padding: must be at most half of pool_kernel, got pool_padding=",
                    pool_padding, " and pool_kernel=", pool_kernel);
}

// Stores a checked (height, width) pair in two fields.
inline void take_pair(at::IntArrayRef v, int64_t& height, int64_t& width) {
  height = v[0];
  width = v[1];
}

// Stores a pooling's arguments in the pool_* fields and identity_pool of a
// geometry (ConvPoolGeometry, UnpoolConvTGeometry).
template <typename Geometry>
void set_pool_fields(Geometry& g, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                     at::IntArrayRef pool_padding) {
  take_pair(pool_kernel, g.pool_kh, g.pool_kw);
  take_pair(pool_stride, g.pool_sh, g.pool_sw);
  take_pair(pool_padding, g.pool_ph, g.pool_pw);
  g.identity_pool = g.pool_kh == 1 && g.pool_kw == 1 && g.pool_sh == 1 && g.pool_sw == 1 &&
                    g.pool_ph == 0 && g.pool_pw == 0;
}

// The dilated kernel fits in the padded input of size (h, w) (the argument
// that sets it is `name`); returns the convolution's output size.
inline std::array<int64_t, 2> conv_out_size(const char* name, int64_t h, int64_t w, int64_t kh,
                                            int64_t kw, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  // dilation <= 2^31 - 1 (check_pair); a kernel side that would overflow
  // dilation * (k - 1) cannot be allocated, but a fake tensor can claim it
  TORCH_CHECK_VALUE(kh <= (INT64_MAX / 2) / dilation[0] && kw <= (INT64_MAX / 2) / dilation[1],
                    "dilation: ", dilation, " with a (", kh, ", ", kw,
                    ") kernel gives a dilated kernel too large to address");
  const int64_t eff_kh = dilation[0] * (kh - 1) + 1;
  const int64_t eff_kw = dilation[1] * (kw - 1) + 1;
  TORCH_CHECK_VALUE(h + 2 * padding[0] >= eff_kh && w + 2 * padding[1] >= eff_kw, name,
                    ": padded input of size (", h + 2 * padding[0], ", ", w + 2 * padding[1],
                    ") is smaller than the dilated kernel (", eff_kh, ", ", eff_kw, ")");
  return {(h + 2 * padding[0] - eff_kh) / stride[0] + 1, (w + 2 * padding[1] - eff_kw) / stride[1] + 1};
}

// The checks every conv + pool op makes of its input (named `name`, shape
// `shape` such as "(N, C, H, W)"), its weight (C_out, C_in/groups, kH, kW),
// which must have no empty dimension, and its hyperparameters.
inline void check_conv_pool_args(const TensorMeta& input, const char* name, const char* shape,
                                 const TensorMeta& weight, int64_t groups, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                 at::IntArrayRef pool_padding) {
  TORCH_CHECK_VALUE(input.dim() == 4, name, ": expected a 4-D ", shape, " tensor, got ",
                    input.dim(), "-D with shape ", input.sizes);
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight: expected a 4-D (C_out, C_in/groups, kH, kW) "
                    "tensor, got ", weight.dim(), "-D with shape ", weight.sizes);
  TORCH_CHECK_TYPE(input.is_floating_point(), name, ": expected a floating-point tensor, got ",
                   input.dtype);
  check_same_dtype_device(weight, "weight", input, name);
  TORCH_CHECK_VALUE(groups >= 1, "groups: expected a positive value, got ", groups);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  check_pair(pool_kernel, "pool_kernel", 1);
  check_pair(pool_stride, "pool_stride", 1);
  check_pair(pool_padding, "pool_padding", 0);
  TORCH_CHECK_VALUE(weight.numel() > 0, "weight: expected non-empty (C_out, C_in/groups, kH, kW), "
                    "got ", weight.sizes);
  TORCH_CHECK_VALUE(weight.size(0) % groups == 0, "weight: C_out=", weight.size(0),
                    " is not divisible by groups=", groups);
}

}  // namespace cnnvis
