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
    if not x.dtype.is_floating_point:
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match x's dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: on {t.device} but x is on {x.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    shape = (x.shape[0], weight.shape[0], ph, pw)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    sw = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=torch.channels_last)
    return out, sw


@torch.library.register_fake("cnnvis::_conv_relu_pool_backward")
def _conv_relu_pool_backward_fake(grad_out, x, weight, out, switches, stride, padding, dilation,
                                  groups, pool_kernel, pool_stride, pool_padding, ceil_mode,
                                  output_mask):
    if switches.dtype != torch.uint8:
        raise TypeError(f"switches: expected uint8 switches from conv_relu_pool, got {switches.dtype}")
    gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
          if output_mask[0] else x.new_empty((0,)))
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


# --------------------------------------------------------------------------
# unpool_conv_transpose (issue 3: one deconvnet step)
# --------------------------------------------------------------------------

__all__ += ["unpool_conv_transpose"]


def _uct_sizes(p_shape, w_shape, stride, padding, dilation, pool_kernel, pool_stride,
               pool_padding, output_size, input_size):
    """Default ``output_size`` (what max_unpool2d picks) and ``input_size`` (output_padding 0)."""
    if output_size is None:
        output_size = tuple((p_shape[2 + i] - 1) * pool_stride[i] - 2 * pool_padding[i]
                            + pool_kernel[i] for i in range(2))
    else:
        output_size = _pair(tuple(output_size), "output_size")
    if input_size is None:
        input_size = tuple((output_size[i] - 1) * stride[i] - 2 * padding[i]
                           + dilation[i] * (w_shape[2 + i] - 1) + 1 for i in range(2))
    else:
        input_size = _pair(tuple(input_size), "input_size")
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
    st, pd, dl = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    pk = _pair(pool_kernel, "pool_kernel")
    ps = pk if pool_stride is None else _pair(pool_stride, "pool_stride")
    pp = _pair(pool_padding, "pool_padding")
    if not isinstance(p, Tensor) or not isinstance(weight, Tensor):
        raise TypeError("p, weight: expected tensors")
    if p.dim() != 4:
        raise ValueError(f"p: expected a 4-D (N, C_out, H_p, W_p) tensor, got shape {tuple(p.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (C_out, C_in/groups, kH, kW) tensor, got shape "
                         f"{tuple(weight.shape)}")
    osz, isz = _uct_sizes(p.shape, weight.shape, st, pd, dl, pk, ps, pp, output_size, input_size)
    return torch.ops.cnnvis.unpool_conv_transpose(
        p, switches, weight, st, pd, dl, int(groups), pk, ps, pp, list(osz), list(isz),
        bool(rectify), str(algorithm))


@torch.library.register_fake("cnnvis::unpool_conv_transpose")
def _unpool_conv_transpose_fake(p, switches, weight, stride, padding, dilation, groups,
                                pool_kernel, pool_stride, pool_padding, output_size, input_size,
                                rectify, algorithm="auto"):
    if p.dim() != 4 or weight.dim() != 4:
        raise ValueError("p, weight: expected 4-D tensors")
    if weight.dtype != p.dtype:
        raise TypeError(f"weight: dtype {weight.dtype} does not match p's dtype {p.dtype}")
    if switches is not None and switches.dtype != torch.uint8:
        raise TypeError(f"switches: expected uint8 switches, got {switches.dtype}")
    if weight.shape[0] != p.shape[1]:
        raise ValueError(f"weight: has C_out={weight.shape[0]} filters but p has {p.shape[1]} channels")
    shape = (p.shape[0], weight.shape[1] * groups, input_size[0], input_size[1])
    return torch.empty(shape, dtype=p.dtype, device=p.device, memory_format=torch.channels_last)


@torch.library.register_fake("cnnvis::_unpool_conv_transpose_backward")
def _unpool_conv_transpose_backward_fake(grad_out, p, switches, weight, stride, padding, dilation,
                                         groups, pool_kernel, pool_stride, pool_padding,
                                         output_size, input_size, rectify, output_mask):
    gp = (torch.empty(p.shape, dtype=p.dtype, device=p.device, memory_format=torch.channels_last)
          if output_mask[0] else p.new_empty((0,)))
    gw = weight.new_empty(weight.shape) if output_mask[1] else p.new_empty((0,))
    return gp, gw


