"""Faithfulness of attribution maps: does the model's score follow what the map says matters?

* :func:`deletion_insertion` (Petsiuk et al. 2018): pixels removed from (inserted into) the
  image in the order of the map, the target's probability along the way, and the area under
  each curve;
* :func:`region_perturbation` (Samek et al. 2017): most-relevant-first square regions replaced
  by a baseline, and the AOPC (average drop of the target's score over the steps);
* :func:`faithfulness_correlation` (Bhatt et al. 2020): the correlation between the summed
  attribution of random pixel subsets and the drop of the score when they are removed.

Every perturbation sequence runs as batched forward passes: the perturbed images of many steps
and many inputs go through the model together, ``batch_size`` at a time.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeding import make_generator, resolve_seed
from ..vis._common import check_int, check_model, eval_mode, prepare_inputs

__all__ = ["Curves", "deletion_insertion", "region_perturbation", "faithfulness_correlation",
           "auc"]


class Curves(NamedTuple):
    """``fractions``: ``(S + 1,)`` fraction of pixels changed at each step; ``deletion`` and
    ``insertion``: ``(N, S + 1)`` target probabilities; ``deletion_auc`` / ``insertion_auc``:
    ``(N,)`` areas under them (lower deletion and higher insertion: a more faithful map)."""

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor
    deletion_auc: Tensor
    insertion_auc: Tensor


def auc(y: Tensor, x: Optional[Tensor] = None) -> Tensor:
    """Trapezoidal area under ``y`` (last dimension) over ``x`` (default: evenly on [0, 1])."""
    if x is None:
        x = torch.linspace(0, 1, y.shape[-1], device=y.device, dtype=y.dtype)
    return torch.trapezoid(y, x, dim=-1)


def _pixel_scores(attributions: Tensor, images: Tensor) -> Tensor:
    """Per-pixel importance ``(N, H*W)``: the attribution summed over channels."""
    a = attributions.detach()
    if a.dim() == images.dim():
        a = a.sum(1)
    if a.shape != (images.shape[0],) + tuple(images.shape[2:]):
        raise ValueError(f"attributions: expected shape {tuple(images.shape)} or "
                         f"{(images.shape[0],) + tuple(images.shape[2:])}, got {tuple(a.shape)}")
    return a.reshape(a.shape[0], -1).to(images.device)


def _baseline(baseline, images: Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        return baseline.to(images).expand_as(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        k = max(3, (min(images.shape[-2:]) // 8) * 2 + 1)
        return F.avg_pool2d(F.pad(images, [k // 2] * 4, mode="replicate"), k, stride=1)
    raise ValueError(f"baseline: expected 'zero', 'mean', 'blur' or a tensor, got {baseline!r}")


def _inputs(model, images, target, batch_size):
    """The checked ``(images, targets, batch_size)`` of a metric: one target per image."""
    check_model(model)
    batch_size = check_int("batch_size", batch_size, 1)
    x, t, multi = prepare_inputs(model, images, target)
    if multi:
        raise ValueError("target: one class per image here, got (N, T) targets")
    return x, t, batch_size


def _scores(model, x: Tensor, target: Tensor, batch_size: int, probability: bool) -> Tensor:
    """The target's probability (or logit) for every image of ``x``, in batches."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i:i + batch_size])
        logits = logits.reshape(logits.shape[0], -1)
        s = F.softmax(logits, 1) if probability else logits
        out.append(s.gather(1, target[i:i + batch_size, None])[:, 0])
    return torch.cat(out) if out else x.new_zeros(0)


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: Tensor, attributions: Tensor, target, *,
                       steps: int = 20, baseline: Union[str, Tensor] = "blur",
                       batch_size: int = 64) -> Curves:
    """Deletion and insertion curves of attribution maps (Petsiuk et al. 2018).

    Pixels are ranked by the map (summed over channels), most important first; at step ``s``
    the first ``s / steps`` of them are replaced by the baseline (deletion) or copied from the
    image into the baseline (insertion), and the model gives the target's softmax probability.

    Args:
        model: the classifier (eval mode during the call).
        images: ``(N, C, H, W)``.
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps, e.g. from :mod:`cnnvis_ext.vis`.
        target: class per image (int or ``(N,)``).
        steps: points of each curve after the first.
        baseline: ``"blur"`` (the image blurred, as RISE's insertion), ``"zero"``, ``"mean"``
            (each channel's mean) or a tensor broadcastable to the images.
        batch_size: perturbed images per forward pass (the memory budget).

    Returns:
        :class:`Curves`.
    """
    steps = check_int("steps", steps, 1)
    x, t, batch_size = _inputs(model, images, target, batch_size)
    n, c, h, w = x.shape
    order = _pixel_scores(attributions, x).argsort(1, descending=True)       # (N, HW)
    base = _baseline(baseline, x)
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long().tolist()
    # rank of each pixel, so that "the first k" is one comparison per step
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    curves = {}
    with eval_mode(model):
        for kind in ("deletion", "insertion"):
            start, end = (x, base) if kind == "deletion" else (base, x)
            seq = []
            for k in counts:  # (S + 1) masks per image, built on the fly in the batch loop
                changed = (rank < k).view(n, 1, h, w)
                seq.append(torch.where(changed, end, start))
            stacked = torch.stack(seq, 1).reshape(-1, c, h, w)                  # (N*(S+1), ...)
            tt = t.repeat_interleave(steps + 1)
            curves[kind] = _scores(model, stacked, tt, batch_size, True).view(n, steps + 1)
    fr = torch.tensor(counts, dtype=x.dtype, device=x.device) / (h * w)
    return Curves(fr, curves["deletion"], curves["insertion"], auc(curves["deletion"], fr),
                  auc(curves["insertion"], fr))


