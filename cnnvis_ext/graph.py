"""The model as the methods that rewrite or walk it see it.

Today: the exact folding of an eval-mode BatchNorm into the affine layer before
it, the one implementation used by the deconvnet, LRP and the canonizers.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["batchnorm_affine", "fold_batchnorm"]


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel, for ``bn`` in eval mode.

    Computed from the live running statistics and affine parameters (so it
    keeps their autograd graph); a BatchNorm without running statistics, or in
    training mode, has no such form and raises a ValueError.
    """
    if bn.training or bn.running_var is None or bn.running_mean is None:
        raise ValueError(f"{type(bn).__name__} must be in eval mode with running statistics to be "
                         "folded (call model.eval())")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], bn: nn.modules.batchnorm._BatchNorm
                   ) -> Tuple[Tensor, Tensor]:
    """Weight and bias of the layer ``bn(layer(x))``, for a convolution or linear ``layer``
    whose output channels are ``weight``'s first dimension."""
    scale, shift = batchnorm_affine(bn)
    scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias * scale + shift
    return w, b
