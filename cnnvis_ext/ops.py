"""Typed Python wrappers of the ``torch.ops.cnnvis`` operators.

The schemas live in C++ (``csrc/<op>.cpp``); this module only wraps them and
registers, beside each wrapper, the op's fake (meta) kernel and its autograd
formula with :mod:`torch.library`, so that every op works under autograd and
``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the op registrations)

__all__ = [
    "conv_relu_pool",
    "switches_to_indices",
    "indices_to_switches",
    "conv_relu_pool_output_size",
]

IntOrPair = Union[int, Sequence[int]]


def _pair(v: IntOrPair, name: str) -> Tuple[int, int]:
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    if isinstance(v, int) or (isinstance(v, torch.SymInt)):
        return (v, v)
    try:
        t = tuple(v)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}") from None
    if len(t) == 1:
        t = (t[0], t[0])
    if len(t) != 2 or not all(isinstance(i, (int, torch.SymInt)) and not isinstance(i, bool) for i in t):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def _pool_out(size, k, pad, s, ceil_mode):
    num = size + 2 * pad - (k - 1) - 1 + ((s - 1) if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + pad:
        out = out - 1
    return out


def _check_pair_min(v, name, lo):
    if len(v) != 2 or v[0] < lo or v[1] < lo:
        raise ValueError(f"{name}: expected 2 values >= {lo}, got {list(v)}")


def _conv_pool_geometry(x_shape, w_shape, stride, padding, dilation, groups,
                        pool_kernel, pool_stride, pool_padding, ceil_mode):
    """Conv output size and pooled size, with the checks of the C++ op."""
    if len(x_shape) != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got {len(x_shape)}-D")
    if len(w_shape) != 4:
        raise ValueError(f"weight: expected a 4-D (C_out, C_in/groups, kH, kW) tensor, got {len(w_shape)}-D")
    if groups < 1:
        raise ValueError(f"groups: expected a positive value, got {groups}")
    _check_pair_min(stride, "stride", 1)
    _check_pair_min(padding, "padding", 0)
    _check_pair_min(dilation, "dilation", 1)
    _check_pair_min(pool_kernel, "pool_kernel", 1)
    _check_pair_min(pool_stride, "pool_stride", 1)
    _check_pair_min(pool_padding, "pool_padding", 0)
    n, c_in, h, w = x_shape
    c_out, c_in_g, kh, kw = w_shape
    if c_out % groups != 0:
        raise ValueError(f"weight: C_out={c_out} is not divisible by groups={groups}")
    if c_in != c_in_g * groups:
        raise ValueError(f"x: has {c_in} channels but weight expects {c_in_g} * groups={groups}")
    ekh, ekw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if h + 2 * padding[0] < ekh or w + 2 * padding[1] < ekw:
        raise ValueError("x: padded input is smaller than the dilated kernel")
    ch = (h + 2 * padding[0] - ekh) // stride[0] + 1
    cw = (w + 2 * padding[1] - ekw) // stride[1] + 1
    if pool_kernel[0] * pool_kernel[1] > 255:
        raise ValueError(f"pool_kernel: window {list(pool_kernel)} has more than 255 positions")
    if 2 * pool_padding[0] > pool_kernel[0] or 2 * pool_padding[1] > pool_kernel[1]:
        raise ValueError("pool_padding: must be at most half of pool_kernel")
    if pool_kernel[0] > ch + 2 * pool_padding[0] or pool_kernel[1] > cw + 2 * pool_padding[1]:
        raise ValueError(f"pool_kernel: window {list(pool_kernel)} is larger than the padded conv output")
    ph = _pool_out(ch, pool_kernel[0], pool_padding[0], pool_stride[0], ceil_mode)
    pw = _pool_out(cw, pool_kernel[1], pool_padding[1], pool_stride[1], ceil_mode)
    return (ch, cw), (ph, pw)


def conv_relu_pool_output_size(input_size: Sequence[int], weight_size: Sequence[int],
                               stride: IntOrPair = 1, padding: IntOrPair = 0,
                               dilation: IntOrPair = 1, groups: int = 1,
                               pool_kernel: IntOrPair = 2, pool_stride: Optional[IntOrPair] = None,
                               pool_padding: IntOrPair = 0, ceil_mode: bool = False):
    """Return ``((conv_h, conv_w), (out_h, out_w))`` for the given arguments."""
    pk = _pair(pool_kernel, "pool_kernel")
    return _conv_pool_geometry(
        tuple(input_size), tuple(weight_size), _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(dilation, "dilation"), groups, pk,
        pk if pool_stride is None else _pair(pool_stride, "pool_stride"),
        _pair(pool_padding, "pool_padding"), ceil_mode)


# --------------------------------------------------------------------------
# conv_relu_pool
# --------------------------------------------------------------------------

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
    pk = _pair(pool_kernel, "pool_kernel")
    ps = pk if pool_stride is None else _pair(pool_stride, "pool_stride")
    return torch.ops.cnnvis.conv_relu_pool(
        x, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(dilation, "dilation"), int(groups), pk, ps, _pair(pool_padding, "pool_padding"),
        bool(ceil_mode))


@torch.library.register_fake("cnnvis::conv_relu_pool")
def _conv_relu_pool_fake(x, weight, bias, stride, padding, dilation, groups, pool_kernel,
                         pool_stride, pool_padding, ceil_mode):
    _, (ph, pw) = _conv_pool_geometry(x.shape, weight.shape, stride, padding, dilation, groups,
                                      pool_kernel, pool_stride, pool_padding, ceil_mode)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError("weight/bias: dtype does not match x's dtype")
    shape = (x.shape[0], weight.shape[0], ph, pw)
    out = x.new_empty(shape, memory_format=torch.channels_last)
    sw = x.new_empty(shape, dtype=torch.uint8, memory_format=torch.channels_last)
    return out, sw


@torch.library.register_fake("cnnvis::_conv_relu_pool_backward")
def _conv_relu_pool_backward_fake(grad_out, x, weight, out, switches, stride, padding, dilation,
                                  groups, pool_kernel, pool_stride, pool_padding, ceil_mode,
                                  output_mask):
    if switches.dtype != torch.uint8:
        raise TypeError(f"switches: expected uint8 switches from conv_relu_pool, got {switches.dtype}")
    gx = (x.new_empty(x.shape, memory_format=torch.channels_last) if output_mask[0]
          else x.new_empty((0,)))
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty((0,))
    gb = x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty((0,))
    return gx, gw, gb


def _conv_relu_pool_setup_context(ctx, inputs, output):
    x, weight, bias, *params = inputs
    out, switches = output
    ctx.save_for_backward(x, weight, out, switches)
    ctx.params = params
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(switches)


def _conv_relu_pool_backward(ctx, grad_out, _grad_switches):
    x, weight, out, switches = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = [bool(needs[0]), bool(needs[1]), bool(ctx.has_bias and needs[2])]
    if grad_out is None or not any(mask):
        return (None,) * 11
    gx, gw, gb = torch.ops.cnnvis._conv_relu_pool_backward(
        grad_out, x, weight, out, switches, *ctx.params, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None) + (None,) * 8


torch.library.register_autograd("cnnvis::conv_relu_pool", _conv_relu_pool_backward,
                                setup_context=_conv_relu_pool_setup_context)


# --------------------------------------------------------------------------
# switches <-> max_unpool2d indices
# --------------------------------------------------------------------------

def _window_origins(switches: Tensor, pool_kernel, pool_stride, pool_padding):
    ph, pw = switches.shape[-2:]
    dev = switches.device
    oy = torch.arange(ph, device=dev) * pool_stride[0] - pool_padding[0]
    ox = torch.arange(pw, device=dev) * pool_stride[1] - pool_padding[1]
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
    pk = _pair(pool_kernel, "pool_kernel")
    ps = pk if pool_stride is None else _pair(pool_stride, "pool_stride")
    pp = _pair(pool_padding, "pool_padding")
    h, w = _pair(tuple(conv_size), "conv_size")
    oy, ox = _window_origins(switches, pk, ps, pp)
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
    pk = _pair(pool_kernel, "pool_kernel")
    ps = pk if pool_stride is None else _pair(pool_stride, "pool_stride")
    pp = _pair(pool_padding, "pool_padding")
    if pk[0] * pk[1] > 255:
        raise ValueError("pool_kernel: windows of more than 255 positions do not fit uint8 switches")
    _, w = _pair(tuple(conv_size), "conv_size")
    oy, ox = _window_origins(indices, pk, ps, pp)
    row = torch.div(indices, w, rounding_mode="floor") - oy
    col = indices % w - ox
    if bool(((row < 0) | (row >= pk[0]) | (col < 0) | (col >= pk[1])).any()):
        raise ValueError("indices: some index lies outside its pooling window")
    return (row * pk[1] + col).to(torch.uint8)
