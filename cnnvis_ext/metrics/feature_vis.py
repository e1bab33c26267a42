"""How far to trust a feature visualization: do its images carry the class to another network,
and do they look, to that network, like real images of the class?

* :func:`transferability`: the fraction of class images made for one network that a second,
  independently trained network assigns to the same class;
* :func:`plausibility`: the cosine similarity of the images' features (in a layer of the second
  network, e.g. its penultimate) to the mean feature of real images of their class, minus the
  mean similarity to the other classes' (after Fel et al. 2023, who compare feature
  visualizations with real images in the feature space of another model). Above 0: the
  images sit nearer their own class than the others.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._modules import forward_until, model_device_dtype
from ..vis._common import (check_float_images, check_int, check_model, eval_mode,
                           one_class_per_image)

__all__ = ["transferability", "Plausibility", "plausibility"]


@torch.no_grad()
def transferability(images: Tensor, classes, other: nn.Module, *, batch_size: int = 64) -> Tensor:
    """Fraction of ``images`` (made to show ``classes``) that ``other`` classifies as their class.

    Returns:
        A scalar tensor in [0, 1]; :func:`torch.Tensor.item` for a float.
    """
    check_model(other)
    check_float_images(images)
    batch_size = check_int("batch_size", batch_size, 1)
    t = one_class_per_image(classes, images.shape[0], "classes")
    device, dtype = model_device_dtype(other)
    hits = []
    with eval_mode(other):
        for i in range(0, images.shape[0], batch_size):
            pred = other(images[i:i + batch_size].to(device=device, dtype=dtype)).argmax(-1)
            hits.append(pred.cpu() == t[i:i + batch_size])
    return torch.cat(hits).float().mean() if hits else torch.tensor(float("nan"))


class Plausibility(NamedTuple):
    """``score``: ``(N,)`` own-class similarity minus the mean other-class similarity, per image;
    ``own`` / ``others``: the two terms."""

    score: Tensor
    own: Tensor
    others: Tensor


@torch.no_grad()
def _features(model, layer, x, batch_size) -> Tensor:
    device, dtype = model_device_dtype(model)
    out = []
    for i in range(0, x.shape[0], batch_size):
        a = forward_until(model, x[i:i + batch_size].to(device=device, dtype=dtype), [layer])[layer]
        out.append(a.flatten(1).double().cpu())
    return torch.cat(out)


@torch.no_grad()
def plausibility(images: Tensor, classes, real_images: Tensor, real_labels, other: nn.Module,
                 layer: str, *, batch_size: int = 64) -> Plausibility:
    """Plausibility of class images in ``other``'s ``layer`` against real images of each class.

    Args:
        images: ``(N, C, H, W)`` feature visualizations of ``classes``.
        classes: their classes (int or ``(N,)``).
        real_images, real_labels: real images and their labels (every class of ``classes`` and
            at least one other present).
        other: the second network; ``layer``: the layer whose output is the feature (its
            penultimate layer, as a rule).
    """
    check_model(other)
    check_float_images(images)
    check_float_images(real_images, "real_images")
    batch_size = check_int("batch_size", batch_size, 1)
    t = one_class_per_image(classes, images.shape[0], "classes")
    labels = one_class_per_image(real_labels, real_images.shape[0], "real_labels")
    present = sorted(set(labels.tolist()))
    missing = sorted(set(t.tolist()) - set(present))
    if missing or len(present) < 2:
        raise ValueError(f"real_labels: need real images of every class shown ({missing} missing) "
                         "and of at least one other class")
    with eval_mode(other):
        f = F.normalize(_features(other, layer, images, batch_size), dim=1)
        r = _features(other, layer, real_images, batch_size)
    centroids = F.normalize(torch.stack([r[labels == c].mean(0) for c in present]), dim=1)
    sims = f @ centroids.T                                              # (N, classes present)
    col = torch.tensor([present.index(c) for c in t.tolist()])
    own = sims[torch.arange(len(t)), col]
    mask = torch.ones_like(sims, dtype=torch.bool)
    mask[torch.arange(len(t)), col] = False
    others = (sims * mask).sum(1) / mask.sum(1)
    return Plausibility(own - others, own, others)
