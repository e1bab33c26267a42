"""``cnnvis attribute``: attribution maps (saliency, guided backprop, deconvnet, LRP, Grad-CAM)
of images, one row per image: the image, the map, the overlay."""
from __future__ import annotations

import torch

from ...report import save_png
from ..errors import CLIError
from ..figures import out_dir, tile, upscale_for, view_attribution
from ..jobs import say
from ..loading import (check_layer, class_names, load_images, model_context, model_device,
                       needs_hooks)

HELP = "attribution maps: saliency, guided backprop, deconvnet, LRP, Grad-CAM"


def run(args) -> int:
    _, lm = model_context(args)
    model = lm.model
    if args.method != "saliency":
        needs_hooks(lm, f"attribute --method {args.method}")
    if args.layer:
        check_layer(model, args.layer)
    images, caps, _ = load_images(args, lm)
    dev = model_device(model)
    with torch.no_grad():
        logits = model(images.to(dev))
    n_out = logits.shape[-1]
    if args.target is not None:
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
        rows += [img, heat[i].expand(3, -1, -1), overlay[i]]
    p = save_png(tile(torch.stack(rows), ncol=3, normalize=False),
                 out_dir(args) / f"attribute_{args.method}.png", scale=upscale_for(lm.input_size))
    names = class_names(lm, n_out)
    for i in range(len(images)):
        say(f"{caps[i]}: {args.method} for class {names[int(targets[i])]}")
    say(f"rows: image, {args.method} map, overlay: wrote {p}")
    return 0
