"""unpool_conv_transpose: one deconvnet step, unpool + rectify + transposed convolution, fused.

The typed wrapper and the op's fake kernels and autograd formula. The schema
and the argument checks are in ``csrc/unpool_conv_transpose.cpp``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _C
from .common import (IntOrPair, check_tensor, differentiable_grads, fake_grad, ints,
                     masked_backward, meta, pair, pool_pairs)
from .conv_relu_pool import switches_to_indices

__all__ = ["unpool_conv_transpose"]


def _default_sizes(p: Tensor, weight: Tensor, stride, padding, dilation, pool_kernel,
                   pool_stride, pool_padding, output_size, input_size
                   ) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``output_size`` (by default what max_unpool2d picks) and ``input_size`` (by default
    the smallest, output_padding 0) as pairs."""
    if output_size is not None:
        output_size = pair(output_size, "output_size")
    elif p.dim() == 4:
        output_size = tuple((p.shape[2 + i] - 1) * pool_stride[i] - 2 * pool_padding[i]
                            + pool_kernel[i] for i in range(2))
    else:  # no default for a p of the wrong rank: the op's check rejects p
        output_size = (1, 1)
    if input_size is not None:
        input_size = pair(input_size, "input_size")
    elif weight.dim() == 4:
        input_size = tuple((output_size[i] - 1) * stride[i] - 2 * padding[i]
                           + dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2))
    else:
        input_size = (1, 1)
    return output_size, input_size


def unpool_conv_transpose(p: Tensor, switches: Optional[Tensor], weight: Tensor,
                          stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                          groups: int = 1, pool_kernel: IntOrPair = 2,
                          pool_stride: Optional[IntOrPair] = None, pool_padding: IntOrPair = 0,
                          output_size: Optional[Sequence[int]] = None,
                          input_size: Optional[Sequence[int]] = None, rectify: bool = True,
                          algorithm: str = "auto") -> Tensor:
    r"""One deconvnet (Zeiler & Fergus) step: unpool, rectify, filter with the transposed weights.

    Computes the same values as::

        u = F.max_unpool2d(p, indices, pool_kernel, pool_stride, pool_padding, output_size)
        u = F.relu(u) if rectify else u
        F.conv_transpose2d(u, weight, None, stride, padding, output_padding, groups, dilation)

    where ``indices = switches_to_indices(switches, output_size, ...)`` and
    ``output_padding`` is what makes the result ``input_size``, without
    materializing the unpooled map when ``p`` is sparse: each nonzero pooled
    value scatters ``value * weight[c, :, kh, kw]`` straight into the result,
    so the cost scales with the number of nonzeros (a one-hot ``p`` costs
    ``kH * kW * C_in`` multiply-adds; the values of one pooled position that
    share a switch are added into their common target together). On CPU
    with ``groups=1`` this scatter also serves dense pooled maps (it does a
    pool-area fraction of the multiply-adds: ``"auto"`` takes it up to a
    density of 0.3 of the unpooled map after a pooling, 0.2 without one);
    otherwise, when ``p`` is dense, it unpools into a channels-last buffer
    and calls ATen's transposed convolution.

    ``weight`` is the weight of the *forward* convolution (``C_out`` filters
    of ``C_in / groups`` channels), which is also the layout
    :func:`torch.nn.functional.conv_transpose2d` expects.

    Unpooling is the adjoint of max pooling: where pooling windows overlap and
    two switches name one position, their values are **summed** (as in the
    gradient of ``max_pool2d``; ``max_unpool2d`` would keep one of them), and
    the rectification applies to the sum. Both agree whenever no two switches
    collide, always the case for non-overlapping pools (where rectifying
    before or after unpooling is the same). With this definition a chain of
    these steps equals the gradient under a backward whose ReLUs pass
    ``relu(grad)``.

    Args:
        p: pooled map :math:`(N, C_{out}, H_p, W_p)`, float32/float64 on CPU,
            float32/float16/bfloat16 on CUDA.
        switches: uint8 switches of the same shape, as returned by
            :func:`conv_relu_pool` (convert ``max_pool2d`` indices with
            :func:`indices_to_switches`); ``None`` when there is no pooling
            (``pool_kernel=1``).
        weight: forward conv filters :math:`(C_{out}, C_{in}/groups, kH, kW)`.
        stride, padding, dilation, groups: the forward convolution's.
        pool_kernel, pool_stride, pool_padding: the forward pooling's
            (``pool_stride`` defaults to ``pool_kernel``).
        output_size: :math:`(H_c, W_c)`, the forward conv output (the
            unpooled map). Defaults to ``(H_p - 1) * pool_stride -
            2 * pool_padding + pool_kernel`` like ``max_unpool2d``.
        input_size: :math:`(H, W)`, the forward conv input, i.e. the size of
            the result. Any size whose convolution gives ``output_size`` is
            accepted (this fixes ``output_padding``); defaults to the
            smallest.
        rectify: apply ReLU to ``p`` first (the deconvnet's rectification).
        algorithm: ``"auto"`` (sparse below a measured density, dense above),
            ``"sparse"`` or ``"dense"``; all give the same values (on CUDA the
            sparse path adds with atomics, so its last bits may vary from run
            to run).

    Returns:
        :math:`(N, C_{in}, H, W)` tensor (channels-last memory format).

    Shape:
        - p, switches: :math:`(N, C_{out}, H_p, W_p)`
        - weight: :math:`(C_{out}, C_{in}/groups, kH, kW)`
        - Output: :math:`(N, C_{in}, H, W)`

    Example:
        >>> x = torch.randn(2, 3, 32, 32)
        >>> w = torch.randn(16, 3, 3, 3)
        >>> out, sw = conv_relu_pool(x, w, None, padding=1, pool_kernel=2)
        >>> top = torch.zeros_like(out); top[:, 5, 4, 4] = out[:, 5, 4, 4]
        >>> unpool_conv_transpose(top, sw, w, padding=1, pool_kernel=2,
        ...                       output_size=(32, 32), input_size=(32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """
    check_tensor(p, "p")
    if switches is not None:
        check_tensor(switches, "switches")
    check_tensor(weight, "weight")
    st, pd, dl = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    pk, ps, pp = pool_pairs(pool_kernel, pool_stride, pool_padding)
    osz, isz = _default_sizes(p, weight, st, pd, dl, pk, ps, pp, output_size, input_size)
    return torch.ops.cnnvis.unpool_conv_transpose(
        p, switches, weight, st, pd, dl, int(groups), pk, ps, pp, list(osz), list(isz),
        bool(rectify), str(algorithm))


