"""Attribution by moving the input: integrated gradients and occlusion sensitivity.

Both take ``(model, images, target)`` like :func:`~cnnvis_ext.vis.saliency`, with ``target``
an int, ``(N,)``, ``(N, T)`` or ``"all"`` (results gain a ``T`` dimension after ``N``), and
push all their model evaluations through in batches of ``batch_size`` rows.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeding import make_generator, resolve_seed
from ._common import check_int, check_model, check_number, eval_mode, prepare_inputs
from .attribution import grad_mode, logits_2d, target_grads

__all__ = ["IntegratedGradientsResult", "integrated_gradients", "occlusion", "IG_METHODS"]

#: Quadrature rules of :func:`integrated_gradients` (captum's names).
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
              "riemann_middle")


class IntegratedGradientsResult(NamedTuple):
    """``attributions``: ``(N, C, H, W)`` (or ``(N, T, C, H, W)``); ``error``: the
    completeness error ``sum(attributions) - (f(x) - f(baseline))`` of the target logit,
    ``(N,)`` (or ``(N, T)``), ``None`` with ``completeness=False``; it shrinks as ``steps``
    grows."""
    attributions: Tensor
    error: Optional[Tensor]


def _quadrature(method: str, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` on [0, 1] of the rule."""
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * w
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("steps: riemann_trapezoid needs at least 2 steps")
        # captum's weights: 1/n, halved at both ends (they sum to (n - 1) / n, not 1)
        w = np.full(steps, 1.0 / steps)
        w[0] = w[-1] = 0.5 / steps
        return np.linspace(0.0, 1.0, steps), w
    w = np.full(steps, 1.0 / steps)
    k = np.arange(steps)
    start = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + start) / steps, w


def _baseline(kind, x: Tensor, seed: Optional[int], blur_sigma: float) -> Tensor:
    if isinstance(kind, Tensor):
        try:
            return kind.to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError:
            raise ValueError(f"baseline: a tensor of shape {tuple(kind.shape)} does not "
                             f"broadcast to the images' {tuple(x.shape)}") from None
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "blur":
        from ..ops import gaussian_blur  # the fused op (reflect borders)
        return gaussian_blur(x.contiguous(), blur_sigma)
    if kind == "uniform":
        seed = resolve_seed(seed)
        lo = x.flatten(1).amin(1)
        hi = x.flatten(1).amax(1)
        out = torch.empty_like(x)
        for i in range(x.shape[0]):  # image i's noise does not depend on the batch
            g = make_generator(seed, i, 3, x.device)
            u = torch.rand(x.shape[1:], generator=g, device=x.device, dtype=torch.float32)
            out[i] = lo[i] + (hi[i] - lo[i]) * u.to(x.dtype)
        return out
    raise ValueError(f"baseline: expected 'black', 'blur', 'uniform' or a tensor, got {kind!r}")


