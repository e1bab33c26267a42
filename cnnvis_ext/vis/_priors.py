"""Image priors used by the loops, routed to the fused ``cnnvis_ext.ops`` kernels.

Every function here calls the extension op when it is registered
(``cnnvis_ext.ops.regularize_`` and friends) and falls back to the
plain-PyTorch composition below otherwise. The plain versions are also the
reference the tests compare the ops against.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops as _ops


def have_ops() -> bool:
    """True when all the fused regularizer ops are available."""
    return all(hasattr(_ops, n) for n in ("regularize_", "total_variation", "gaussian_blur"))


# ---------------------------------------------------------------------------
# plain PyTorch versions
# ---------------------------------------------------------------------------

def plain_total_variation(x: Tensor, beta: float = 2.0, eps: float = 1e-8,
                          reduction: str = "sum", mode: str = "isotropic") -> Tensor:
    """TV of a batch, as ``cnnvis_ext.ops.total_variation`` defines it.

    Forward differences, zero past the last row/column. Isotropic: the sum over
    channels and pixels of ``(dx^2 + dy^2 + eps)^(beta/2)``; anisotropic:
    ``|dx| + |dy|``. ``reduction``: ``"none"`` (one value per image), ``"sum"``
    (over the batch) or ``"mean"`` (the sum over ``x.numel()``).
    """
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    if mode == "isotropic":
        v = (dx * dx + dy * dy + eps).pow(beta / 2)
    elif mode == "anisotropic":
        v = dx.abs() + dy.abs()
    else:
        raise ValueError(f"mode: expected 'isotropic' or 'anisotropic', got {mode!r}")
    per_image = v.reshape(x.shape[0], -1).sum(1)
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.sum() / max(x.numel(), 1)
    raise ValueError(f"reduction: expected 'sum', 'mean' or 'none', got {reduction!r}")


def _gauss_kernel(sigma: float, kernel_size: Optional[int], device, dtype) -> Tensor:
    if kernel_size is None:
        kernel_size = 2 * int(math.ceil(3.0 * sigma)) + 1
    r = (kernel_size - 1) / 2
    t = torch.arange(kernel_size, device=device, dtype=torch.float64) - r
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def plain_gaussian_blur(x: Tensor, sigma: float, kernel_size: Optional[int] = None) -> Tensor:
    """Separable depthwise Gaussian blur with reflect borders."""
    if sigma <= 0:
        return x
    n, c, h, w = x.shape
    k = _gauss_kernel(sigma, kernel_size, x.device, x.dtype)
    ks = k.numel()
    p = ks // 2
    y = x.reshape(n * c, 1, h, w)
    py, px = min(p, h - 1), min(p, w - 1)
    y = F.pad(y, (px, px, py, py), mode="reflect") if (px or py) else y
    kx = k[p - px: p + px + 1] if px < p else k
    ky = k[p - py: p + py + 1] if py < p else k
    kx, ky = kx / kx.sum(), ky / ky.sum()
    y = F.conv2d(y, kx.reshape(1, 1, 1, -1))
    y = F.conv2d(y, ky.reshape(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _zero_below_pct(x: Tensor, score: Tensor, pct: float) -> None:
    # score: (N, H, W); zero the pixels whose score is below the pct-th percentile of their image.
    n = score.shape[0]
    flat = score.reshape(n, -1).float()
    thr = torch.quantile(flat, pct / 100.0, dim=1, keepdim=True)
    keep = (flat >= thr).reshape(n, 1, *score.shape[1:]).to(x.dtype)
    x.mul_(keep)


@torch.no_grad()
def plain_regularize_(x: Tensor, grad: Tensor, lr: float = 1.0, decay: float = 0.0,
                      blur_sigma: float = 0.0, norm_pct: float = 0.0, contrib_pct: float = 0.0,
                      lo: float = -math.inf, hi: float = math.inf) -> Tensor:
    """In-place prior step of Yosinski et al. (2015); see ``cnnvis_ext.ops.regularize_``."""
    if lr != 0:
        x.add_(grad, alpha=lr)
    if decay:
        x.mul_(1.0 - decay)
    if blur_sigma > 0:
        x.copy_(plain_gaussian_blur(x, blur_sigma))
    if norm_pct > 0:
        _zero_below_pct(x, x.norm(dim=1), norm_pct)
    if contrib_pct > 0:
        _zero_below_pct(x, (x * grad).sum(1), contrib_pct)
    if lo != -math.inf or hi != math.inf:
        x.clamp_(lo, hi)
    return x


# ---------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------

def total_variation(x: Tensor, beta: float = 2.0, eps: float = 1e-8) -> Tensor:
    """Differentiable isotropic TV_beta of each image, shape ``(N,)``."""
    if hasattr(_ops, "total_variation"):
        return _ops.total_variation(x, beta=beta, eps=eps, reduction="none")
    return plain_total_variation(x, beta=beta, eps=eps, reduction="none")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Differentiable Gaussian blur with reflect borders."""
    if sigma <= 0:
        return x
    if hasattr(_ops, "gaussian_blur"):
        return _ops.gaussian_blur(x, sigma)
    return plain_gaussian_blur(x, sigma)


def regularize_(x: Tensor, grad: Tensor, **kw) -> Tensor:
    """The in-place prior step (``cnnvis_ext.ops.regularize_`` when built)."""
    if hasattr(_ops, "regularize_"):
        return _ops.regularize_(x, grad, **kw)
    return plain_regularize_(x, grad, **kw)
