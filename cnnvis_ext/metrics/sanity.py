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
``cnnvis_ext.vis.saliency`` or ``lambda m, x, t: vis.grad_cam(m, "layer4", x, t)``. It is called
on at most ``batch_size`` images at a time (the memory budget, as in
:mod:`cnnvis_ext.metrics.faithfulness`); results do not depend on it.

Checked against Quantus 0.6.0 in ``tests/metrics/test_quantus.py`` (MPRT, RandomLogit,
MaxSensitivity); the docstrings say where the defaults differ on purpose.
"""
from __future__ import annotations

import copy
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeding import make_generator, resolve_seed
from ..vis._common import check_int, check_model, check_number, one_class_per_image

__all__ = ["spearman", "ssim", "Randomization", "model_randomization", "randomization_order",
           "random_logit", "max_sensitivity"]

Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _flat(maps: Tensor, n: int) -> Tensor:
    return maps.detach().reshape(n, -1).double()


def _ranks(v: Tensor) -> Tensor:
    """Average ranks along the last dimension (ties share their mean rank), every row at once."""
    order = v.argsort(-1)
    s = v.gather(-1, order)
    m = v.shape[-1]
    pos = torch.arange(m, device=v.device).expand_as(v)
    # in sorted order, a run of equal values spans [first, last]; its members get the mean
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, pos, 0).cummax(-1).values
    last = torch.where(ends, pos, m).flip(-1).cummin(-1).values.flip(-1)
    ranks = torch.empty_like(v)
    ranks.scatter_(-1, order, (first + last).to(v.dtype) / 2)
    return ranks


def _centred_ranks(a: Tensor) -> Tensor:
    r = _ranks(_flat(a, a.shape[0]))
    return r - r.mean(1, keepdim=True)


def _pearson_centred(ra: Tensor, rb: Tensor) -> Tensor:
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-300)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps: ``(N, ...)`` and ``(N, ...)`` -> ``(N,)``."""
    return _pearson_centred(_centred_ranks(a), _centred_ranks(b))


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
    win = min(window, x.shape[-2], x.shape[-1])
    if win < window:  # maps smaller than the window: the largest centred one that fits
        off = (window - win) // 2
        g = g[off:off + win]
    g = (g / g.sum()).to(x)
    # the Gaussian window is separable: a row pass and a column pass (2 * win taps, not win^2),
    # over the five maps (x, y, x^2, y^2, xy) stacked into one batch
    n = x.shape[0]
    st = torch.cat([x, y, x * x, y * y, x * y])
    st = F.conv2d(F.conv2d(st, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    mx, my, fxx, fyy, fxy = st.split(n)
    sxx, syy, sxy = fxx - mx * mx, fyy - my * my, fxy - mx * my
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


def _given_maps(maps, n: int) -> Tensor:
    if not isinstance(maps, Tensor) or not maps.is_floating_point():
        raise TypeError("maps: expected a floating-point tensor of the images' maps")
    if maps.dim() < 2 or maps.shape[0] != n:
        raise ValueError(f"maps: expected one map per image ({n}), got shape {tuple(maps.shape)}")
    return maps.detach()


def _explain(explain: Explain, model: nn.Module, x: Tensor, t: Tensor, batch_size: int) -> Tensor:
    """``explain`` on ``batch_size`` images at a time, the maps concatenated."""
    out = [explain(model, x[i:i + batch_size], t[i:i + batch_size]).detach()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def _normal_like_own_std(module: nn.Module, generator: torch.Generator) -> None:
    """Every parameter of ``module`` itself re-drawn from N(0, its own std) (std 1 if 0 or a
    single value)."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.detach().float().std()) if p.numel() > 1 else 1.0
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
                    * (std or 1.0))


def randomization_order(model: nn.Module) -> List[str]:
    """Modules with parameters of their own, in reverse registration order (the top first)."""
    names = [n for n, m in model.named_modules()
             if n and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def model_randomization(model: nn.Module, images: Tensor, target, explain: Explain, *,
                        layers: Optional[List[str]] = None, seed: Optional[int] = 0,
                        absolute: bool = True,
                        randomize: Optional[Callable[[nn.Module, int], None]] = None,
                        maps: Optional[Tensor] = None, batch_size: int = 64) -> Randomization:
    """Cascading model-parameter randomization test (Adebayo et al. 2018).

    A copy of the model has the parameters of ``layers`` (default: every module with
    parameters, from the output down) re-drawn one layer at a time and cumulatively. By default
    each parameter is drawn from a normal distribution with mean 0 and its own standard
    deviation (weights, biases, BatchNorm scales and shifts alike), from a generator seeded by
    ``seed`` and the layer's place in ``layers``. The model passed in is not changed.

    Args:
        randomize: optional ``randomize(module, index)`` that re-draws, in place, the parameters
            of the ``index``-th module of ``layers`` instead. Quantus's ``MPRT`` calls
            ``torch.manual_seed(seed + 1); module.reset_parameters()`` (PyTorch's initializer,
            the same seed for every layer), over the modules that have ``reset_parameters``,
            output first; passing that as ``randomize`` (and those modules as ``layers``, the
            default for most networks) gives Quantus 0.6.0's Spearman correlations per layer.
            The default differs on purpose: a layer keeps its own scale, as Adebayo et al.
            re-draw from the trained weights' distribution, and no global seed is touched.
        absolute: compare absolute maps (as Quantus's default ``abs=True`` and the paper's
            figures).
        maps: optional maps of the images for their targets, as ``explain`` returns them
            (Quantus's ``a_batch``), so that they are not computed again.
        batch_size: images per ``explain`` call (the memory budget).

    Returns:
        :class:`Randomization`.
    """
    check_model(model)
    seed = resolve_seed(seed)
    batch_size = check_int("batch_size", batch_size, 1)
    if randomize is not None and not callable(randomize):
        raise TypeError(f"randomize: expected a callable (module, index), got {randomize!r}")
    t = one_class_per_image(target, images.shape[0], "target")
    original = (_explain(explain, model, images, t, batch_size) if maps is None
                else _given_maps(maps, images.shape[0]))
    n = original.shape[0]
    layers = randomization_order(model) if layers is None else list(layers)
    rnd = copy.deepcopy(model)
    sp, ss, rmaps = [], [], []
    ref = original.abs() if absolute else original
    ref_ranks = _centred_ranks(ref)          # the original's ranks, once for every layer
    for li, name in enumerate(layers):
        mod = rnd.get_submodule(name)
        if randomize is None:
            _normal_like_own_std(mod, make_generator(seed, li, 6, "cpu"))
        else:
            with torch.no_grad():
                randomize(mod, li)
        m = _explain(explain, rnd, images, t, batch_size)
        rmaps.append(m)
        cmp = m.abs() if absolute else m
        sp.append(_pearson_centred(ref_ranks, _centred_ranks(cmp)))
        ss.append(ssim(ref.reshape(n, *ref.shape[-2:]) if ref.dim() == 3 else ref,
                       cmp.reshape(n, *cmp.shape[-2:]) if cmp.dim() == 3 else cmp))
    return Randomization(layers, torch.stack(sp) if sp else torch.zeros(0, n),
                         torch.stack(ss) if ss else torch.zeros(0, n),
                         torch.stack(rmaps) if rmaps else original.new_zeros((0,) + original.shape))


def random_logit(model: nn.Module, images: Tensor, target, explain: Explain, num_classes: int, *,
                 seed: Optional[int] = 0, other: Optional[Tensor] = None,
                 similarity: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 maps: Optional[Tensor] = None, batch_size: int = 64) -> Tensor:
    """Similarity between the map of the target and the map of a random other class, per
    image. Low: the map depends on the class explained.

    Args:
        other: optional ``(N,)`` other classes to use; by default one is drawn uniformly among
            the ``num_classes - 1`` others of each image, from the image's own generator.
        similarity: optional ``similarity(target_maps, other_maps) -> (N,)`` on the maps as
            ``explain`` returns them (e.g. :func:`spearman`). Default: :func:`ssim` of the
            absolute maps summed over channels, as 2-D images.
        maps: optional maps of the images for their targets, as ``explain`` returns them
            (Quantus's ``a_batch``), so that they are not computed again.
        batch_size: images per ``explain`` call (the memory budget).

    Against Quantus 0.6.0's ``RandomLogit``: it draws the other class with
    ``np.random.seed(seed); np.random.randint(0, num_classes - 1, N)`` over the classes but the
    target (pass those as ``other``), and its default similarity is skimage's SSIM of the
    maps flattened to 1-D (uniform window of 7 values, the two maps' joint range); that SSIM
    mixes rows of the image and depends on the maps' common scale, so the default here is the
    2-D SSIM with a Gaussian window of Adebayo et al. With the same ``other`` and the same
    similarity (``similarity=spearman`` and Quantus's ``correlation_spearman``) the results
    are Quantus's.
    """
    check_model(model)
    num_classes = check_int("num_classes", num_classes, 2)
    batch_size = check_int("batch_size", batch_size, 1)
    if similarity is not None and not callable(similarity):
        raise TypeError(f"similarity: expected a callable (maps, maps) -> (N,), got {similarity!r}")
    seed = resolve_seed(seed)
    t = one_class_per_image(target, images.shape[0], "target")
    if other is None:
        draws = []
        for i, ti in enumerate(t.tolist()):  # one draw per image: independent of the batch
            g = make_generator(seed, i, 7, "cpu")
            r = int(torch.randint(num_classes - 1, (1,), generator=g))
            draws.append(r if r < ti else r + 1)
        other = torch.tensor(draws)
    else:
        other = one_class_per_image(other, images.shape[0], "other")
        if bool(((other < 0) | (other >= num_classes)).any()) or bool((other == t).any()):
            raise ValueError("other: expected classes in [0, num_classes) that differ from "
                             "the target")
    a = (_explain(explain, model, images, t, batch_size) if maps is None
         else _given_maps(maps, images.shape[0]))
    b = _explain(explain, model, images, other, batch_size)
    if similarity is not None:
        return similarity(a, b)
    if a.dim() == 4:
        a, b = a.abs().sum(1), b.abs().sum(1)
    return ssim(a, b)


def max_sensitivity(model: nn.Module, images: Tensor, target, explain: Explain, *,
                    radius: float = 0.02, samples: int = 10, seed: Optional[int] = 0,
                    perturbations: Optional[Tensor] = None, maps: Optional[Tensor] = None,
                    batch_size: int = 64) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019), per image: ``max_j ||Φ(x + δ_j) - Φ(x)|| / ||Φ(x)||``
    (Frobenius norms) over ``samples`` perturbations ``δ_j`` uniform in ``[-radius, radius]``
    (drawn from each image's own generator), explained ``batch_size`` perturbed images at a time.

    Args:
        perturbations: optional ``(samples, N, C, H, W)`` noise ``δ`` to use instead of drawing
            it (``radius`` and ``samples`` are then unused).
        maps: optional maps of the images for their targets, as ``explain`` returns them
            (Quantus's ``a_batch``), so that they are not computed again.
        batch_size: perturbed images per ``explain`` call (the memory budget; the noise itself
            is held whole, one input's size per sample and image).

    This is Quantus 0.6.0's ``MaxSensitivity`` (``lower_bound=radius``, its defaults
    otherwise: uniform noise on every value, difference, Frobenius norms, no normalisation) when
    given the same noise; Quantus draws it from the global ``np.random``, step by step.
    """
    check_model(model)
    batch_size = check_int("batch_size", batch_size, 1)
    n = images.shape[0]
    t = one_class_per_image(target, n, "target")
    if perturbations is None:
        radius = check_number("radius", radius, positive=True)
        samples = check_int("samples", samples, 1)
        seed = resolve_seed(seed)
        noise = torch.stack([(torch.rand((samples,) + tuple(images.shape[1:]),
                                         generator=make_generator(seed, i, 8, "cpu")) * 2 - 1)
                             for i in range(n)], 1).to(images) * radius      # (samples, N, ...)
    else:
        if not isinstance(perturbations, Tensor) or not perturbations.is_floating_point():
            raise TypeError("perturbations: expected a floating-point tensor")
        if perturbations.dim() != images.dim() + 1 or perturbations.shape[1:] != images.shape                 or perturbations.shape[0] < 1:
            raise ValueError(f"perturbations: expected shape (samples, {', '.join(map(str, images.shape))}), "
                             f"got {tuple(perturbations.shape)}")
        noise = perturbations.to(images)
        samples = noise.shape[0]
    base = (_explain(explain, model, images, t, batch_size) if maps is None
            else _given_maps(maps, n))
    rows = samples * n
    x = noise.reshape(rows, *images.shape[1:])
    diffs = []
    for lo in range(0, rows, batch_size):  # row r: sample r // N of image r % N
        r = torch.arange(lo, min(rows, lo + batch_size))
        i = r % n
        m = explain(model, images[i] + x[r], t[i]).detach()
        diffs.append((m - base[i]).reshape(len(r), -1).norm(dim=1))
    diff = torch.cat(diffs).view(samples, n)
    return (diff / base.reshape(n, -1).norm(dim=1).clamp_min(1e-300)).amax(0)