def _unpool_conv_transpose_setup_context(ctx, inputs, output):
    p, switches, weight, *params = inputs
    ctx.save_for_backward(p, switches, weight)
    ctx.params = params[:-1]  # everything but `algorithm`


def _unpool_conv_transpose_backward(ctx, grad_out):
    p, switches, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = [bool(needs[0]), bool(needs[2])]
    if grad_out is None or not any(mask):
        return (None,) * 14
    gp, gw = torch.ops.cnnvis._unpool_conv_transpose_backward(
        grad_out, p, switches, weight, *ctx.params, mask)
    return (gp if mask[0] else None, None, gw if mask[1] else None) + (None,) * 11


torch.library.register_autograd("cnnvis::unpool_conv_transpose", _unpool_conv_transpose_backward,
                                setup_context=_unpool_conv_transpose_setup_context)


# ==========================================================================
# total_variation  (issue 4; section owned by the regularizers work)
# ==========================================================================

import math  # noqa: E402

__all__ += ["total_variation", "total_variation_and_grad"]

_TV_REDUCTIONS = ("sum", "mean", "none")
_TV_MODES = ("isotropic", "anisotropic")


def _tv_check(x, beta, eps, reduction, mode) -> None:
    """The checks of the C++ op, for the fake kernels (same messages)."""
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if mode not in _TV_MODES:
        raise ValueError(f"mode: expected 'isotropic' or 'anisotropic', got {mode!r}")
    if mode == "isotropic" and not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite value > 0, got {beta}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps}")
    if reduction not in _TV_REDUCTIONS:
        raise ValueError(f"reduction: expected 'sum', 'mean' or 'none', got {reduction!r}")


def _tv_value_like(x: Tensor, reduction: str) -> Tensor:
    return x.new_empty((x.shape[0],) if reduction == "none" else ())


def total_variation(x: Tensor, beta: float = 2.0, eps: float = 1e-8, reduction: str = "sum",
                    mode: str = "isotropic") -> Tensor:
    r"""Total variation of a batch of images, value and gradient each in one pass.

    With forward differences that are zero past the last column and row,
    :math:`d_x[i,j] = x[i,j+1] - x[i,j]` and :math:`d_y[i,j] = x[i+1,j] - x[i,j]`,
    the value of one image is the sum over channels and pixels of

    * ``mode="isotropic"``: :math:`(d_x^2 + d_y^2 + \epsilon)^{\beta/2}`, the
      :math:`TV^\beta` prior of Mahendran & Vedaldi, *Understanding Deep Image
      Representations by Inverting Them* (2015). Every pixel has a term, the
      last row and column included (there it is :math:`\epsilon^{\beta/2}`).
    * ``mode="anisotropic"``: :math:`|d_x| + |d_y|` (``beta`` and ``eps``
      unused), the definition of :func:`kornia.losses.total_variation`:
      ``total_variation(x, mode="anisotropic", reduction="none")`` equals
      ``kornia.losses.total_variation(x, reduction="sum").sum(1)``.

    The gradient is a registered op of its own (``_total_variation_backward``),
    so the op works under autograd and ``torch.compile``; use
    :func:`total_variation_and_grad` to get both from a single pass.

    Args:
        x: images :math:`(N, C, H, W)`; float32/float64 on CPU, float32/float16/
            bfloat16 on CUDA (float32 accumulation). Any strides.
        beta: exponent :math:`\beta > 0` of the isotropic prior. ``beta=2`` and
            ``beta=1`` take fast paths without ``pow``.
        eps: :math:`\epsilon \ge 0`, keeps the isotropic gradient finite where
            the image is flat when :math:`\beta < 2`.
        reduction: ``"sum"`` (over the batch), ``"mean"`` (the sum divided by
            ``x.numel()``, one term per element) or ``"none"`` (one value per image).
        mode: ``"isotropic"`` or ``"anisotropic"``.

    Returns:
        A 0-d tensor (``"sum"``/``"mean"``) or a tensor of shape :math:`(N,)`
        (``"none"``), of x's dtype (accumulated in float64 on CPU, float32 on CUDA).

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`()` or :math:`(N,)`

    Example:
        >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
        >>> tv = total_variation(x, beta=2.0)
        >>> tv.backward()
        >>> total_variation(x, reduction="none").shape
        torch.Size([2])
    """
    return torch.ops.cnnvis.total_variation(x, float(beta), float(eps), str(reduction), str(mode))


