"""Faithfulness of attribution maps: does the model's score follow what the map says matters?

* :func:`deletion_insertion` (Petsiuk et al. 2018): pixels removed from (inserted into) the
  image in the order of the map, the target's probability along the way, and the area under
  each curve;
* :func:`region_perturbation` (Samek et al. 2017): most-relevant-first square regions replaced
  by a baseline, and the AOPC (average drop of the target's score over the steps);
* :func:`faithfulness_correlation` (Bhatt et al. 2020): the correlation between the summed
  attribution of random pixel subsets and the drop of the score when they are removed.

Every perturbation sequence runs as batched forward passes: the perturbed images of many steps
and many inputs go through the model together. ``batch_size`` is the memory budget of every
metric of :mod:`cnnvis_ext.metrics`: the number of perturbed images that exist at once and go
through the model (or the explanation method) in one call. The perturbed images are made batch
by batch from the images, the baseline and small per-image masks, so the peak memory is that of
one forward of ``batch_size`` images, whatever the number of steps; results do not depend on it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

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
    ``(N,)`` areas under them (lower deletion and higher insertion: a more faithful map). A
    curve not asked for (``curves=``) is ``None``, and so is its area."""

    fractions: Tensor
    deletion: Optional[Tensor]
    insertion: Optional[Tensor]
    deletion_auc: Optional[Tensor]
    insertion_auc: Optional[Tensor]


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
    if baseline == "black":  # each image's minimum over all its values, as Quantus's "black"
        return images.flatten(1).amin(1).view(-1, *[1] * (images.dim() - 1)).expand_as(images)
    if baseline == "blur":
        k = max(3, (min(images.shape[-2:]) // 8) * 2 + 1)
        return F.avg_pool2d(F.pad(images, [k // 2] * 4, mode="replicate"), k, stride=1)
    raise ValueError("baseline: expected 'zero', 'mean', 'black', 'blur' or a tensor, "
                     f"got {baseline!r}")


def _inputs(model, images, target, batch_size):
    """The checked ``(images, targets, batch_size)`` of a metric: one target per image."""
    check_model(model)
    batch_size = check_int("batch_size", batch_size, 1)
    x, t, multi = prepare_inputs(model, images, target)
    if multi:
        raise ValueError("target: one class per image here, got (N, T) targets")
    return x, t, batch_size


def _row_scores(model, rows: int, make: Callable[[Tensor], Tensor], target: Tensor,
                batch_size: int, probability: bool, like: Tensor) -> Tensor:
    """The target's probability (or logit) for ``rows`` perturbed images that ``make(r)`` builds
    for the row indices ``r`` (a 1-D tensor), ``batch_size`` rows per forward: only one batch of
    perturbed images exists at a time (the memory budget)."""
    out = []
    for lo in range(0, rows, batch_size):
        r = torch.arange(lo, min(rows, lo + batch_size), device=like.device)
        logits = model(make(r))
        logits = logits.reshape(logits.shape[0], -1)
        s = F.softmax(logits, 1) if probability else logits
        out.append(s.gather(1, target[r, None])[:, 0])
    return torch.cat(out) if out else like.new_zeros(0)


def _scores(model, x: Tensor, target: Tensor, batch_size: int, probability: bool) -> Tensor:
    """The target's probability (or logit) for every image of ``x``, in batches."""
    return _row_scores(model, x.shape[0], lambda r: x[r], target, batch_size, probability, x)


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: Tensor, attributions: Tensor, target, *,
                       steps: int = 20, baseline: Union[str, Tensor] = "blur",
                       batch_size: int = 64, curves: str = "both") -> Curves:
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
            (each channel's mean), ``"black"`` (each image's minimum) or a tensor broadcastable
            to the images.
        batch_size: perturbed images per forward pass (the memory budget; see the module).
        curves: ``"both"``, ``"deletion"`` or ``"insertion"`` (half the forward passes).

    Returns:
        :class:`Curves`.
    """
    steps = check_int("steps", steps, 1)
    kinds = {"both": ("deletion", "insertion"), "deletion": ("deletion",),
             "insertion": ("insertion",)}.get(curves) if isinstance(curves, str) else None
    if kinds is None:
        raise ValueError(f"curves: expected 'both', 'deletion' or 'insertion', got {curves!r}")
    x, t, batch_size = _inputs(model, images, target, batch_size)
    n, _, h, w = x.shape
    order = _pixel_scores(attributions, x).argsort(1, descending=True)       # (N, HW)
    base = _baseline(baseline, x)
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long().tolist()
    # rank of each pixel, so that "the first k" is one comparison per step
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    k_of_step = torch.tensor(counts, device=x.device)
    tt = t.repeat_interleave(steps + 1)
    result = dict.fromkeys(("deletion", "insertion"))
    with eval_mode(model):
        for kind in kinds:
            start, end = (x, base) if kind == "deletion" else (base, x)

            def make(r, start=start, end=end):
                # row r is image r // (S + 1) at step r % (S + 1): its first k pixels changed
                i, k = r // (steps + 1), k_of_step[r % (steps + 1)]
                changed = (rank[i] < k[:, None]).view(-1, 1, h, w)
                return torch.where(changed, end[i], start[i])

            result[kind] = _row_scores(model, n * (steps + 1), make, tt, batch_size, True,
                                       x).view(n, steps + 1)
    fr = torch.tensor(counts, dtype=x.dtype, device=x.device) / (h * w)
    d, i = result["deletion"], result["insertion"]
    return Curves(fr, d, i, None if d is None else auc(d, fr), None if i is None else auc(i, fr))


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
    ``"probability"`` (Quantus's default). ``patch_size=1`` is pixel flipping.

    Against Quantus 0.6.0 (checked in ``tests/metrics/test_quantus.py``): with
    ``baseline="black"`` and ``score="probability"``, ``curve[:, :1] - curve[:, 1:]`` is what
    Quantus's ``RegionPerturbation(order="morf", perturb_baseline="black")`` returns, for
    image sizes that ``patch_size`` divides (Quantus pads the others; here they raise). Quantus's
    ``PixelFlipping(features_in_step=C)`` on a map that is equal across the C channels is
    ``curve[:, 1:]`` with ``patch_size=1`` and ``regions=H*W``; it flips single values, ranked
    by their own attribution, where this flips whole pixels, ranked by the channel sum.

    Args:
        batch_size: perturbed images per forward pass (the memory budget; see the module).

    Returns:
        :class:`RegionPerturbation`.
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
    order = per_patch.argsort(1, descending=True)
    # rank of every patch in that order, spread over its pixels: step k replaces the pixels
    # whose rank is < k, one comparison per step (no cumulative copies, no loop per image)
    prank = torch.empty_like(order)
    prank.scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand(n, -1))
    prank = (prank.view(n, h // patch_size, w // patch_size)
             .repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2))  # (N, H, W)
    if isinstance(baseline, str) and baseline == "uniform":
        seed = resolve_seed(seed)
        lo = x.flatten(1).amin(1).view(n, 1, 1, 1)
        hi = x.flatten(1).amax(1).view(n, 1, 1, 1)
        # one draw per image from its own generator: the result does not depend on the batch
        noise = torch.stack([torch.rand((c, h, w), generator=make_generator(seed, i, 4, "cpu"))
                             for i in range(n)]).to(x)
        base = lo + (hi - lo) * noise
    else:
        base = _baseline(baseline, x)

    def make(r):
        # row r is image r // (L + 1) after its r % (L + 1) most relevant regions replaced
        i, k = r // (regions + 1), r % (regions + 1)
        changed = (prank[i] < k[:, None, None]).unsqueeze(1)
        return torch.where(changed, base[i], x[i])

    with eval_mode(model):
        curve = _row_scores(model, n * (regions + 1), make, t.repeat_interleave(regions + 1),
                            batch_size, score == "probability", x).view(n, regions + 1)
    aopc = (curve[:, :1] - curve).mean(1)
    return RegionPerturbation(curve, aopc)


def _feature_attributions(attributions: Tensor, x: Tensor, features: str) -> Tensor:
    """``(N, F)``: the attribution of each feature, a pixel (summed over channels) or a value
    (a map without channels, or with one, counts for every channel, as Quantus broadcasts it)."""
    if features == "pixels":
        return _pixel_scores(attributions, x)
    a = attributions.detach().to(x.device)
    if a.dim() == x.dim() - 1:
        a = a.unsqueeze(1)
    try:
        return a.expand_as(x).reshape(x.shape[0], -1)
    except RuntimeError:
        raise ValueError(f"attributions: expected shape {tuple(x.shape)}, (N, 1, H, W) or "
                         f"(N, H, W), got {tuple(attributions.shape)}") from None


@torch.no_grad()
def faithfulness_correlation(model: nn.Module, images: Tensor, attributions: Tensor, target, *,
                             subset_size: int = 224, runs: int = 100,
                             baseline: Union[str, Tensor] = "zero", seed: Optional[int] = 0,
                             features: str = "pixels", subsets: Optional[Tensor] = None,
                             batch_size: int = 128) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020), per image: the Pearson correlation, over
    ``runs`` random subsets of ``subset_size`` features, between the subset's summed
    attribution and the drop of the target's logit when the subset is set to the baseline.

    Args:
        features: ``"pixels"`` (a subset removes whole pixels, all channels, and a pixel's
            attribution is its channel sum) or ``"values"`` (each of the C*H*W values on its
            own, as Quantus's ``FaithfulnessCorrelation``).
        subsets: optional ``(N, runs, subset_size)`` indices into each image's flattened
            features (H*W pixels or C*H*W values): the subsets to use instead of drawing them
            (``runs`` and ``subset_size`` are then its shape). Otherwise the subsets of image
            ``i`` are drawn from its own generator (seeded by ``seed`` and ``i``), so a result
            does not depend on the batch.
        baseline: ``"zero"``, ``"mean"``, ``"black"`` (each image's minimum, Quantus's
            default), ``"blur"`` or a tensor.
        batch_size: perturbed images per forward pass (the memory budget; see the module).

    With ``features="values"``, ``baseline="black"`` and Quantus's subsets passed as
    ``subsets``, the result is Quantus 0.6.0's (checked in ``tests/metrics/test_quantus.py``).
    Quantus draws them with the global ``np.random`` and offers no seed of its own.

    Returns:
        ``(N,)`` correlations in [-1, 1].
    """
    if features not in ("pixels", "values"):
        raise ValueError(f"features: expected 'pixels' or 'values', got {features!r}")
    x, t, batch_size = _inputs(model, images, target, batch_size)
    n, c, h, w = x.shape
    feats = h * w if features == "pixels" else c * h * w
    if subsets is None:
        subset_size = check_int("subset_size", subset_size, 1)
        runs = check_int("runs", runs, 2)
        if subset_size > feats:
            raise ValueError(f"subset_size: {subset_size} is more than the {feats} {features} "
                             "of an image")
        seed = resolve_seed(seed)
        idx = torch.stack([torch.rand(runs, feats, generator=make_generator(seed, i, 5, "cpu"))
                           .topk(subset_size, 1, largest=False).indices for i in range(n)])
    else:
        if not isinstance(subsets, Tensor) or subsets.is_floating_point() or subsets.is_complex() \
                or subsets.dtype == torch.bool:
            raise TypeError("subsets: expected an integer tensor of indices")
        if subsets.dim() != 3 or subsets.shape[0] != n or subsets.shape[1] < 2:
            raise ValueError(f"subsets: expected shape (N={n}, runs >= 2, subset_size), "
                             f"got {tuple(subsets.shape)}")
        if subsets.numel() and (int(subsets.min()) < 0 or int(subsets.max()) >= feats):
            raise ValueError(f"subsets: indices must lie in [0, {feats}) ({features})")
        idx = subsets.long()
        runs, subset_size = idx.shape[1:]
    idx = idx.to(x.device)                                                  # (N, runs, k)
    fa = _feature_attributions(attributions, x, features)
    attr_sums = fa.gather(1, idx.reshape(n, -1)).view(n, runs, subset_size).sum(2)
    base = _baseline(baseline, x)
    fshape = (1, h, w) if features == "pixels" else (c, h, w)

    def make(r):
        # row r is image r // runs with its subset r % runs set to the baseline
        i = r // runs
        mask = torch.zeros(len(r), feats, dtype=torch.bool, device=x.device)
        mask.scatter_(1, idx[i, r % runs], True)
        return torch.where(mask.view(-1, *fshape), base[i], x[i])

    with eval_mode(model):
        full = _scores(model, x, t, batch_size, False)
        scores = _row_scores(model, n * runs, make, t.repeat_interleave(runs), batch_size,
                             False, x)
    drops = full[:, None] - scores.view(n, runs)
    a = attr_sums - attr_sums.mean(1, keepdim=True)
    d = drops - drops.mean(1, keepdim=True)
    den = (a.norm(dim=1) * d.norm(dim=1)).clamp_min(torch.finfo(x.dtype).tiny)
    return (a * d).sum(1) / den
