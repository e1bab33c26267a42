// Host-side argument checks shared by the schemas of the convolution-shaped
// ops (conv_relu_pool, unpool_conv_transpose). Every message starts with the
// argument's name; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as
// ValueError / TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

namespace cnnvis {

// `v` holds two values (height, width), each >= min_value.
inline void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, name, ": expected 2 values (height, width), got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min_value && v[1] >= min_value, name, ": expected values >= ",
                    min_value, ", got ", v);
}

// The output size of max pooling along one axis, as ATen computes it.
inline int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t s, bool ceil_mode) {
  int64_t num = in + 2 * pad - (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= in + pad) --out;  // the last window must start inside
  return out;
}

// The checks every conv + pool op makes of its input (named `name`, shape
// `shape` such as "(N, C, H, W)"), its weight and its hyperparameters.
inline void check_conv_pool_args(const at::Tensor& input, const char* name, const char* shape,
                                 const at::Tensor& weight, int64_t groups, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                 at::IntArrayRef pool_padding) {
  TORCH_CHECK_VALUE(input.dim() == 4, name, ": expected a 4-D ", shape, " tensor, got ",
                    input.dim(), "-D with shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight: expected a 4-D (C_out, C_in/groups, kH, kW) "
                    "tensor, got ", weight.dim(), "-D with shape ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), name,
                   ": expected a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), "weight: dtype ",
                   weight.scalar_type(), " does not match ", name, "'s dtype ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == input.device(), "weight: on ", weight.device(), " but ",
                    name, " is on ", input.device());
  TORCH_CHECK_VALUE(groups >= 1, "groups: expected a positive value, got ", groups);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  check_pair(pool_kernel, "pool_kernel", 1);
  check_pair(pool_stride, "pool_stride", 1);
  check_pair(pool_padding, "pool_padding", 0);
}

}  // namespace cnnvis
