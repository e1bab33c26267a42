"""Plain-PyTorch versions of every cnnvis op.

The test oracle, the benchmark baselines and the plain versions of the
priors: each function is written with stock ``torch`` /
``torch.nn.functional`` calls only, so it is independent of the extension's
kernels (it never calls ``torch.ops.cnnvis``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import pair


def conv_relu_pool(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
                   dilation=1, groups: int = 1, pool_kernel=2, pool_stride=None, pool_padding=0,
                   ceil_mode: bool = False) -> Tuple[Tensor, Tensor]:
    """``max_pool2d(relu(conv2d(x)))`` and the int64 max_pool2d indices.

    Returns ``(out, indices)``; indices are flat positions in the conv output
    (what ``max_unpool2d`` takes), compare them with
    :func:`cnnvis_ext.ops.switches_to_indices` of the op's switches.
    """
    y = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    if pool_stride is None:
        pool_stride = pool_kernel
    return F.max_pool2d(y, pool_kernel, pool_stride, pool_padding, ceil_mode=ceil_mode,
                        return_indices=True)


def conv_output_size(x_shape: Sequence[int], weight_shape: Sequence[int], stride=1, padding=0,
                     dilation=1) -> Tuple[int, int]:
    """(H, W) of ``conv2d``'s output, computed by running it on a meta tensor."""
    x = torch.empty(tuple(x_shape), device="meta")
    w = torch.empty(tuple(weight_shape), device="meta")
    groups = x.shape[1] // w.shape[1]
    return tuple(F.conv2d(x, w, None, stride, padding, dilation, groups).shape[-2:])


def unpool_conv_transpose(p: Tensor, indices: Optional[Tensor], weight: Tensor, stride=1,
                          padding=0, dilation=1, groups: int = 1, output_size=None,
                          input_size=None, rectify: bool = True) -> Tensor:
    """``conv_transpose2d(relu(unpool(p)), weight)`` with int64 max_pool2d ``indices``.

    Unpools with ``scatter_add`` (values of colliding indices add up, as in the
    gradient of ``max_pool2d``; identical to ``F.max_unpool2d`` when no two
    indices collide), then rectifies. ``indices=None`` means no pooling.
    ``output_padding`` is chosen so the result is ``input_size`` (the
    smallest size when ``None``).
    """
    n, c = p.shape[:2]
    if indices is None:
        u = p
    else:
        h, w = output_size
        u = torch.zeros(n, c, h * w, dtype=p.dtype, device=p.device)
        u.scatter_add_(2, indices.flatten(2), p.flatten(2))  # flatten: also for an empty batch
        u = u.view(n, c, h, w)
    if rectify:
        u = F.relu(u)
    st, pd, dl = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    smallest = [(u.shape[2 + i] - 1) * st[i] - 2 * pd[i] + dl[i] * (weight.shape[2 + i] - 1) + 1
                for i in range(2)]
    op = (0, 0) if input_size is None else tuple(input_size[i] - smallest[i] for i in range(2))
    return F.conv_transpose2d(u, weight, None, st, pd, op, groups, dl)


def _tv_reduce(per_image: Tensor, numel: int, reduction: str) -> Tensor:
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.sum() / numel
    return per_image.sum()


def total_variation(x: Tensor, beta: float = 2.0, eps: float = 1e-8, reduction: str = "sum",
                    mode: str = "isotropic") -> Tensor:
    """TV of ``x`` (N, C, H, W) with forward differences zero past the last row / column.

    isotropic: sum ((dx^2 + dy^2 + eps)^(beta/2)); anisotropic: sum |dx| + |dy|.
    ``reduction``: "sum", "mean" (sum / x.numel()) or "none" (per image).
    """
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    if mode == "isotropic":
        terms = (dx * dx + dy * dy + eps).pow(beta / 2)
    elif mode == "anisotropic":
        terms = dx.abs() + dy.abs()
    else:
        raise ValueError(f"mode: {mode!r}")
    return _tv_reduce(terms.sum((1, 2, 3)), x.numel(), reduction)


def total_variation_kornia(x: Tensor) -> Tensor:
    """kornia.losses.total_variation(x, reduction="sum") written out: shape (N, C)."""
    d1 = x[..., 1:, :] - x[..., :-1, :]
    d2 = x[..., :, 1:] - x[..., :, :-1]
    return d1.abs().flatten(-2).sum(-1) + d2.abs().flatten(-2).sum(-1)


def gaussian_kernel1d(sigma: float, kernel_size: int, dtype=torch.float64, device=None) -> Tensor:
    """torchvision's ``_get_gaussian_kernel1d``: normalized exp(-0.5 (x / sigma)^2)."""
    half = (kernel_size - 1) * 0.5
    xs = torch.linspace(-half, half, steps=kernel_size, dtype=dtype, device=device)
    if sigma == 0:
        return (xs == 0).to(dtype)
    pdf = torch.exp(-0.5 * (xs / sigma).pow(2))
    return pdf / pdf.sum()


