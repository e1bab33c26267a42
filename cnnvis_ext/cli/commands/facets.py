"""``cnnvis facets``: multifaceted feature visualization (Nguyen, Yosinski & Clune 2016) of
units of a layer: each unit's top test images, clustered in the layer, and one image per
cluster (facet) optimized from the cluster's mean image under a centre-bias prior."""
from __future__ import annotations

import torch

from ...data import load_dataset
from ...io import atomic_write_bytes
from ...report import save_png
from ...vis import multifaceted_visualization
from ..figures import fname, out_dir, tile, upscale_for
from ..jobs import is_main, say
from ..loading import (check_layer, default_conv_layer, layer_channels, model_context,
                       needs_hooks, select_units)

HELP = "multifaceted feature visualization: one image per facet of a unit (Nguyen et al. 2016)"
DESCRIPTION = ("For each of --units of --layer: rank the test set by the unit, cluster its --top "
               "images by the layer's activations (k-means, --facets clusters), and optimize "
               "one image per cluster starting from the cluster's mean image under a "
               "centre-bias prior. Writes the facets, and per facet its mean image and top "
               "members, with a Markdown summary.")

#: Members of a cluster shown beside its facet.
MEMBERS_SHOWN = 8


def run(args) -> int:
    _, lm = model_context(args)
    needs_hooks(lm, "facets")
    model = lm.model
    layer = check_layer(model, args.layer) if args.layer else default_conv_layer(model, last=True)
    units = select_units(args, layer_channels(model, layer, lm)) if args.units else [0]
    data = load_dataset(args.data, size=lm.input_size, channels=lm.in_channels,
                        progress=not args.quiet and is_main())
    images = data.test_images
    dataset = torch.utils.data.TensorDataset(images)
    out = out_dir(args)
    scale = upscale_for(lm.input_size)
    lines = ["# multifaceted feature visualization", "",
             f"layer {layer}; the top {args.top} test images of each unit in {args.facets} "
             f"clusters (k-means on the layer's activations); {args.steps} steps from each "
             f"cluster's mean image, centre bias sigma {args.center_sigma}, seed {args.seed}.",
             ""]
    for u in units:
        res = multifaceted_visualization(
            model, layer, u, dataset, facets=args.facets, top=args.top, steps=args.steps,
            lr=args.lr, center_sigma=args.center_sigma, seed=args.seed,
            batch_size=args.batch_size, progress=not args.quiet)
        k = res.images.shape[0]
        top_imgs = images[res.indices.cpu()]
        p1 = save_png(tile(_rgb(res.images), ncol=k, normalize=False),
                      out / f"facets_{fname(layer)}_unit{u}.png", scale=scale)
        rows = []
        for j in range(k):
            members = top_imgs[(res.assignments == j).cpu()][:MEMBERS_SHOWN]
            blank = torch.ones(MEMBERS_SHOWN - len(members), *images.shape[1:])
            rows += [res.images[j].cpu(), res.mean_images[j].cpu(), *members, *blank]
        p2 = save_png(tile(_rgb(torch.stack(rows)), ncol=2 + MEMBERS_SHOWN, normalize=False),
                      out / f"facets_{fname(layer)}_unit{u}_clusters.png", scale=scale)
        lines += [f"## {layer} unit {u}", "", f"![facets]({p1.name})", "",
                  f"Rows of [{p2.name}]({p2.name}): the facet, the cluster's mean image, its "
                  f"best members (up to {MEMBERS_SHOWN}).", "",
                  "| facet | images | best activation | objective at step 0 | at the last step |",
                  "|---|---|---|---|---|"]
        for j in range(k):
            sel = res.assignments == j
            best = float(res.activations[sel.to(res.activations.device)].max())
            v0, v1 = (("-", "-") if res.values.shape[0] == 0 else
                      (f"{float(res.values[0, j]):.4g}", f"{float(res.values[-1, j]):.4g}"))
            lines.append(f"| {j} | {int(sel.sum())} | {best:.4g} | {v0} | {v1} |")
        lines.append("")
        say(f"{layer} unit {u}: {k} facets of its top {len(res.indices)} test images: wrote "
            f"{p1}, {p2}")
    if is_main():
        report = atomic_write_bytes(out / "facets_report.md", ("\n".join(lines) + "\n").encode())
        say(f"multifaceted feature visualization of {len(units)} units of {layer}: wrote "
            f"{report}")
    return 0


def _rgb(t):
    t = t.detach().float().cpu()
    return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