@torch.library.register_fake("cnnvis::unpool_conv_transpose")
def _unpool_conv_transpose_fake(p, switches, weight, stride, padding, dilation, groups,
                                pool_kernel, pool_stride, pool_padding, output_size, input_size,
                                rectify, algorithm="auto"):
    _C._unpool_conv_transpose_check(
        meta(p), meta(switches), meta(weight), ints(stride), ints(padding), ints(dilation),
        int(groups), ints(pool_kernel), ints(pool_stride), ints(pool_padding), ints(output_size),
        ints(input_size), str(algorithm))
    shape = (p.shape[0], weight.shape[1] * groups, input_size[0], input_size[1])
    return torch.empty(shape, dtype=p.dtype, device=p.device, memory_format=torch.channels_last)


@torch.library.register_fake("cnnvis::_unpool_conv_transpose_backward")
def _unpool_conv_transpose_backward_fake(grad_out, p, switches, weight, stride, padding, dilation,
                                         groups, pool_kernel, pool_stride, pool_padding,
                                         output_size, input_size, rectify, output_mask):
    _C._unpool_conv_transpose_backward_check(
        meta(grad_out), meta(p), meta(switches), meta(weight), ints(stride), ints(padding),
        ints(dilation), int(groups), ints(pool_kernel), ints(pool_stride), ints(pool_padding),
        ints(output_size), ints(input_size))
    return fake_grad(output_mask[0], p, channels_last=True), fake_grad(output_mask[1], weight)


def _unpool_conv_transpose_setup_context(ctx, inputs, output):
    p, switches, weight, *params = inputs
    ctx.save_for_backward(p, switches, weight)
    ctx.params = params[:-1]  # everything but `algorithm`


def _unpool_conv_transpose_backward(ctx, grad_out):
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph: gradients that can be differentiated again
        from . import reference

        p, switches, weight = ctx.saved_tensors
        (stride, padding, dilation, groups, pool_kernel, pool_stride, pool_padding, output_size,
         input_size, rectify) = ctx.params
        indices = None if switches is None else switches_to_indices(
            switches, output_size, pool_kernel, pool_stride, pool_padding)
        return differentiable_grads(
            lambda: reference.unpool_conv_transpose(p, indices, weight, stride, padding, dilation,
                                                    groups, output_size, input_size, rectify),
            grad_out, (p, weight), (needs[0], needs[2]), (0, 2), 14)
    return masked_backward(torch.ops.cnnvis._unpool_conv_transpose_backward, grad_out,
                           (*ctx.saved_tensors, *ctx.params), (needs[0], needs[2]), (0, 2), 14)


torch.library.register_autograd("cnnvis::unpool_conv_transpose", _unpool_conv_transpose_backward,
                                setup_context=_unpool_conv_transpose_setup_context)
