"""``cnnvis maps``: the feature maps of images at each layer."""
from __future__ import annotations

from ...report import save_png
from ..errors import CLIError
from ..figures import fname, out_dir, upscale_for, view_feature_maps
from ..jobs import say
from ..loading import (check_layer, conv_layers, load_images, model_context, model_device,
                       needs_hooks)

HELP = "draw the feature maps of images at each layer"


def run(args) -> int:
    _, lm = model_context(args)
    needs_hooks(lm, "maps")
    layers = ([check_layer(lm.model, l) for l in args.layers] if args.layers
              else conv_layers(lm.model))
    if not layers:
        raise CLIError("--layers: the model has no convolution layer; name layers with --layers")
    images, caps, _ = load_images(args, lm)
    out = out_dir(args)
    dev = model_device(lm.model)
    for i in range(len(images)):
        save_png(images[i], out / f"maps_input{i}.png", scale=upscale_for(lm.input_size))
        for layer, grid, caption in view_feature_maps(lm.model, images[i:i + 1].to(dev), layers,
                                                      args.max_channels):
            p = save_png(grid, out / f"maps_input{i}_{fname(layer)}.png", scale=args.scale)
            say(f"{caps[i]} {caption}: wrote {p}")
    return 0
