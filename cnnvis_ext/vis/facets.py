"""Multifaceted feature visualization (Nguyen, Yosinski & Clune 2016, "Multifaceted Feature
Visualization: Uncovering the Different Types of Features Learned By Each Neuron in Deep
Neural Networks").

A unit often responds to several different kinds of input (its *facets*); one activation
maximization from noise finds only one of them, or a blend. The paper's recipe, followed here:

1. rank the dataset by the unit: its ``top`` strongest images
   (:func:`~cnnvis_ext.vis.top_activations`' scan, so it scales with the dataset and splits
   across ``torch.distributed`` ranks like that scan);
2. cluster those images by the activations of the unit's *layer* (all channels and positions,
   flattened) with k-means (:func:`kmeans`: k-means++ seeding and Lloyd iterations in torch,
   seeded and deterministic). The paper reduces fc7 codes with PCA and t-SNE first; on a
   single layer's activations plain k-means is used here;
3. for each cluster start activation maximization of the unit from the cluster's *mean
   image*, under a centre-bias prior: the image is ``sigmoid(logit(mean) + mask * delta)``,
   where ``delta`` is optimized and ``mask`` is a Gaussian window (1 at the centre,
   ``sigma = center_sigma * min(H, W)``), so pixels may move away from the mean image most at
   the centre and little at the borders, together with the standard random jitter. This is a
   fixed form of the paper's centre-biased regularization, which optimizes a growing central
   region under jitter and blur: the facet is drawn in the middle of the image, where the
   unit (a channel's mean, as :func:`~cnnvis_ext.vis.objectives.channel`) looks at it whole.

Everything after the scan is deterministic under ``seed``; every rank computes the same
facets.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._modules import get_layer, model_device_dtype
from ..seeding import make_generator, resolve_seed
from ._common import check_int, check_model, check_number, eval_mode, run_layers
from .accentuate import INIT_CLIP
from .actmax import activation_maximization
from .objectives import channel
from .param import ImageParam
from .top_activations import _batches, top_activations

__all__ = ["kmeans", "KMeansResult", "multifaceted_visualization", "FacetsResult",
           "CenterBiasParam"]


class KMeansResult(NamedTuple):
    """``assignments``: ``(N,)`` cluster of each point; ``centers``: ``(K, D)``; ``inertia``:
    the sum of squared distances of the points to their centres."""

    assignments: Tensor
    centers: Tensor
    inertia: float


def _sq_dists(x: Tensor, c: Tensor) -> Tensor:
    """``(N, K)`` squared Euclidean distances (float64: ties and sums reproducible)."""
    return ((x * x).sum(1, keepdim=True) - 2.0 * x @ c.t() + (c * c).sum(1)[None]).clamp_min(0)


def _plus_plus(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    """k-means++ seeding: indices of ``k`` starting centres drawn from ``g`` (a CPU generator)."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = _sq_dists(x, x[chosen[0]:chosen[0] + 1])[:, 0].cpu()
    for _ in range(1, k):
        if d2.sum() > 0:
            nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=g))
        else:  # every point sits on a centre already: the first point not chosen
            nxt = next(i for i in range(n) if i not in chosen)
        chosen.append(nxt)
        d2 = torch.minimum(d2, _sq_dists(x, x[nxt:nxt + 1])[:, 0].cpu())
    return torch.tensor(chosen)


def _lloyd(x: Tensor, centers: Tensor, max_iter: int) -> Tuple[Tensor, Tensor, float]:
    assign = None
    for _ in range(max_iter):
        d = _sq_dists(x, centers)
        new = d.argmin(1)  # ties: the lowest cluster index (argmin returns the first minimum)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        k = centers.shape[0]
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:  # an empty cluster takes the point farthest from its centre
            far = d.gather(1, assign[:, None])[:, 0]
            for j in empty:
                i = int(far.argmax())
                centers[j] = x[i]
                far[i] = -1.0
    d = _sq_dists(x, centers)
    assign = d.argmin(1)
    return assign, centers, float(d.gather(1, assign[:, None]).sum())


