"""regularize_: the in-place prior step of a visualization loop, all its parts in one pass.

The typed wrapper and the op's fake kernel (the op mutates x and returns
nothing, so it needs no autograd formula). The schema and the argument checks
are in ``csrc/regularize.cpp``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _C
from .common import check_tensor, meta

__all__ = ["regularize_"]


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
    ``torch.kthvalue`` on CUDA (float32 statistics for half/bfloat16). An
    image whose values contain NaN is not clipped. The contribution is the
    signed channel sum of ``x * grad`` (Yosinski et al. clip by its size; use
    ``grad.neg()`` or pre-process ``grad`` for other conventions).

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
    check_tensor(x, "x")
    check_tensor(grad, "grad")
    torch.ops.cnnvis.regularize_(x, grad, float(lr), float(decay), float(blur_sigma),
                                 float(norm_pct), float(contrib_pct), float(lo), float(hi))
    return x


@torch.library.register_fake("cnnvis::regularize_")
def _regularize_fake(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi):
    _C._regularize_check(meta(x), meta(grad), lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi)
