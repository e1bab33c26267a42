"""The demo's section on feature visualization past activation maximization: feature
accentuation and caricatures of test images, and the facets of a unit (one section of
:mod:`cnnvis_ext.cli.demo`, kept here for its length)."""
from __future__ import annotations

import torch

from ..report import label_grid
from ..vis import caricature, feature_accentuation, multifaceted_visualization
from ..vis import objectives as O

__all__ = ["section_frontier"]


def section_frontier(d, sec) -> None:
    """Accentuation of each test image toward its predicted class, caricatures at the last
    convolution, and the facets of channel 0 of the last convolution over the test split."""
    layer = d.convs[-1]
    x = d.test_x[:min(4, d.test_x.shape[0])]
    with torch.no_grad():
        pred = d.model(x).argmax(-1).tolist()
    steps = d.args.steps
    kw = dict(steps=steps, seed=d.args.seed, progress=d.progress)
    acc = feature_accentuation(d.model, [O.class_logit(c) for c in pred], x, lam=10.0, **kw)
    car = caricature(d.model, layer, x, init="image", **kw)
    rows = torch.cat([x.cpu(), acc.images.detach().cpu(), car.images.detach().cpu()])
    labels = ([f"test #{i}" for i in range(len(pred))]
              + [f"accent. {d.classes[c]}" for c in pred]
              + [f"caricature {layer}" for _ in pred])
    d.add(sec, label_grid(rows.clamp(0, 1), labels, ncol=len(pred), scale=d.up),
          "frontier_accentuation.png",
          f"Top: test images. Middle: feature accentuation (Hamblin et al. 2024): each image "
          f"pushed toward its predicted class for {steps} steps while a penalty (lambda 10, "
          "pixel distance) keeps it near the original, so what changes is what the class "
          f"unit responds to in that image. Bottom: caricatures (Lucid): images whose {layer} "
          "activations point the way the original's do, exaggerated.")
    sec.notes.append("Accentuation: distance to the original after the last step "
                     + ", ".join(f"{float(v):.4f}" for v in acc.distances[-1]) + ".")
    data = torch.utils.data.TensorDataset(d.data.test_images)
    k = 3 if len(d.data.test_images) >= 12 else 1
    fac = multifaceted_visualization(d.model, layer, 0, data, facets=k,
                                     top=min(32, len(d.data.test_images)), **kw)
    sizes = torch.bincount(fac.assignments, minlength=k).tolist()
    rows = torch.cat([fac.mean_images.detach().cpu(), fac.images.detach().cpu()])
    labels = ([f"cluster {j} ({n} images): mean" for j, n in enumerate(sizes)]
              + [f"facet {j}" for j in range(k)])
    d.add(sec, label_grid(rows.clamp(0, 1), labels, ncol=k, scale=d.up),
          "frontier_facets.png",
          f"Multifaceted visualization (Nguyen, Yosinski & Clune 2016) of channel 0 of "
          f"{layer}: its top test images clustered by their {layer} activations into {k} "
          "facets (top: each cluster's mean image), and for each facet the image "
          "optimized from that mean with a centre-biased parameterization (bottom).")
