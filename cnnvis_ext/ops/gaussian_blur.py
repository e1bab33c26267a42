"""gaussian_blur: depthwise separable Gaussian blur with reflect borders, and its adjoint.

The typed wrapper and the op's fake kernels and autograd formula. The schemas
and the argument checks are in ``csrc/gaussian_blur.cpp``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _C
from .common import check_tensor, check_type, meta

__all__ = ["gaussian_blur", "gaussian_blur_kernel_size"]


def gaussian_blur_kernel_size(sigma: float) -> int:
    """The default kernel size for ``sigma``: ``2 * ceil(3 * sigma) + 1`` (odd, 1 for sigma 0)."""
    return 2 * math.ceil(3 * float(sigma)) + 1


@torch.compiler.assume_constant_result
def _max_kernel_size(h: int, w: int) -> int:
    """The largest kernel_size the op takes for an (h, w) image (its C++ check's bound); a
    constant of the traced graph under torch.compile."""
    return _C._max_blur_kernel_size(h, w)


def _sigma_and_kernel_size(x: Tensor, sigma: Union[float, Tensor],
                           kernel_size: Optional[int]) -> Tuple[Tensor, int]:
    """sigma as the op takes it (a tensor) and the kernel size, by default from sigma's largest
    value (which a tensor sigma gives with a synchronization on CUDA)."""
    check_type(sigma, "sigma", (int, float, Tensor), "a float or a floating-point tensor")
    if isinstance(sigma, Tensor):
        s = sigma
        # a meta sigma has no values: the op's device check names it
        readable = sigma.numel() and sigma.device.type != "meta" and sigma.is_floating_point()
        largest = float(sigma.max()) if kernel_size is None and readable else 0.0
    else:
        s = torch.tensor(float(sigma), dtype=torch.float64)
        largest = float(sigma)
    if kernel_size is None:
        # A sigma the op rejects (not finite, negative) has no default size: any valid size
        # lets the op's check name sigma.
        valid = math.isfinite(largest) and largest >= 0
        if valid and x.dim() == 4 and not isinstance(x.shape[2] + x.shape[3], torch.SymInt):
            limit = _max_kernel_size(int(x.shape[2]), int(x.shape[3]))
            if gaussian_blur_kernel_size(largest) > limit:
                raise ValueError(
                    f"sigma: {largest:g} needs a kernel of {gaussian_blur_kernel_size(largest)} "
                    f"taps, more than an image of (H, W) = ({x.shape[2]}, {x.shape[3]}) can use "
                    f"(at most {limit}; taps past the image fold back onto it): use sigma <= "
                    f"{(limit // 2) / 3:g} or pass kernel_size")
        kernel_size = gaussian_blur_kernel_size(largest) if valid else 1
    check_type(kernel_size, "kernel_size", (int, torch.SymInt), "an odd int >= 1")
    if isinstance(kernel_size, int) and kernel_size >= 2 ** 63:
        raise ValueError(f"kernel_size: {kernel_size} does not fit in int64")
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
    check_tensor(x, "x")
    s, ks = _sigma_and_kernel_size(x, sigma, kernel_size)
    return torch.ops.cnnvis.gaussian_blur(x, s, ks)


@torch.library.register_fake("cnnvis::gaussian_blur")
def _gaussian_blur_fake(x, sigma, kernel_size):
    _C._gaussian_blur_check(meta(x), meta(sigma), int(kernel_size), "x")
    return x.new_empty(x.shape)


@torch.library.register_fake("cnnvis::_gaussian_blur_backward")
def _gaussian_blur_backward_fake(grad_out, sigma, kernel_size):
    _C._gaussian_blur_check(meta(grad_out), meta(sigma), int(kernel_size), "grad_out")
    return grad_out.new_empty(grad_out.shape)


def _save_sigma(ctx, inputs, output):
    _, sigma, kernel_size = inputs
    ctx.save_for_backward(sigma)
    ctx.kernel_size = kernel_size


def _gaussian_blur_autograd(ctx, grad_out):
    (sigma,) = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return torch.ops.cnnvis._gaussian_blur_backward(grad_out, sigma, ctx.kernel_size), None, None


def _gaussian_blur_backward_autograd(ctx, grad):
    # the adjoint of the adjoint is the blur: double backward works
    (sigma,) = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return torch.ops.cnnvis.gaussian_blur(grad, sigma, ctx.kernel_size), None, None


torch.library.register_autograd("cnnvis::gaussian_blur", _gaussian_blur_autograd,
                                setup_context=_save_sigma)
torch.library.register_autograd("cnnvis::_gaussian_blur_backward", _gaussian_blur_backward_autograd,
                                setup_context=_save_sigma)