def integrated_gradients(model: nn.Module, images: Tensor, target, *,
                         baseline: Union[str, Tensor] = "black", steps: int = 50,
                         method: str = "gausslegendre", batch_size: Optional[int] = None,
                         blur_sigma: float = 5.0, seed: Optional[int] = 0,
                         create_graph: bool = False,
                         completeness: bool = True) -> IntegratedGradientsResult:
    r"""Integrated gradients (Sundararajan et al. 2017).

    ``attr = (x - x') * sum_s w_s grad f(x' + a_s (x - x'))`` for the quadrature rule's
    nodes ``a_s`` and weights ``w_s`` (captum's IntegratedGradients, same rules and
    defaults). All ``N * steps`` interpolated images go through the model in batches of
    ``batch_size`` rows; an image's ``T`` targets share the forward pass (one batched
    backward pass).

    Args:
        model: any classifier ``nn.Module`` (run in eval mode; flags restored).
        images: ``(N, C, H, W)`` input batch, as the model expects it.
        target: int, ``(N,)``, ``(N, T)`` or ``"all"``.
        baseline: ``"black"`` (zeros), ``"blur"`` (the image blurred with ``blur_sigma``),
            ``"uniform"`` (noise uniform in each image's ``[min, max]``, seeded by
            ``seed``) or a tensor broadcastable to ``images``.
        steps: quadrature nodes (>= 1; >= 2 for ``riemann_trapezoid``).
        method: one of :data:`IG_METHODS`, with captum's nodes and weights (its
            ``riemann_trapezoid`` weights are ``1/n``, halved at the ends).
        batch_size: rows (interpolated images) per forward/backward pass (default: all).
        blur_sigma: the Gaussian's standard deviation in pixels for ``"blur"``.
        seed: seeds the ``"uniform"`` baseline (image ``i`` has its own generator).
        create_graph: keep the backward graph so the attributions can be differentiated.
        completeness: also compute the completeness error, ``sum(attr) - (f(x) - f(x'))``
            (one more forward pass of the images and baselines, as captum's
            ``return_convergence_delta=True``); ``False``: ``error`` is ``None``.

    Returns:
        :class:`IntegratedGradientsResult` ``(attributions, error)``.
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    steps = check_int("steps", steps, 1)
    if method not in IG_METHODS:
        raise ValueError(f"method: expected one of {', '.join(IG_METHODS)}, got {method!r}")
    blur_sigma = check_number("blur_sigma", blur_sigma, minimum=0.0)
    alphas, weights = _quadrature(method, steps)
    n = x.shape[0]
    rows = n * steps
    bs = rows if batch_size is None else check_int("batch_size", batch_size, 1)
    with torch.no_grad():
        base = _baseline(baseline, x, seed, blur_sigma)
    diff = x - base
    al = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    wt = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    tt = t if multi else t[:, None]
    total = None
    with grad_mode(model, create_graph):
        # row r = s * n + i: image i at node s (captum's order)
        for start in range(0, rows, bs):
            r = torch.arange(start, min(rows, start + bs), device=x.device)
            s_idx, i_idx = r // n, r % n
            shape = (-1,) + (1,) * (x.dim() - 1)
            xi = (base[i_idx] + al[s_idx].view(shape) * diff[i_idx]).detach().requires_grad_(True)
            (g,) = target_grads(model(xi), (xi,), tt[i_idx], create_graph)  # (rows, T, ...)
            g = g * wt[s_idx].view(-1, *([1] * (g.dim() - 1)))
            part = torch.zeros((n, *g.shape[1:]), dtype=g.dtype, device=g.device)
            part = part.index_add(0, i_idx, g)
            total = part if total is None else total + part
        attr = total * diff.unsqueeze(1)
    if not completeness:
        return IntegratedGradientsResult(attr if multi else attr[:, 0], None)
    with eval_mode(model), torch.no_grad():
        out = logits_2d(model(torch.cat([x, base])))
        f = out.gather(1, torch.cat([tt, tt]))
    err = attr.detach().flatten(2).sum(2) - (f[:n] - f[n:])
    return IntegratedGradientsResult(attr if multi else attr[:, 0], err if multi else err[:, 0])


def _pair(name: str, v) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair (h, w), got {v!r}")
        return check_int(name, v[0], 1), check_int(name, v[1], 1)
    v = check_int(name, v, 1)
    return v, v


def occlusion(model: nn.Module, images: Tensor, target, *,
              window: Union[int, Sequence[int]] = 8, stride: Union[int, Sequence[int], None] = None,
              value: Union[float, str, Tensor] = 0.0, batch_size: Optional[int] = None) -> Tensor:
    r"""Occlusion sensitivity (Zeiler & Fergus 2014): a patch of ``value`` slid over the image.

    The patch covers all channels; its positions start every ``stride`` pixels from the
    top-left corner, and the last one in each direction may overhang the border (it is
    clipped), so every pixel is covered (captum's Occlusion with
    ``sliding_window_shapes=(C, *window)``, ``strides=(C, *stride)``). Each pixel's
    attribution is the mean, over the positions covering it, of the target's drop
    ``f(x) - f(x occluded)``.

    Args:
        model: any classifier ``nn.Module`` (run in eval mode; flags restored).
        images: ``(N, C, H, W)`` input batch, as the model expects it.
        target: int, ``(N,)``, ``(N, T)`` or ``"all"`` (one forward pass per position
            gives every target's drop).
        window: patch size, an int or ``(h, w)``, at most the image.
        stride: step between positions (default: ``window``, no overlap).
        value: the patch: a number (default 0, captum's default baseline: on inputs
            normalized to zero mean, the grey of the dataset's mean), ``"mean"`` (each
            image's per-channel mean) or a tensor broadcastable to one image ``(C, H, W)``.
        batch_size: occluded images per forward pass (default 256).

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``), the same map in every channel (as
        captum's), on the model's device.
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    if x.dim() != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    wh, ww = _pair("window", window)
    sh, sw = (wh, ww) if stride is None else _pair("stride", stride)
    if wh > h or ww > w:
        raise ValueError(f"window: {(wh, ww)} is larger than the images' {(h, w)}")
    bs = 256 if batch_size is None else check_int("batch_size", batch_size, 1)
    if isinstance(value, str):
        if value != "mean":
            raise ValueError(f"value: expected a number, 'mean' or a tensor, got {value!r}")
        fill = x.mean((2, 3), keepdim=True).expand_as(x)
    elif isinstance(value, Tensor):
        try:
            fill = value.to(device=x.device, dtype=x.dtype).expand(n, c, h, w)
        except RuntimeError:
            raise ValueError(f"value: a tensor of shape {tuple(value.shape)} does not broadcast "
                             f"to one image {(c, h, w)}") from None
    else:
        fill = torch.full_like(x, check_number("value", value))
    ph = math.ceil((h - wh) / sh) + 1
    pw = math.ceil((w - ww) / sw) + 1
    tt = t if multi else t[:, None]
    # per-position row and column masks (clipped windows at the far borders)
    ys = torch.arange(ph, device=x.device) * sh
    xs = torch.arange(pw, device=x.device) * sw
    rmask = ((torch.arange(h, device=x.device)[None] >= ys[:, None])
             & (torch.arange(h, device=x.device)[None] < ys[:, None] + wh))       # (ph, h)
    cmask = ((torch.arange(w, device=x.device)[None] >= xs[:, None])
             & (torch.arange(w, device=x.device)[None] < xs[:, None] + ww))       # (pw, w)
    positions = ph * pw
    drops = torch.empty(n, positions, tt.shape[1], dtype=x.dtype, device=x.device)
    with eval_mode(model), torch.no_grad():
        out = logits_2d(model(x))
        if int(tt.max()) >= out.shape[1]:
            raise ValueError(f"target: class {int(tt.max())} is out of range for a model with "
                             f"{out.shape[1]} outputs")
        base = out.gather(1, tt)                                                  # (n, T)
        rows = n * positions
        for start in range(0, rows, bs):
            r = torch.arange(start, min(rows, start + bs), device=x.device)
            i_idx, p = r // positions, r % positions
            m = (rmask[p // pw][:, :, None] & cmask[p % pw][:, None, :]).unsqueeze(1)  # (b,1,h,w)
            xo = torch.where(m, fill[i_idx], x[i_idx])
            sc = logits_2d(model(xo)).gather(1, tt[i_idx])
            drops[i_idx, p] = base[i_idx] - sc
    # spread each position's drop over its window and average by the coverage count
    d = drops.permute(0, 2, 1).reshape(n * tt.shape[1], 1, ph, pw)
    ones = torch.ones(1, 1, wh, ww, dtype=x.dtype, device=x.device)
    acc = F.conv_transpose2d(d, ones, stride=(sh, sw))[..., :h, :w]
    cnt = F.conv_transpose2d(torch.ones(1, 1, ph, pw, dtype=x.dtype, device=x.device), ones,
                             stride=(sh, sw))[..., :h, :w]
    heat = (acc / cnt).reshape(n, tt.shape[1], 1, h, w).expand(n, tt.shape[1], c, h, w)
    heat = heat.contiguous()
    return heat if multi else heat[:, 0]