def total_variation_and_grad(x: Tensor, beta: float = 2.0, eps: float = 1e-8,
                             reduction: str = "sum",
                             mode: str = "isotropic") -> Tuple[Tensor, Tensor]:
    r"""Value and gradient of :func:`total_variation` from one pass over ``x``.

    For loops that need both (a prior step of activation maximization or
    inversion): no autograd graph is built and ``x`` is read once. The
    gradient is that of the *sum* of the returned values (for
    ``reduction="none"``, the gradient of ``value.sum()``; for ``"mean"``,
    of the mean).

    Args:
        x, beta, eps, reduction, mode: as in :func:`total_variation`.

    Returns:
        ``(value, grad)``: the value as :func:`total_variation` returns it and
        ``grad`` of x's shape (contiguous).

    Example:
        >>> x = torch.rand(1, 3, 64, 64)
        >>> value, grad = total_variation_and_grad(x, beta=1.0)
        >>> x -= 0.1 * grad
    """
    return torch.ops.cnnvis.total_variation_and_grad(x, float(beta), float(eps), str(reduction),
                                                     str(mode))


@torch.library.register_fake("cnnvis::total_variation")
def _total_variation_fake(x, beta=2.0, eps=1e-8, reduction="sum", mode="isotropic"):
    _tv_check(x, beta, eps, reduction, mode)
    return _tv_value_like(x, reduction)


@torch.library.register_fake("cnnvis::_total_variation_backward")
def _total_variation_backward_fake(grad_out, x, beta, eps, reduction, mode):
    _tv_check(x, beta, eps, reduction, mode)
    return x.new_empty(x.shape)


@torch.library.register_fake("cnnvis::total_variation_and_grad")
def _total_variation_and_grad_fake(x, beta=2.0, eps=1e-8, reduction="sum", mode="isotropic"):
    _tv_check(x, beta, eps, reduction, mode)
    return _tv_value_like(x, reduction), x.new_empty(x.shape)


def _total_variation_setup_context(ctx, inputs, output):
    x, *opts = inputs
    ctx.save_for_backward(x)
    ctx.n_opts = len(opts)
    ctx.opts = tuple(opts) + (2.0, 1e-8, "sum", "isotropic")[len(opts):]  # schema defaults


def _total_variation_autograd(ctx, grad_out):
    (x,) = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return (None,) * (1 + ctx.n_opts)
    gx = torch.ops.cnnvis._total_variation_backward(grad_out, x, *ctx.opts)
    return (gx,) + (None,) * ctx.n_opts


torch.library.register_autograd("cnnvis::total_variation", _total_variation_autograd,
                                setup_context=_total_variation_setup_context)


# ==========================================================================
# gaussian_blur  (issue 4; section owned by the regularizers work)
# ==========================================================================

__all__ += ["gaussian_blur", "gaussian_blur_kernel_size"]


def gaussian_blur_kernel_size(sigma: float) -> int:
    """The default kernel size for ``sigma``: ``2 * ceil(3 * sigma) + 1`` (odd, 1 for sigma 0)."""
    return 2 * math.ceil(3 * float(sigma)) + 1