def reflect_fold_index(n: int, radius: int, device=None) -> Tensor:
    """Indices of the padded positions -radius .. n-1+radius under repeated reflection."""
    p = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(p)
    period = 2 * (n - 1)
    m = torch.remainder(p, period)
    return torch.where(m < n, m, period - m)


def gaussian_blur(x: Tensor, sigma, kernel_size: Optional[int] = None) -> Tensor:
    """Depthwise separable blur, per-(N, C) sigma, repeated-reflection padding.

    Padding is an index_select with folded indices (differentiable, so
    autograd gives the adjoint), then a vertical and a horizontal depthwise
    conv2d in float64.
    """
    n, c, h, w = x.shape
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(n, c).reshape(-1).tolist()
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * max(s + [0.0])) + 1
    r = kernel_size // 2
    taps = torch.stack([gaussian_kernel1d(v, kernel_size) for v in s]) if s else \
        torch.zeros(0, kernel_size, dtype=torch.float64)
    taps = taps.to(x.device)
    xp = x.to(torch.float64).reshape(1, n * c, h, w)
    xp = xp.index_select(2, reflect_fold_index(h, r, x.device))
    xp = xp.index_select(3, reflect_fold_index(w, r, x.device))
    y = F.conv2d(xp, taps.view(n * c, 1, kernel_size, 1), groups=n * c) if n * c else xp[..., r:h + r, :]
    y = F.conv2d(y, taps.view(n * c, 1, 1, kernel_size), groups=n * c) if n * c else y[..., r:w + r]
    return y.reshape(n, c, h, w).to(x.dtype)


def _reflect_padded(x: Tensor, sigma: float, kernel_size: int) -> Tuple[Tensor, Tensor]:
    """``x`` padded by reflection for a ``kernel_size`` kernel, and the 1-D taps in x's dtype."""
    r = kernel_size // 2
    taps = gaussian_kernel1d(sigma, kernel_size, dtype=x.dtype, device=x.device)
    return F.pad(x, [r, r, r, r], mode="reflect"), taps


def gaussian_blur_torchvision(x: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """torchvision.transforms.functional.gaussian_blur written out (scalar sigma, square kernel).

    2-D kernel = outer product of the 1-D taps, "reflect" padding of
    kernel_size // 2, depthwise conv2d. Needs kernel_size // 2 < H and W.
    """
    xp, k1 = _reflect_padded(x, sigma, kernel_size)
    k2 = torch.mm(k1[:, None], k1[None, :])
    return F.conv2d(xp, k2.expand(x.shape[1], 1, kernel_size, kernel_size), groups=x.shape[1])


def gaussian_blur_separable(x: Tensor, sigma: float, kernel_size: Optional[int] = None) -> Tensor:
    """Eager separable blur: reflect pad + depthwise (K,1) and (1,K) conv2d (benchmark baseline).

    ``kernel_size`` defaults to ``2 * ceil(3 * sigma) + 1``. Needs
    kernel_size // 2 < H and W.
    """
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * sigma) + 1
    xp, k1 = _reflect_padded(x, sigma, kernel_size)
    c = x.shape[1]
    y = F.conv2d(xp, k1.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)
    return F.conv2d(y, k1.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)


def regularize_(x: Tensor, grad: Tensor, lr: float = 1.0, decay: float = 0.0,
                blur_sigma: float = 0.0, norm_pct: float = 0.0, contrib_pct: float = 0.0,
                lo: float = float("-inf"), hi: float = float("inf"),
                blur: Callable[[Tensor, float], Tensor] = gaussian_blur) -> Tensor:
    """The prior step of :func:`cnnvis_ext.ops.regularize_`, one eager op per part (in place).

    ``blur(x, sigma)`` blurs; the default is :func:`gaussian_blur` (the exact
    oracle); a benchmark passes :func:`gaussian_blur_separable` for the blur
    one would write in eager PyTorch.
    """
    n, c, h, w = x.shape
    if x.numel() == 0:
        return x
    if lr != 0:
        x.add_(grad, alpha=lr)
    if decay != 0:
        x.mul_(1 - decay)
    if blur_sigma > 0:
        x.copy_(blur(x, blur_sigma))
    for pct, value in ((norm_pct, lambda: x.pow(2).sum(1).sqrt()),
                       (contrib_pct, lambda: (x * grad).sum(1))):
        if pct > 0:  # zero the pixels whose value is below the percentile of their image
            v = value().reshape(n, h * w)
            thr = torch.quantile(v, pct / 100, dim=1, keepdim=True)
            x.masked_fill_((v < thr).reshape(n, 1, h, w), 0)
    if lo > float("-inf") or hi < float("inf"):
        x.clamp_(lo, hi)
    return x