def kmeans(x: Tensor, k: int, *, n_init: int = 8, max_iter: int = 100, seed: Optional[int] = 0
           ) -> KMeansResult:
    """k-means clustering in torch: k-means++ seeding, Lloyd iterations, ``n_init`` restarts.

    Deterministic under ``seed``: restart ``r`` draws its seeding from a CPU generator seeded by
    ``(seed, r)``; distances are computed in float64 and ties go to the lower cluster index.
    The restart of lowest inertia wins (ties: the earlier restart). An empty cluster takes the
    point farthest from its centre.

    Args:
        x: ``(N, D)`` points (any leading shape ``(N, ...)`` is flattened), on any device.
        k: clusters, ``1 <= k <= N``.
        n_init: restarts (>= 1). max_iter: Lloyd iterations per restart (>= 1).
        seed: the seed of the k-means++ draws (``None``: random).

    Returns:
        :class:`KMeansResult` ``(assignments (N,), centers (K, D) in x's dtype, inertia)``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x: expected (N, D) points with N >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    k = check_int("k", k, 1)
    if k > x.shape[0]:
        raise ValueError(f"k: {k} clusters for {x.shape[0]} points; expected k <= {x.shape[0]}")
    n_init = check_int("n_init", n_init, 1)
    max_iter = check_int("max_iter", max_iter, 1)
    seed = resolve_seed(seed)
    xd = x.reshape(x.shape[0], -1).double()
    if not torch.isfinite(xd).all():
        raise ValueError("x: contains NaN or infinite values")
    best = None
    for r in range(n_init):
        g = make_generator(seed, r, 2, "cpu")
        start = xd[_plus_plus(xd, k, g).to(xd.device)]
        res = _lloyd(xd, start.clone(), max_iter)
        if best is None or res[2] < best[2]:
            best = res
    assign, centers, inertia = best
    return KMeansResult(assign, centers.to(x.dtype), inertia)


class CenterBiasParam(ImageParam):
    """``image = sigmoid(logit(start) + mask * delta)``: an image that starts at ``start`` and
    may move away from it most at the centre (the centre-bias prior of the module docstring).

    Args:
        start: ``(N, C, H, W)`` starting images in [0, 1] (clipped to
            ``[INIT_CLIP, 1 - INIT_CLIP]`` before the logit).
        center_sigma: the Gaussian window's standard deviation, as a fraction of
            ``min(H, W)`` (``inf``: no centre bias).
    """

    def __init__(self, start: Tensor, center_sigma: float = 0.3):
        h, w = start.shape[-2:]
        self.base = torch.logit(start.clamp(INIT_CLIP, 1 - INIT_CLIP)).detach()
        self.mask = center_mask(h, w, center_sigma, start.device, start.dtype)
        self.delta = torch.zeros_like(self.base, requires_grad=True)

    def params(self) -> List[Tensor]:
        return [self.delta]

    def image(self) -> Tensor:
        return torch.sigmoid(self.base + self.mask * self.delta)


def center_mask(h: int, w: int, sigma: float, device=None, dtype=torch.float32) -> Tensor:
    """``(1, 1, H, W)`` Gaussian window, 1 at the centre, ``sigma`` a fraction of ``min(H, W)``."""
    if math.isinf(sigma):
        return torch.ones(1, 1, h, w, device=device, dtype=dtype)
    s = sigma * min(h, w)
    yy = torch.arange(h, device=device, dtype=torch.float64) - (h - 1) / 2
    xx = torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2
    m = torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * s * s))
    return m.to(dtype)[None, None]


class FacetsResult(NamedTuple):
    """The facets of one unit.

    Attributes:
        images: ``(K, C, H, W)`` one image per facet, in [0, 1].
        values: ``(steps, K)`` the unit's objective at every step of each facet.
        assignments: ``(T,)`` the facet (cluster) of each top image, best image first.
        indices: ``(T,)`` the dataset indices of the top images.
        activations: ``(T,)`` the unit's (spatial maximum) activation in each top image.
        mean_images: ``(K, C, H, W)`` each cluster's mean image (the facet's start).
        inertia: the k-means inertia of the clustering.
    """

    images: Tensor
    values: Tensor
    assignments: Tensor
    indices: Tensor
    activations: Tensor
    mean_images: Tensor
    inertia: float


def _gather(dataset, indices: List[int], batch_size: int) -> Tensor:
    """The images of ``dataset`` at ``indices`` (a second pass for an iterable of batches)."""
    if isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__"):
        items = [dataset[j] for j in indices]
        return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])
    want = set(indices)
    found = {}
    seen = 0
    batches, _ = _batches(dataset, batch_size)
    for b in batches:
        for j in range(seen, seen + b.shape[0]):
            if j in want:
                found[j] = b[j - seen]
        seen += b.shape[0]
    if len(found) < len(want):
        raise ValueError("dataset: a second pass over it found fewer images than the scan; "
                         "pass a map-style Dataset or a re-iterable list of batches, not a "
                         "one-shot iterator")
    return torch.stack([found[j] for j in indices])


def multifaceted_visualization(
    model: nn.Module,
    layer: str,
    unit: int,
    dataset,
    *,
    facets: int = 4,
    top: int = 64,
    steps: int = 256,
    lr: float = 0.05,
    center_sigma: float = 0.3,
    transforms="standard",
    n_init: int = 8,
    seed: Optional[int] = 0,
    batch_size: int = 64,
    progress: Optional[bool] = None,
    normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
    distributed: Optional[bool] = None,
) -> FacetsResult:
    r"""Multifaceted feature visualization (Nguyen et al. 2016) of channel ``unit`` of ``layer``.

    The unit's ``top`` strongest dataset images, clustered by the layer's activations into
    ``facets`` groups; one activation maximization per group, from its mean image under a
    centre-bias prior (module docstring).

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images (eval mode during the call).
        layer: the unit's layer (a ``named_modules`` name), with a channel dimension.
        unit: the channel of ``layer``.
        dataset: as :func:`~cnnvis_ext.vis.top_activations`: a map-style Dataset of images
            (or ``(image, label)``) in [0, 1], or a re-iterable collection of image batches.
        facets: clusters (``1 <= facets <= top``; at most the number of images).
        top: how many top images are clustered.
        steps, lr: Adam steps and step size of each facet's activation maximization.
        center_sigma: the centre-bias window's standard deviation, a fraction of the image
            side (> 0; ``inf``: none).
        transforms: the random transforms of activation maximization (``"standard"``,
            ``None`` or a list).
        n_init: k-means restarts.
        seed: the k-means seeding and the transforms of facet ``i`` (``(seed, i)``).
        batch_size: images per batch of the scan and of the activations, and facets per
            batch of the optimization; the result does not depend on it.
        progress: progress bars of the scan and the optimization.
        normalize: ``(mean, std)`` applied to [0, 1] images before the model, in the
            clustering and the optimization (the scan sees the dataset as it is).
        distributed: as :func:`~cnnvis_ext.vis.top_activations`.

    Returns:
        :class:`FacetsResult`: facets ordered by cluster size (largest first; ties: the
        cluster of the better-ranked image first).

    Example:
        >>> res = multifaceted_visualization(model, "features.10", 3, dataset, facets=4)
    """
    check_model(model)
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a layer name, got {type(layer).__name__}")
    get_layer(model, layer)
    unit = check_int("unit", unit, 0)
    facets = check_int("facets", facets, 1)
    top = check_int("top", top, 1)
    if facets > top:
        raise ValueError(f"facets: {facets} clusters of {top} top images; expected facets <= top")
    steps = check_int("steps", steps, 0)
    lr = check_number("lr", lr, positive=True)
    if isinstance(center_sigma, bool) or not isinstance(center_sigma, (int, float)) or \
            math.isnan(center_sigma) or center_sigma <= 0:
        raise ValueError(f"center_sigma: expected a positive number (inf: no centre bias), "
                         f"got {center_sigma!r}")
    batch_size = check_int("batch_size", batch_size, 1)
    seed = resolve_seed(seed)
    device, dtype = model_device_dtype(model)

    try:
        ta = top_activations(model, layer, dataset, k=top, units=[unit], batch_size=batch_size,
                             project=False, progress=bool(progress), distributed=distributed)
    except ValueError as e:
        if str(e).startswith("units:"):
            raise ValueError(f"unit: {unit} is out of range for layer {layer!r} "
                             f"({str(e)[len('units: '):]})") from None
        raise
    idx = ta.indices[0].tolist()
    if facets > len(idx):
        raise ValueError(f"facets: {facets} clusters of the {len(idx)} images of the dataset; "
                         f"expected facets <= {len(idx)}")
    imgs = _gather(dataset, idx, batch_size).to(device=device, dtype=dtype)
    if imgs.min() < 0 or imgs.max() > 1:
        raise ValueError("dataset: expected images in [0, 1] (the facets start from mean "
                         "images; pass the model's normalization as normalize=)")
    norm = None
    if normalize is not None:
        mean, std = (torch.as_tensor(v, device=device, dtype=dtype).reshape(1, -1, 1, 1)
                     for v in normalize)
        norm = (mean, std)
    feats = []
    with eval_mode(model), torch.no_grad():
        for s in range(0, len(idx), batch_size):
            x = imgs[s:s + batch_size]
            x = x if norm is None else (x - norm[0]) / norm[1]
            feats.append(run_layers(model, x, [layer])[layer].flatten(1))
    km = kmeans(torch.cat(feats), facets, n_init=n_init, seed=seed)

    # canonical order: larger clusters first, then the cluster of the better-ranked image
    counts = torch.bincount(km.assignments, minlength=facets).tolist()
    first = [km.assignments.tolist().index(j) if counts[j] else len(idx) for j in range(facets)]
    order = sorted(range(facets), key=lambda j: (-counts[j], first[j]))
    relabel = torch.empty(facets, dtype=torch.long, device=km.assignments.device)
    relabel[torch.tensor(order, device=relabel.device)] = torch.arange(
        facets, device=relabel.device)
    assign = relabel[km.assignments]
    means = torch.stack([imgs[(assign == j).to(imgs.device)].mean(0) for j in range(facets)])

    used = [0]

    def factory(channels, size, generators, per_generator, dev, dt):
        n = len(generators) * per_generator
        start = means[used[0]:used[0] + n].to(device=dev, dtype=dt)
        used[0] += n
        return CenterBiasParam(start, float(center_sigma))

    res = activation_maximization(model, [channel(layer, unit)] * facets,
                                  size=tuple(imgs.shape[-2:]), steps=steps, lr=lr,
                                  optimizer="adam", param=factory, transforms=transforms,
                                  seed=seed, progress=progress, batch_size=batch_size,
                                  channels=imgs.shape[1], normalize=normalize)
    return FacetsResult(res.images, res.values, assign, ta.indices[0], ta.values[0], means,
                        km.inertia)
