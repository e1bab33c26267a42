"""total_variation: the TV_beta prior (isotropic) or kornia's L1 TV (anisotropic), per image.

The typed wrappers (the value, and the value with its gradient from one pass)
and the op's fake kernels and autograd formula. The schemas and the argument
checks are in ``csrc/total_variation.cpp``.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _C
from .common import check_tensor, meta

__all__ = ["total_variation", "total_variation_and_grad"]


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
    check_tensor(x, "x")
    args = (float(beta), float(eps), str(reduction), str(mode))
    if torch.is_grad_enabled() and x.requires_grad:
        return _TotalVariationWithGrad.apply(x, *args)[0]
    return torch.ops.cnnvis.total_variation(x, *args)


class _TotalVariationWithGrad(torch.autograd.Function):
    """total_variation for an ``x`` that requires grad: the forward runs
    total_variation_and_grad, which gives the gradient from the same pass over x, and the
    backward only scales it by grad_out. Forward + backward then read x once, where the op's
    own autograd formula (``_total_variation_backward``) reads it again; the gradient costs
    one x-sized tensor kept until the backward. A double backward (create_graph) goes through
    ``_total_variation_backward``, which is differentiable."""

    @staticmethod
    def forward(x, beta, eps, reduction, mode):
        return torch.ops.cnnvis.total_variation_and_grad(x, beta, eps, reduction, mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, *opts = inputs
        ctx.save_for_backward(x)
        # Not a saved tensor: the first backward scales it in place and hands it on (no new
        # x-sized buffer; a fresh one costs its page faults on every step of a loop).
        ctx.grad = output[1]
        ctx.opts = tuple(opts)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no x-sized zeros for the gradient output's grad

    @staticmethod
    def backward(ctx, grad_value, _):
        (x,) = ctx.saved_tensors
        none = (None,) * len(ctx.opts)
        g, ctx.grad = ctx.grad, None
        if grad_value is None or not ctx.needs_input_grad[0]:
            return (None,) + none
        if g is None or torch.is_grad_enabled():
            # a second backward (retain_graph), or create_graph: the gradient's own graph in x
            return (torch.ops.cnnvis._total_variation_backward(grad_value, x, *ctx.opts),) + none
        if (grad_value.dim() == 0 and grad_value.device.type == "cpu"
                and not torch.compiler.is_compiling() and grad_value.item() == 1):
            return (g,) + none  # loss.backward() on the TV itself: no pass over g at all
        scale = grad_value.reshape(-1, *([1] * (x.dim() - 1))) if grad_value.dim() else grad_value
        return (g.mul_(scale),) + none


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
    check_tensor(x, "x")
    return torch.ops.cnnvis.total_variation_and_grad(x, float(beta), float(eps), str(reduction),
                                                     str(mode))


def _value_like(x: Tensor, reduction: str) -> Tensor:
    return x.new_empty((x.shape[0],) if reduction == "none" else ())


@torch.library.register_fake("cnnvis::total_variation")
def _total_variation_fake(x, beta=2.0, eps=1e-8, reduction="sum", mode="isotropic"):
    _C._total_variation_check(meta(x), beta, eps, reduction, mode)
    return _value_like(x, reduction)


@torch.library.register_fake("cnnvis::_total_variation_backward")
def _total_variation_backward_fake(grad_out, x, beta, eps, reduction, mode):
    _C._total_variation_backward_check(meta(grad_out), meta(x), beta, eps, reduction, mode)
    return x.new_empty(x.shape)


@torch.library.register_fake("cnnvis::total_variation_and_grad")
def _total_variation_and_grad_fake(x, beta=2.0, eps=1e-8, reduction="sum", mode="isotropic"):
    _C._total_variation_check(meta(x), beta, eps, reduction, mode)
    return _value_like(x, reduction), x.new_empty(x.shape)


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


def _total_variation_backward_setup_context(ctx, inputs, output):
    grad_out, x, *opts = inputs
    ctx.save_for_backward(grad_out, x)
    ctx.opts = tuple(opts)


def _total_variation_backward_autograd(ctx, gg):
    """The vector-Jacobian product of the backward (gradients of grad_out and x), for a double
    backward: autograd through the plain-PyTorch formula (ops.reference), which second
    derivatives need only rarely (a gradient penalty), so no kernel of its own."""
    from . import reference  # the oracle module; imported here, used only by this path

    grad_out, x = ctx.saved_tensors
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        go = grad_out.detach().requires_grad_()
        v = reference.total_variation(xr, *ctx.opts)
        (gx,) = torch.autograd.grad(v, xr, go, create_graph=True)
        d_go, d_x = torch.autograd.grad(gx, (go, xr), gg, allow_unused=True)
    d_go = torch.zeros_like(grad_out) if d_go is None else d_go
    d_x = torch.zeros_like(x) if d_x is None else d_x
    return (d_go if ctx.needs_input_grad[0] else None,
            d_x if ctx.needs_input_grad[1] else None) + (None,) * len(ctx.opts)


torch.library.register_autograd("cnnvis::total_variation", _total_variation_autograd,
                                setup_context=_total_variation_setup_context)
torch.library.register_autograd("cnnvis::_total_variation_backward",
                                _total_variation_backward_autograd,
                                setup_context=_total_variation_backward_setup_context)
