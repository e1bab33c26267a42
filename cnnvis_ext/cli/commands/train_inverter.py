"""``cnnvis train-inverter``: train an up-convolutional inverter (Dosovitskiy & Brox) of one
layer and save it, for ``invert --learned`` and ``actmax --prior``."""
from __future__ import annotations

import time
from pathlib import Path

from ...data import load_dataset
from ...distributed import get_world_size
from ...vis import invert_learned, train_inverter
from ..errors import CLIError
from ..figures import fname
from ..jobs import say
from ..loading import check_layer, default_conv_layer, model_context, needs_hooks

HELP = ("train an up-convolutional inverter of a layer (learned inversion and the generator prior "
        "of actmax)")
DESCRIPTION = ("Train an up-convolutional network that maps the frozen model's representation at "
               "--layer back to images (Dosovitskiy & Brox 2016) on the training split of --data, "
               "print its held-out error, and save it. Use it with `cnnvis invert --learned FILE` "
               "(reconstructions in one forward pass) and `cnnvis actmax --prior FILE` "
               "(activation maximization through the generator, Nguyen et al. 2016).")


def _out_path(args, layer: str) -> Path:
    """``--out`` (a file, or a folder for ``inverter_<layer>.pt``), checked before training."""
    out = Path(args.out) if args.out else Path(f"inverter_{fname(layer)}.pt")
    if out.is_dir():
        out = out / f"inverter_{fname(layer)}.pt"
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"--out: {str(parent)!r} is not a folder")
            break
    return out


def run(args) -> int:
    if get_world_size() > 1:
        raise CLIError("train-inverter trains in one process; run it without torchrun")
    dev, lm = model_context(args)
    needs_hooks(lm, "train-inverter")
    model = lm.model
    layer = (check_layer(model, args.layer) if args.layer
             else default_conv_layer(model, last=True))
    out = _out_path(args, layer)
    if lm.in_channels not in (1, 3):
        raise CLIError(f"the model takes {lm.in_channels}-channel input; only 1- and 3-channel "
                       "images can be read")
    data = load_dataset(None if args.data in (None, "digits") else args.data,
                        size=lm.input_size, channels=lm.in_channels, progress=not args.quiet)
    say(f"data: {data}")
    t0 = time.perf_counter()
    inv = train_inverter(model, layer, data.train_images, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, loss=args.loss,
                         width=args.width, seed=args.seed, progress=not args.quiet, log=say)
    train_s = time.perf_counter() - t0
    say(f"inverter of {layer}: codes {tuple(inv.code_shape)} -> images "
        f"{tuple(inv.image_shape)}, {inv.depth} up-convolution(s), "
        f"{sum(p.numel() for p in inv.parameters()):,} parameters; {args.epochs} epochs "
        f"({args.loss} loss) on {len(data.train_images)} images in {train_s:.1f}s on {dev}")
    x = data.test_images
    if len(x):
        rec = invert_learned(inv, model, x.to(dev), batch_size=256, check=False).float().cpu()
        mse = float((rec - x).pow(2).mean())
        base = float((data.train_images.mean(0) - x).pow(2).mean())
        say(f"held-out pixel MSE {mse:.5f} on {len(x)} test images (the mean training "
            f"image: {base:.5f})")
    say(f"wrote {inv.save(out)}")
    return 0
