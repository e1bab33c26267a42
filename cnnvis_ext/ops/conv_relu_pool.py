"""conv_relu_pool: ``max_pool2d(relu(conv2d(x)))`` and its uint8 argmax switches, fused.

The typed wrapper, the conversions between switches and ``max_pool2d``
indices, and the op's fake kernels and autograd formula. The schema and the
argument checks are in ``csrc/conv_relu_pool.cpp``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _C
from .common import (IntOrPair, check_tensor, differentiable_grads, fake_grad, ints,
                     masked_backward, meta, pair, pool_pairs)

__all__ = ["conv_relu_pool", "conv_relu_pool_output_size", "switches_to_indices",
           "indices_to_switches"]


def conv_relu_pool(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                   groups: int = 1, pool_kernel: IntOrPair = 2,
                   pool_stride: Optional[IntOrPair] = None, pool_padding: IntOrPair = 0,
                   ceil_mode: bool = False) -> Tuple[Tensor, Tensor]:
    r"""Fused ``max_pool2d(relu(conv2d(x, weight, bias)))`` with argmax switches.

    Computes the same values as::

        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        out, idx = F.max_pool2d(F.relu(y), pool_kernel, pool_stride, pool_padding,
                                ceil_mode=ceil_mode, return_indices=True)

    without keeping the full-resolution convolution output for backward: what
    autograd saves is ``x``, ``weight``, ``out`` and one byte of switch per
    pooled value.

    The backward rebuilds the gradient of the convolution output from
    ``grad_out``, ``out > 0`` and the switches. On CPU, for ``groups=1`` and
    ``kW * C_in >= 16``, it then computes the gradients of ``x`` and
    ``weight`` straight from the pooled map: that gradient has at most one
    nonzero per pooling window, so this takes a pool-area fraction (a
    quarter for 2x2 pools) of the multiply-adds of ATen's convolution
    backward, which handles the other shapes and CUDA. The environment
    variable ``CNNVIS_CONV_BACKWARD=sparse|dense`` forces one formulation.

    Args:
        x: input of shape :math:`(N, C_{in}, H, W)`, float32/float64 on CPU,
            float32/float16/bfloat16 on CUDA.
        weight: filters of shape :math:`(C_{out}, C_{in}/groups, kH, kW)`.
        bias: optional bias of shape :math:`(C_{out},)`.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d`.
        pool_kernel: max-pooling window; ``1`` means convolution + ReLU only.
        pool_stride: pooling stride, defaults to ``pool_kernel``.
        pool_padding, ceil_mode: as in :func:`torch.nn.functional.max_pool2d`.

    Returns:
        ``(out, switches)``: ``out`` of shape :math:`(N, C_{out}, H_p, W_p)`
        (channels-last memory format) and ``switches``, uint8 of the same
        shape: for every pooled value the row-major position of its maximum
        inside its (unclipped) pooling window. Where ``out > 0`` it is the
        element ``max_pool2d(return_indices=True)`` picks; where ``out == 0``
        any position of the window. Convert with :func:`switches_to_indices`.

    Example:
        >>> x = torch.randn(8, 3, 32, 32)
        >>> w = torch.randn(16, 3, 5, 5)
        >>> out, sw = conv_relu_pool(x, w, None, padding=2, pool_kernel=2)
        >>> out.shape
        torch.Size([8, 16, 16, 16])
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight")
    if bias is not None:
        check_tensor(bias, "bias")
    pk, ps, pp = pool_pairs(pool_kernel, pool_stride, pool_padding)
    return torch.ops.cnnvis.conv_relu_pool(
        x, weight, bias, pair(stride, "stride"), pair(padding, "padding"),
        pair(dilation, "dilation"), int(groups), pk, ps, pp, bool(ceil_mode))


def conv_relu_pool_output_size(input_size: Sequence[int], weight_size: Sequence[int],
                               stride: IntOrPair = 1, padding: IntOrPair = 0,
                               dilation: IntOrPair = 1, groups: int = 1,
                               pool_kernel: IntOrPair = 2, pool_stride: Optional[IntOrPair] = None,
                               pool_padding: IntOrPair = 0, ceil_mode: bool = False):
    """Return ``((conv_h, conv_w), (out_h, out_w))`` for the given arguments.

    Raises the errors :func:`conv_relu_pool` raises for these sizes.
    """
    def sized(size):
        return list(size), [0] * len(size), torch.float32, torch.device("cpu")

    pk, ps, pp = pool_pairs(pool_kernel, pool_stride, pool_padding)
    (_, _, out_h, out_w), (conv_h, conv_w) = _C._conv_relu_pool_check(
        sized(input_size), sized(weight_size), None, list(pair(stride, "stride")),
        list(pair(padding, "padding")), list(pair(dilation, "dilation")), int(groups), list(pk),
        list(ps), list(pp), bool(ceil_mode))
    return (conv_h, conv_w), (out_h, out_w)


@torch.library.register_fake("cnnvis::conv_relu_pool")
def _conv_relu_pool_fake(x, weight, bias, stride, padding, dilation, groups, pool_kernel,
                         pool_stride, pool_padding, ceil_mode):
    (_, _, out_h, out_w), _ = _C._conv_relu_pool_check(
        meta(x, guard_spatial=True), meta(weight, guard_spatial=True), meta(bias), ints(stride),
        ints(padding), ints(dilation), int(groups), ints(pool_kernel), ints(pool_stride),
        ints(pool_padding), bool(ceil_mode))
    shape = (x.shape[0], weight.shape[0], out_h, out_w)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    sw = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=torch.channels_last)
    return out, sw


@torch.library.register_fake("cnnvis::_conv_relu_pool_backward")
def _conv_relu_pool_backward_fake(grad_out, x, weight, out, switches, stride, padding, dilation,
                                  groups, pool_kernel, pool_stride, pool_padding, ceil_mode,
                                  output_mask):
    _C._conv_relu_pool_backward_check(
        meta(grad_out), meta(x), meta(weight), meta(out), meta(switches), ints(stride),
        ints(padding), ints(dilation), int(groups), ints(pool_kernel), ints(pool_stride),
        ints(pool_padding), bool(ceil_mode))
    return (fake_grad(output_mask[0], x, channels_last=True), fake_grad(output_mask[1], weight),
            fake_grad(output_mask[2], x, (weight.shape[0],)))


def _conv_relu_pool_setup_context(ctx, inputs, output):
    x, weight, bias, *params = inputs
    out, switches = output
    ctx.save_for_backward(x, weight, out, switches, bias)
    ctx.params = params
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(switches)


def _conv_relu_pool_backward(ctx, grad_out, _grad_switches):
    needs = ctx.needs_input_grad
    x, weight, out, switches, bias = ctx.saved_tensors
    mask = (needs[0], needs[1], ctx.has_bias and needs[2])
    if torch.is_grad_enabled():  # create_graph: gradients that can be differentiated again
        from . import reference

        return differentiable_grads(lambda: reference.conv_relu_pool(x, weight, bias,
                                                                     *ctx.params)[0],
                                    grad_out, (x, weight, bias), mask, (0, 1, 2), 11)
    return masked_backward(torch.ops.cnnvis._conv_relu_pool_backward, grad_out,
                           (x, weight, out, switches, *ctx.params), mask, (0, 1, 2), 11)


torch.library.register_autograd("cnnvis::conv_relu_pool", _conv_relu_pool_backward,
                                setup_context=_conv_relu_pool_setup_context)


def _window_origins(t: Tensor, pool_stride, pool_padding) -> Tuple[Tensor, Tensor]:
    """Row and column of the top-left corner of every pooling window, broadcastable to ``t``."""
    ph, pw = t.shape[-2:]
    oy = torch.arange(ph, device=t.device) * pool_stride[0] - pool_padding[0]
    ox = torch.arange(pw, device=t.device) * pool_stride[1] - pool_padding[1]
    return oy.view(ph, 1), ox.view(1, pw)


def switches_to_indices(switches: Tensor, conv_size: Sequence[int], pool_kernel: IntOrPair = 2,
                        pool_stride: Optional[IntOrPair] = None,
                        pool_padding: IntOrPair = 0) -> Tensor:
    """Convert uint8 switches to the int64 flat indices of ``max_pool2d``.

    The result is what ``F.max_pool2d(..., return_indices=True)`` returns and
    what :func:`torch.nn.functional.max_unpool2d` takes: for every pooled
    value, ``row * W + col`` of its maximum in the ``conv_size = (H, W)`` map.

    Args:
        switches: uint8 tensor ``(..., H_p, W_p)`` from :func:`conv_relu_pool`.
        conv_size: ``(H, W)`` of the map that was pooled (the conv output).
        pool_kernel, pool_stride, pool_padding: the pooling of the forward.
    """
    if not isinstance(switches, Tensor) or switches.dtype != torch.uint8:
        raise TypeError(f"switches: expected a uint8 tensor, got "
                        f"{getattr(switches, 'dtype', type(switches).__name__)}")
    if switches.dim() < 2:
        raise ValueError(f"switches: expected at least 2 dimensions, got {switches.dim()}")
    pk, ps, pp = pool_pairs(pool_kernel, pool_stride, pool_padding)
    h, w = pair(conv_size, "conv_size")
    oy, ox = _window_origins(switches, ps, pp)
    s = switches.long()
    row = oy + torch.div(s, pk[1], rounding_mode="floor")
    col = ox + s % pk[1]
    if bool(((row < 0) | (row >= h) | (col < 0) | (col >= w)).any()):
        raise ValueError("switches: some switch points outside the conv map; check conv_size and "
                         "the pooling arguments")
    return row * w + col


def indices_to_switches(indices: Tensor, conv_size: Sequence[int], pool_kernel: IntOrPair = 2,
                        pool_stride: Optional[IntOrPair] = None,
                        pool_padding: IntOrPair = 0) -> Tensor:
    """Inverse of :func:`switches_to_indices`: int64 ``max_pool2d`` indices to uint8 switches."""
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
        raise TypeError("indices: expected an int64 tensor from max_pool2d(return_indices=True)")
    pk, ps, pp = pool_pairs(pool_kernel, pool_stride, pool_padding)
    if pk[0] * pk[1] > 255:
        raise ValueError("pool_kernel: windows of more than 255 positions do not fit uint8 switches")
    _, w = pair(conv_size, "conv_size")
    oy, ox = _window_origins(indices, ps, pp)
    row = torch.div(indices, w, rounding_mode="floor") - oy
    col = indices % w - ox
    if bool(((row < 0) | (row >= pk[0]) | (col < 0) | (col >= pk[1])).any()):
        raise ValueError("indices: some index lies outside its pooling window")
    return (row * pk[1] + col).to(torch.uint8)
