"""``cnnvis kernels``: the learned kernels of a layer as one grid."""
from __future__ import annotations

from ...report import save_png
from ..figures import fname, out_dir, view_kernels
from ..jobs import say
from ..loading import check_layer, default_conv_layer, model_context

HELP = "draw the learned kernels of a layer"


def run(args) -> int:
    _, lm = model_context(args)
    layer = (check_layer(lm.model, args.layer) if args.layer
             else default_conv_layer(lm.model, last=False))
    grid, caption = view_kernels(lm.model, layer)
    path = save_png(grid, out_dir(args) / f"kernels_{fname(layer)}.png", scale=args.scale)
    say(f"{caption}\nwrote {path}")
    return 0
