"""Sanity checks and robustness of attribution maps.

* :func:`model_randomization` (Adebayo et al. 2018): the layers' parameters are re-drawn at
  random one layer at a time, from the top down (cascading), and each map is compared with the
  original by its Spearman rank correlation and SSIM. A method whose maps barely change when
  the network they explain is destroyed is not explaining that network: guided backprop and
  the deconvnet fail this, saliency and Grad-CAM pass.
* :func:`random_logit`: the map of a random other class against the map of the target.
* :func:`max_sensitivity` (Yeh et al. 2019): the largest relative change of a map under
  small uniform perturbations of the input.

``explain`` is any callable ``explain(model, images, target) -> maps``, such as
``cnnvis_ext.vis.saliency`` or ``lambda m, x, t: vis.grad_cam(m, "layer4", x, t)``.
"""
from __future__ import annotations

import copy
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeding import make_generator, resolve_seed
from ..vis._common import check_int, check_model, check_number

__all__ = ["spearman", "ssim", "Randomization", "model_randomization", "randomization_order",
           "random_logit", "max_sensitivity"]

Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _flat(maps: Tensor, n: int) -> Tensor:
    return maps.detach().reshape(n, -1).double()


def _ranks(v: Tensor) -> Tensor:
    """Average ranks along the last dimension (ties share their mean rank)."""
    order = v.argsort(-1)
    sorted_v = v.gather(-1, order)
    ranks = torch.empty_like(v)
    idx = torch.arange(v.shape[-1], dtype=v.dtype, device=v.device).expand_as(v)
    ranks.scatter_(-1, order, idx)
    # ties: every member of a run of equal values gets the run's mean rank
    for row in range(v.shape[0]):
        s = sorted_v[row]
        uniq, inv, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
        if len(uniq) == len(s):
            continue
        starts = torch.cumsum(counts, 0) - counts
        mean_rank = (starts + (counts - 1) / 2.0).to(v.dtype)
        ranks[row].scatter_(0, order[row], mean_rank[inv])
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps: ``(N, ...)`` and ``(N, ...)`` -> ``(N,)``."""
    n = a.shape[0]
    ra, rb = _ranks(_flat(a, n)), _ranks(_flat(b, n))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-300)


def _unit(m: Tensor) -> Tensor:
    lo = m.amin((-2, -1), keepdim=True)
    hi = m.amax((-2, -1), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) of each pair of 2-D maps ``(N, H, W)`` (3-D maps
    are summed over channels first), each scaled to [0, 1] by its own range; Gaussian window,
    constants of the paper (K1 = 0.01, K2 = 0.03, data range 1)."""
    if a.dim() == 4:
        a, b = a.sum(1), b.sum(1)
    x, y = _unit(a.detach().double())[:, None], _unit(b.detach().double())[:, None]
    r = torch.arange(window, dtype=torch.float64, device=x.device) - (window - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = (g / g.sum()).to(x)
    k = (g[:, None] * g[None, :])[None, None]
    win = min(window, x.shape[-2], x.shape[-1])
    if win < window:  # maps smaller than the window: the largest centred one that fits
        off = (window - win) // 2
        k = k[..., off:off + win, off:off + win]
        k = k / k.sum()

    def filt(t):
        return F.conv2d(t, k)

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


class Randomization(NamedTuple):
    """``layers``: the layers randomized, top first (entry ``i`` has layers ``0..i`` re-drawn);
    ``spearman`` / ``ssim``: ``(L, N)`` similarity of each cascade step's map to the original
    (of absolute values, as Adebayo et al. show); ``maps``: ``(L, N, ...)`` the randomized maps."""

    layers: List[str]
    spearman: Tensor
    ssim: Tensor
    maps: Tensor


def randomization_order(model: nn.Module) -> List[str]:
    """Modules with parameters of their own, in reverse registration order (the top first)."""
    names = [n for n, m in model.named_modules()
             if n and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def model_randomization(model: nn.Module, images: Tensor, target, explain: Explain, *,
                        layers: Optional[List[str]] = None, seed: Optional[int] = 0,
                        absolute: bool = True) -> Randomization:
    """Cascading model-parameter randomization test (Adebayo et al. 2018).

    A copy of the model has the parameters of ``layers`` (default: every module with
    parameters, from the output down) re-drawn one layer at a time and cumulatively: weights
    from a normal distribution with the layer's own standard deviation (mean 0), biases from
    the same for biases, BatchNorm scales and shifts alike. The model passed in is not changed.

    Returns:
        :class:`Randomization`.
    """
    check_model(model)
    seed = resolve_seed(seed)
    original = explain(model, images, target).detach()
    n = original.shape[0]
    layers = randomization_order(model) if layers is None else list(layers)
    rnd = copy.deepcopy(model)
    sp, ss, maps = [], [], []
    ref = original.abs() if absolute else original
    for li, name in enumerate(layers):
        mod = rnd.get_submodule(name)
        g = make_generator(seed, li, 6, "cpu")
        with torch.no_grad():
            for p in mod.parameters(recurse=False):
                std = float(p.detach().float().std()) if p.numel() > 1 else 1.0
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) * (std or 1.0))
        m = explain(rnd, images, target).detach()
        maps.append(m)
        cmp = m.abs() if absolute else m
        sp.append(spearman(ref, cmp))
        ss.append(ssim(ref.reshape(n, *ref.shape[-2:]) if ref.dim() == 3 else ref,
                       cmp.reshape(n, *cmp.shape[-2:]) if cmp.dim() == 3 else cmp))
    return Randomization(layers, torch.stack(sp) if sp else torch.zeros(0, n),
                         torch.stack(ss) if ss else torch.zeros(0, n),
                         torch.stack(maps) if maps else original.new_zeros((0,) + original.shape))