def _blur_sigma(sigma, kernel_size):
    """(sigma as a tensor, kernel size) with the Python-side checks."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, Tensor)):
        raise TypeError(f"sigma: expected a float or a floating-point tensor, got "
                        f"{type(sigma).__name__}")
    if isinstance(sigma, Tensor):
        if not sigma.is_floating_point():
            raise TypeError(f"sigma: expected a float or a floating-point tensor, got {sigma.dtype}")
        s = sigma
        if kernel_size is None:  # needs the largest sigma (a device sync on CUDA)
            smax = float(sigma.max()) if sigma.numel() else 0.0
            if not (math.isfinite(smax) and float(sigma.min()) >= 0):
                raise ValueError(f"sigma: expected finite values >= 0, got {sigma}")
            kernel_size = gaussian_blur_kernel_size(smax)
    else:
        sf = float(sigma)
        if not (math.isfinite(sf) and sf >= 0):
            raise ValueError(f"sigma: expected finite values >= 0, got {sf}")
        s = torch.tensor(sf, dtype=torch.float64)
        if kernel_size is None:
            kernel_size = gaussian_blur_kernel_size(sf)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, torch.SymInt)):
        raise TypeError(f"kernel_size: expected an odd int >= 1, got {kernel_size!r}")
    return s, kernel_size


def gaussian_blur(x: Tensor, sigma: Union[float, Tensor], kernel_size: Optional[int] = None) -> Tensor:
    r"""Depthwise Gaussian blur with reflect borders, both passes fused in one kernel.

    Every channel of every image is convolved with the separable Gaussian of
    its own ``sigma``; the taps are those of
    :func:`torchvision.transforms.functional.gaussian_blur`
    (:math:`\exp(-\tfrac12 ((i - r)/\sigma)^2)`, normalized, for
    :math:`i = 0..2r`) and the borders are padded by reflection, so with the
    same ``kernel_size`` and a scalar ``sigma`` the result equals torchvision's
    (within float tolerance). ``sigma = 0`` is the identity.

    Kernels wider than the image: where ``kernel_size // 2 >= H`` (or ``W``),
    torch's "reflect" padding is undefined; here the reflection is repeated
    (the padded index folds back and forth with period ``2 (n - 1)``; a side
    of length 1 just repeats its pixel), so the result is still a normalized
    weighted average of the image and is continuous in ``sigma``.

    The op is differentiable w.r.t. ``x``: the backward is the adjoint of the
    blur (its own op, ``_gaussian_blur_backward``), which differs from the
    blur near the borders. ``sigma`` is not differentiated.

    Args:
        x: images :math:`(N, C, H, W)`; float32/float64 on CPU,
            float32/float16/bfloat16 on CUDA (float32 accumulation).
        sigma: standard deviation in pixels, ``>= 0``: a float, or a tensor
            broadcastable to :math:`(N, C)`: :math:`(N, 1)` per image,
            :math:`(1, C)` or :math:`(C,)` per channel, :math:`(N, C)`.
        kernel_size: odd size of the 1-D kernel, the same for every channel.
            Default ``2 * ceil(3 * max(sigma)) + 1`` (reading a tensor sigma's
            maximum synchronizes with the GPU; pass it to avoid that).

    Returns:
        The blurred images, same shape and dtype as ``x`` (contiguous).

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: :math:`(N, C, H, W)`

    Example:
        >>> x = torch.rand(4, 3, 64, 64)
        >>> y = gaussian_blur(x, 1.0)                      # kernel_size 7
        >>> y = gaussian_blur(x, torch.tensor([[0.5], [1.0], [2.0], [0.0]]))  # per image
    """
    s, ks = _blur_sigma(sigma, kernel_size)
    return torch.ops.cnnvis.gaussian_blur(x, s, ks)


def _blur_check_fake(x, sigma, kernel_size, name):
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if not sigma.is_floating_point():
        raise TypeError(f"sigma: expected a float or a floating-point tensor, got {sigma.dtype}")
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size: expected an odd value >= 1, got {kernel_size}")
    n, c = x.shape[0], x.shape[1]
    ok = sigma.dim() <= 2 and all(
        sigma.shape[d] in (1, (c if d == sigma.dim() - 1 else n)) for d in range(sigma.dim()))
    if not ok:
        raise ValueError(f"sigma: expected a float or a tensor broadcastable to (N, C) = ({n}, {c}), "
                         f"got shape {tuple(sigma.shape)}")


@torch.library.register_fake("cnnvis::gaussian_blur")
def _gaussian_blur_fake(x, sigma, kernel_size):
    _blur_check_fake(x, sigma, kernel_size, "x")
    return x.new_empty(x.shape)


@torch.library.register_fake("cnnvis::_gaussian_blur_backward")
def _gaussian_blur_backward_fake(grad_out, sigma, kernel_size):
    _blur_check_fake(grad_out, sigma, kernel_size, "grad_out")
    return grad_out.new_empty(grad_out.shape)


def _gaussian_blur_setup_context(ctx, inputs, output):
    _, sigma, kernel_size = inputs
    ctx.save_for_backward(sigma)
    ctx.kernel_size = kernel_size


def _gaussian_blur_autograd(ctx, grad_out):
    (sigma,) = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return torch.ops.cnnvis._gaussian_blur_backward(grad_out, sigma, ctx.kernel_size), None, None


torch.library.register_autograd("cnnvis::gaussian_blur", _gaussian_blur_autograd,
                                setup_context=_gaussian_blur_setup_context)


def _gaussian_blur_backward_setup_context(ctx, inputs, output):
    _, sigma, kernel_size = inputs
    ctx.save_for_backward(sigma)
    ctx.kernel_size = kernel_size


def _gaussian_blur_backward_autograd(ctx, grad):
    # the adjoint of the adjoint is the blur: double backward works
    (sigma,) = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return torch.ops.cnnvis.gaussian_blur(grad, sigma, ctx.kernel_size), None, None


torch.library.register_autograd("cnnvis::_gaussian_blur_backward", _gaussian_blur_backward_autograd,
                                setup_context=_gaussian_blur_backward_setup_context)


# ==========================================================================
# regularize_  (issue 4; section owned by the regularizers work)
# ==========================================================================

__all__ += ["regularize_"]


def regularize_(x: Tensor, grad: Tensor, lr: float = 1.0, decay: float = 0.0,
                blur_sigma: float = 0.0, norm_pct: float = 0.0, contrib_pct: float = 0.0,
                lo: float = float("-inf"), hi: float = float("inf")) -> Tensor:
    r"""One in-place prior step of a visualization loop (Yosinski et al., 2015), fused.

    Applies, in this order, to every image of the batch (each part is skipped
    at its neutral value)::

        x += lr * grad                       # lr = 0: off (grad not read)
        x *= 1 - decay                       # L2 decay; decay = 0: off
        x = gaussian_blur(x, blur_sigma)     # kernel 2*ceil(3 sigma)+1; 0: off
        n[p] = sqrt(sum_c x[c, p]^2)         # pixel norm across channels
        x[:, p] = 0 where n[p] < quantile(n, norm_pct / 100)        # 0: off
        k[p] = sum_c x[c, p] * grad[c, p]    # contribution, after the norm clip
        x[:, p] = 0 where k[p] < quantile(k, contrib_pct / 100)     # 0: off
        x.clamp_(lo, hi)                     # -inf / inf: off

    Percentiles are per image, over its :math:`H W` pixels:
    ``quantile(v, q)`` is ``torch.quantile(v, q, interpolation="linear")``
    computed in x's dtype, and a pixel is zeroed when its value is *strictly*
    below it, so ``pct = 0`` zeroes nothing and ``pct = 100`` keeps only the
    pixels equal to the maximum. The selection is exact (the same pixels as
    the torch.quantile formulation, up to rounding ties) and uses a radix
    selection on CPU (linear time, no sort; norms are selected as squared
    norms and compared against the exact squared cut of the threshold) and
    ``torch.kthvalue`` on CUDA (float32 statistics for half/bfloat16). An image whose values contain NaN is not clipped. The
    contribution is the signed channel sum of ``x * grad``, as the issue
    specifies (Yosinski et al. clip by its size; use ``grad.neg()`` or
    pre-process ``grad`` for other conventions).

    Args:
        x: images :math:`(N, C, H, W)`, updated in place; float32/float64 on
            CPU, float32/float16/bfloat16 on CUDA (float32 accumulation). Any
            layout (non-contiguous x is processed in a contiguous copy and
            written back).
        grad: the step direction, same shape, dtype and device as ``x``
            (e.g. the gradient of the objective for ascent, with ``lr > 0``).
        lr: step size (any finite value).
        decay: L2 decay factor in :math:`[0, 1]`.
        blur_sigma: Gaussian blur sigma :math:`\ge 0` (see :func:`gaussian_blur`).
        norm_pct, contrib_pct: percentiles in :math:`[0, 100]`.
        lo, hi: clamp bounds, ``lo <= hi``.

    Returns:
        ``x`` (the same tensor, modified in place).

    Example:
        >>> x = torch.rand(8, 3, 64, 64)
        >>> g = torch.randn_like(x)
        >>> _ = regularize_(x, g, lr=0.1, decay=1e-4, blur_sigma=0.5, norm_pct=10, lo=0, hi=1)
    """
    torch.ops.cnnvis.regularize_(x, grad, float(lr), float(decay), float(blur_sigma),
                                 float(norm_pct), float(contrib_pct), float(lo), float(hi))
    return x


@torch.library.register_fake("cnnvis::regularize_")
def _regularize_fake(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi):
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if grad.shape != x.shape:
        raise ValueError(f"grad: expected the shape of x {tuple(x.shape)}, got {tuple(grad.shape)}")
    if grad.dtype != x.dtype:
        raise TypeError(f"grad: dtype {grad.dtype} does not match x's dtype {x.dtype}")
    for name, v in (("norm_pct", norm_pct), ("contrib_pct", contrib_pct)):
        if not 0 <= v <= 100:
            raise ValueError(f"{name}: expected a percentile in [0, 100], got {v}")
    return None