class RegionPerturbation(NamedTuple):
    """``curve``: ``(N, L + 1)`` target score after 0..L regions replaced (most relevant first);
    ``aopc``: ``(N,)`` average drop ``mean_k (curve[0] - curve[k])`` over the L + 1 steps."""

    curve: Tensor
    aopc: Tensor


@torch.no_grad()
def region_perturbation(model: nn.Module, images: Tensor, attributions: Tensor, target, *,
                        patch_size: int = 8, regions: int = 20, baseline: Union[str, Tensor] = "uniform",
                        score: str = "logit", seed: Optional[int] = 0,
                        batch_size: int = 64) -> RegionPerturbation:
    """Region perturbation / pixel flipping with AOPC (Samek et al. 2017), most relevant first.

    The image is cut into non-overlapping ``patch_size`` squares, ranked by their summed
    attribution; step ``k`` replaces the ``k`` most relevant by the baseline (``"uniform"``:
    noise drawn uniformly in each image's value range, per image from its own generator, as
    the paper; ``"black"``: each image's minimum, as Quantus's; or ``"zero"``, ``"mean"``,
    ``"blur"``, a tensor). ``score``: the target's ``"logit"`` (the paper's f(x)) or softmax
    ``"probability"`` (Quantus's default). ``patch_size=1`` is pixel flipping. With
    ``baseline="black"`` and ``score="probability"``, ``curve[:, :1] - curve[:, 1:]`` is what
    Quantus's ``RegionPerturbation`` returns.
    """
    if score not in ("logit", "probability"):
        raise ValueError(f"score: expected 'logit' or 'probability', got {score!r}")
    patch_size = check_int("patch_size", patch_size, 1)
    regions = check_int("regions", regions, 1)
    x, t, batch_size = _inputs(model, images, target, batch_size)
    n, c, h, w = x.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size: {patch_size} does not divide the image size {h}x{w}")
    pixel = _pixel_scores(attributions, x).view(n, 1, h, w)
    per_patch = F.avg_pool2d(pixel, patch_size).flatten(1)                     # (N, P)
    regions = min(regions, per_patch.shape[1])
    order = per_patch.argsort(1, descending=True)[:, :regions]
    if isinstance(baseline, str) and baseline == "black":
        base = x.flatten(1).amin(1).view(n, 1, 1, 1).expand_as(x)
    elif isinstance(baseline, str) and baseline == "uniform":
        seed = resolve_seed(seed)
        lo = x.flatten(1).amin(1).view(n, 1, 1, 1)
        hi = x.flatten(1).amax(1).view(n, 1, 1, 1)
        noise = torch.stack([torch.rand((c, h, w), generator=make_generator(seed, i, 4, "cpu"))
                             for i in range(n)]).to(x)
        base = lo + (hi - lo) * noise
    else:
        base = _baseline(baseline, x)
    pw = w // patch_size
    seq = [x]
    cur = x.clone()
    for k in range(regions):
        p = order[:, k]
        r0, c0 = (p // pw) * patch_size, (p % pw) * patch_size
        for i in range(n):  # one patch per image per step: slicing, no per-pixel loop
            sl = (i, slice(None), slice(int(r0[i]), int(r0[i]) + patch_size),
                  slice(int(c0[i]), int(c0[i]) + patch_size))
            cur[sl] = base[sl]
        seq.append(cur.clone())
    stacked = torch.stack(seq, 1).reshape(-1, c, h, w)
    with eval_mode(model):
        curve = _scores(model, stacked, t.repeat_interleave(regions + 1), batch_size,
                        score == "probability").view(n, regions + 1)
    aopc = (curve[:, :1] - curve).mean(1)
    return RegionPerturbation(curve, aopc)


@torch.no_grad()
def faithfulness_correlation(model: nn.Module, images: Tensor, attributions: Tensor, target, *,
                             subset_size: int = 224, runs: int = 100,
                             baseline: Union[str, Tensor] = "zero", seed: Optional[int] = 0,
                             batch_size: int = 128) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020), per image: the Pearson correlation, over
    ``runs`` random subsets of ``subset_size`` pixels, between the subset's summed attribution
    and the drop of the target's logit when the subset is set to the baseline.

    The subsets of image ``i`` are drawn from its own generator (seeded by ``seed`` and ``i``),
    so a result does not depend on the batch.

    Returns:
        ``(N,)`` correlations in [-1, 1].
    """
    subset_size = check_int("subset_size", subset_size, 1)
    runs = check_int("runs", runs, 2)
    x, t, batch_size = _inputs(model, images, target, batch_size)
    n, c, h, w = x.shape
    if subset_size > h * w:
        raise ValueError(f"subset_size: {subset_size} is more than the {h * w} pixels of an image")
    score = _pixel_scores(attributions, x)
    base = _baseline(baseline, x)
    seed = resolve_seed(seed)
    masks = torch.zeros(n, runs, h * w, dtype=torch.bool)
    for i in range(n):
        g = make_generator(seed, i, 5, "cpu")
        idx = torch.rand(runs, h * w, generator=g).argsort(1)[:, :subset_size]
        masks[i].scatter_(1, idx, True)
    masks = masks.to(x.device)
    attr_sums = (score[:, None, :] * masks).sum(2)                          # (N, runs)
    m4 = masks.view(n, runs, 1, h, w)
    perturbed = torch.where(m4, base[:, None], x[:, None]).reshape(-1, c, h, w)
    with eval_mode(model):
        full = _scores(model, x, t, batch_size, False)
        scores = _scores(model, perturbed, t.repeat_interleave(runs), batch_size, False)
    drops = full[:, None] - scores.view(n, runs)
    a = attr_sums - attr_sums.mean(1, keepdim=True)
    d = drops - drops.mean(1, keepdim=True)
    den = (a.norm(dim=1) * d.norm(dim=1)).clamp_min(torch.finfo(x.dtype).tiny)
    return (a * d).sum(1) / den