def random_logit(model: nn.Module, images: Tensor, target, explain: Explain, num_classes: int, *,
                 seed: Optional[int] = 0) -> Tensor:
    """SSIM between the map of the target and the map of a random other class, per image
    (drawn from each image's own generator). Low: the map depends on the class explained."""
    check_model(model)
    num_classes = check_int("num_classes", num_classes, 2)
    seed = resolve_seed(seed)
    t = torch.as_tensor(target).reshape(-1).long()
    if t.numel() == 1:
        t = t.expand(images.shape[0])
    other = []
    for i, ti in enumerate(t.tolist()):
        g = make_generator(seed, i, 7, "cpu")
        r = int(torch.randint(num_classes - 1, (1,), generator=g))
        other.append(r if r < ti else r + 1)
    a = explain(model, images, t).detach()
    b = explain(model, images, torch.tensor(other)).detach()
    if a.dim() == 4:
        a, b = a.abs().sum(1), b.abs().sum(1)
    return ssim(a, b)


def max_sensitivity(model: nn.Module, images: Tensor, target, explain: Explain, *,
                    radius: float = 0.02, samples: int = 10, seed: Optional[int] = 0) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019), per image: ``max_j ||Φ(x + δ_j) - Φ(x)|| / ||Φ(x)||``
    over ``samples`` perturbations ``δ_j`` uniform in ``[-radius, radius]`` (drawn from each
    image's own generator), all explained in one batched call."""
    check_model(model)
    radius = check_number("radius", radius, positive=True)
    samples = check_int("samples", samples, 1)
    seed = resolve_seed(seed)
    n = images.shape[0]
    t = torch.as_tensor(target).reshape(-1).long()
    if t.numel() == 1:
        t = t.expand(n)
    base = explain(model, images, t).detach()
    noise = torch.stack([(torch.rand((samples,) + tuple(images.shape[1:]),
                                     generator=make_generator(seed, i, 8, "cpu")) * 2 - 1)
                         for i in range(n)], 1).to(images) * radius          # (samples, N, ...)
    x = (images[None] + noise).reshape(-1, *images.shape[1:])
    perturbed = explain(model, x, t.repeat(samples)).detach().reshape(samples, *base.shape)
    diff = (perturbed - base[None]).reshape(samples, n, -1).norm(dim=2)
    return (diff / base.reshape(n, -1).norm(dim=1).clamp_min(1e-300)).amax(0)
