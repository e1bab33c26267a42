"""``cnnvis accentuate``: feature accentuation (Hamblin et al. 2024) of images, one row per
image: the image, then each objective pushed from it under a penalty that keeps it near the
image; with ``--caricature LAYER``, Lucid's caricature of what that layer sees instead."""
from __future__ import annotations

from typing import List, Tuple

import torch

from ...io import atomic_write_bytes
from ...report import save_png
from ...vis import caricature, feature_accentuation
from ...vis import objectives as O
from ..errors import CLIError
from ..figures import fname, out_dir, tile, upscale_for
from ..jobs import is_main, say
from ..loading import (LoadedModel, check_layer, class_names, layer_channels, load_images,
                       model_context, model_device, needs_hooks, select_units)

HELP = "feature accentuation of images (Hamblin et al. 2024), or caricatures (Lucid)"
DESCRIPTION = ("Start from real images and raise an objective while a penalty (--lam, on "
               "pixels or on the activations of --reg-layer) keeps each image near its start: "
               "the change shows what in that image the unit responds to (Hamblin et al. 2024, "
               "Feature Accentuation). Objectives: --objective specs, the --units of --layer, "
               "or each image's predicted class (default). With --caricature LAYER: exaggerate "
               "whatever LAYER sees in each image (Lucid's caricature: dot product times "
               "cosine^--power with the original's activations).")


def _objectives(args, lm: LoadedModel, logits) -> Tuple[list, List[str], bool]:
    """``(objectives, names, per_image)``: with ``per_image`` one objective for each image
    (its predicted class), else every objective for every image."""
    model = lm.model
    if args.objective:
        return [O.parse_objective(s) for s in args.objective], list(args.objective), False
    if args.layer:
        needs_hooks(lm, "accentuate --layer")
        layer = check_layer(model, args.layer)
        units = select_units(args, layer_channels(model, layer, lm))
        return [O.channel(layer, u) for u in units], [f"{layer}:{u}" for u in units], False
    names = class_names(lm, logits.shape[-1])
    pred = logits.argmax(-1).tolist()
    return [O.class_logit(c) for c in pred], [f"class {names[c]}" for c in pred], True


def run(args) -> int:
    _, lm = model_context(args)
    model = lm.model
    dev = model_device(model)
    images, caps, _ = load_images(args, lm)
    images = images.to(dev)
    out = out_dir(args)
    kw = dict(steps=args.steps, lr=args.lr, param=args.param, seed=args.seed,
              batch_size=args.batch_size, progress=not args.quiet)
    if args.caricature:
        needs_hooks(lm, "accentuate --caricature")
        layer = check_layer(model, args.caricature)
        if args.objective or args.layer or args.reg_layer:
            raise CLIError("--caricature: compares the activations of LAYER with the image's; "
                           "drop --objective/--layer/--reg-layer")
        res = caricature(model, layer, images, power=args.power, init=args.init, **kw)
        rows = torch.stack([t for i in range(len(images)) for t in (images[i], res.images[i])])
        p = save_png(tile(_rgb(rows), ncol=2, normalize=False),
                     out / f"caricature_{fname(layer)}.png", scale=upscale_for(lm.input_size))
        lines = ["# caricature", "",
                 f"layer {layer}, power {args.power}, start from {args.init}, {args.steps} "
                 f"steps, {args.param} parameterization, seed {args.seed}", "",
                 f"![caricatures]({p.name})", "",
                 "| image | objective at step 0 | at the last step |", "|---|---|---|"]
        for i, cap in enumerate(caps):
            v0, v1 = _first_last(res.values, i)
            lines.append(f"| {cap} | {v0} | {v1} |")
        _report(out / "caricature_report.md", lines)
        say(f"caricatures of what {layer} sees in {len(images)} images, {args.steps} steps: "
            f"wrote {p}")
        return 0
    if args.reg_layer:
        needs_hooks(lm, "accentuate --reg-layer")
        check_layer(model, args.reg_layer)
    with torch.no_grad():
        logits = model(images)
    objs, names, per_image = _objectives(args, lm, logits)
    n, m = len(images), (1 if per_image else len(objs))
    pair_images = images if per_image else images.repeat_interleave(m, dim=0)
    pair_objs = objs if per_image else objs * n
    res = feature_accentuation(model, pair_objs, pair_images, lam=args.lam,
                               reg_layer=args.reg_layer, **kw)
    rows = []
    for i in range(n):
        rows += [images[i]] + [res.images[i * m + j] for j in range(m)]
    tag = (fname(args.layer) if args.layer else "objectives" if args.objective else "classes")
    p = save_png(tile(_rgb(torch.stack(rows)), ncol=m + 1, normalize=False),
                 out / f"accentuate_{tag}.png", scale=upscale_for(lm.input_size))
    where = f"the activations of {args.reg_layer}" if args.reg_layer else "pixels"
    lines = ["# feature accentuation", "",
             f"lam {args.lam} on the mean squared distance in {where}, {args.steps} steps, "
             f"{args.param} parameterization, seed {args.seed}. Rows: images; first column the "
             "image, then one column per objective.", "", f"![accentuations]({p.name})", "",
             "| image | objective | objective at step 0 | at the last step | distance |",
             "|---|---|---|---|---|"]
    for i, cap in enumerate(caps):
        for j in range(m):
            k = i * m + j
            v0, v1 = _first_last(res.values, k)
            d = f"{float(res.distances[-1, k]):.4g}" if res.distances.shape[0] else "-"
            lines.append(f"| {cap} | {names[i] if per_image else names[j]} | {v0} | {v1} | "
                         f"{d} |")
    _report(out / "accentuate_report.md", lines)
    say(f"feature accentuation of {n} images x {m} objectives "
        f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}), lam {args.lam}, "
        f"{args.steps} steps: wrote {p}")
    return 0


def _rgb(t):
    """Grey images as RGB tiles (the grids mix them with nothing else, but stay 3-channel)."""
    t = t.detach().float().cpu()
    return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t


def _first_last(values, k: int) -> Tuple[str, str]:
    if values.shape[0] == 0:
        return "-", "-"
    return f"{float(values[0, k]):.4g}", f"{float(values[-1, k]):.4g}"


def _report(path, lines) -> None:
    if is_main():
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
