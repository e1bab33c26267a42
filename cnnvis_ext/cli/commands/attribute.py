"""``cnnvis attribute``: attribution maps (saliency, guided backprop, deconvnet, LRP, the CAM
family, Guided Grad-CAM, integrated gradients, occlusion) of images, one row per image: the
image, the map, the overlay; with ``--target all``, the image and one map per class."""
from __future__ import annotations

import torch

from ...report import save_png
from ..errors import CLIError
from ..figures import out_dir, tile, upscale_for, view_attribution
from ..jobs import say
from ..loading import (check_layer, class_names, load_images, model_context, model_device,
                       needs_hooks)

HELP = ("attribution maps: saliency, guided backprop, deconvnet, LRP, the CAM family, "
        "integrated gradients, occlusion")

#: Methods that need no hooks (plain forward and backward passes of the model).
_HOOKLESS = ("saliency", "ig", "occlusion")


def run(args) -> int:
    _, lm = model_context(args)
    model = lm.model
    if args.method not in _HOOKLESS:
        needs_hooks(lm, f"attribute --method {args.method}")
    if args.layer:
        check_layer(model, args.layer)
    images, caps, _ = load_images(args, lm)
    dev = model_device(model)
    with torch.no_grad():
        logits = model(images.to(dev))
    n_out = logits.shape[-1]
    every = args.target == "all"
    if every:
        # every class of every image, the T maps of an image from one pass where the method allows
        targets = torch.arange(n_out).expand(len(images), n_out)
    elif args.target is not None:
        if not 0 <= args.target < n_out:
            raise CLIError(f"--target: {args.target} is out of range (the model has {n_out} "
                           "outputs)")
        targets = torch.full((len(images),), args.target, dtype=torch.long)
    else:
        targets = logits.argmax(-1).cpu()
    heat, overlay = view_attribution(model, images.to(dev), targets.to(dev), args.method,
                                     args.layer)
    rows = []
    for i in range(len(images)):
        img = images[i].cpu()
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        if every:
            rows += [img] + [overlay[i, j] for j in range(n_out)]
        else:
            rows += [img, heat[i].expand(3, -1, -1), overlay[i]]
    suffix = "_all" if every else ""
    p = save_png(tile(torch.stack(rows), ncol=n_out + 1 if every else 3, normalize=False),
                 out_dir(args) / f"attribute_{args.method}{suffix}.png",
                 scale=upscale_for(lm.input_size))
    names = class_names(lm, n_out)
    if every:
        say(f"rows: image, then the {args.method} overlay for each of the {n_out} classes "
            f"({', '.join(names[:10])}{', ...' if n_out > 10 else ''}): wrote {p}")
        return 0
    for i in range(len(images)):
        say(f"{caps[i]}: {args.method} for class {names[int(targets[i])]}")
    say(f"rows: image, {args.method} map, overlay: wrote {p}")
    return 0
