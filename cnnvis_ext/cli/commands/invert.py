"""``cnnvis invert``: reconstruct images from their representation at each layer, by
optimization (a resumable job, one unit per image) or with ``--learned`` inverters."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from ...distributed import JobDir, WorkUnit, offset_seed, run_units
from ...io import atomic_save
from ...report import save_png
from ...vis import invert_learned
from ..errors import CLIError
from ..figures import out_dir, tile, upscale_for, view_invert
from ..jobs import digest, is_main, job_spec, say, split_names
from ..loading import (LoadedModel, check_layer, conv_layers, load_images, load_inverter,
                       model_context, model_device, needs_hooks)

HELP = "reconstruct images from their representation at each layer"
DESCRIPTION = ("Mahendran & Vedaldi inversion of each image at each layer. One work unit per "
               "image: under torchrun the images are split across ranks; run again with the same "
               "arguments to finish a killed job. With --learned: Dosovitskiy & Brox "
               "reconstructions by trained up-convolutional inverters, one forward pass for all "
               "images.")


def run(args) -> int:
    """Invert every image at every layer: one work unit per image, dealt to the ranks under
    torchrun, written as it finishes and skipped when run again with the same arguments."""
    _, lm = model_context(args)
    needs_hooks(lm, "invert")
    if args.learned:
        return _run_learned(args, lm)
    names = split_names(args.layers)
    layers = [check_layer(lm.model, l) for l in names] if names else conv_layers(lm.model)
    if not layers:
        raise CLIError("--layers: the model has no convolution layer; name layers with --layers")
    images, caps, _ = load_images(args, lm)
    dev = model_device(lm.model)
    out = out_dir(args)
    spec = dict(job_spec(args, lm), layers=layers, steps=args.steps, images=digest(images),
                n=len(images))
    job = JobDir(out, "invert", spec)

    def compute(u):
        i = u.data
        # image i draws the noise it would draw as image i of one batch, on any rank
        return view_invert(lm.model, images[i].to(dev), layers, steps=args.steps,
                           seed=offset_seed(args.seed, i), progress=False).cpu()

    def write(u, rec):
        i = u.data
        grid = tile(torch.cat([images[i:i + 1].cpu(), rec]), ncol=len(layers) + 1,
                    normalize=False)
        t = atomic_save({"image": i, "layers": layers, "reconstructions": rec},
                        out / "invert" / f"input{i}.pt")
        p = save_png(grid, out / f"invert_input{i}.png", scale=upscale_for(lm.input_size))
        say(f"{caps[i]}: original, then reconstructions from {', '.join(layers)}: wrote {p}")
        return [t, p]

    units = [WorkUnit(f"input{i}", 1, i) for i in range(len(images))]
    done = run_units(units, compute, write, job, progress=not args.quiet, desc="invert", log=say)
    if done is not None and is_main():
        job.mark_complete()
        say(f"inverted {len(units)} images at {len(layers)} layers: {out}")
    return 0


def _run_learned(args, lm: LoadedModel) -> int:
    """``invert --learned INV.pt [--learned INV2.pt ...]``: one forward pass per inverter
    (Dosovitskiy & Brox) instead of an optimization per image and layer."""
    invs = [load_inverter(f, lm, "--learned") for f in args.learned]
    layers = [inv.layer for inv in invs]
    names = split_names(args.layers)
    if names and set(names) != set(layers):
        raise CLIError(f"--layers: with --learned the layers are the inverters' "
                       f"({', '.join(layers)}); drop --layers")
    shapes = sorted({tuple(inv.image_shape) for inv in invs})
    if len(shapes) > 1:
        raise CLIError(f"--learned: the inverters were trained for different image shapes "
                       f"({', '.join(map(str, shapes))}); invert them in separate runs")
    c, h, w = shapes[0]
    if h != w:
        raise CLIError(f"--learned: the inverters make {h}x{w} images; only square images can be "
                       "read from --data/--image")
    if (lm.in_channels, lm.input_size) != (c, h):
        if args.input_size and args.input_size != h:
            raise CLIError(f"--input-size: the --learned inverters were trained on {h}x{w} "
                           "images; drop --input-size")
        lm = replace(lm, input_size=h, in_channels=c)
    images, caps, _ = load_images(args, lm)
    x = images.to(model_device(lm.model))
    t0 = time.perf_counter()
    recs = [invert_learned(inv, lm.model, x, check=False) for inv in invs]
    dt = time.perf_counter() - t0
    recs = [r.detach().float().cpu().clamp(0, 1) for r in recs]
    if not is_main():  # one writer under torchrun (the work is one forward pass)
        return 0
    out = out_dir(args)
    images = images.float().cpu()
    for i in range(len(images)):
        row = torch.cat([images[i:i + 1]] + [r[i:i + 1] for r in recs])
        p = save_png(tile(row, ncol=len(layers) + 1, normalize=False),
                     out / f"invert_learned_input{i}.png", scale=upscale_for(h))
        mse = ", ".join(f"{l} {float((r[i] - images[i]).pow(2).mean()):.4f}"
                        for l, r in zip(layers, recs))
        say(f"{caps[i]}: original, then learned reconstructions from {', '.join(layers)} "
            f"(pixel MSE {mse}): wrote {p}")
    t = atomic_save({"layers": layers, "inverters": [str(f) for f in args.learned],
                     "images": images, "reconstructions": torch.stack(recs, 1)},
                    out / "invert_learned.pt")
    n = len(images) * len(invs)
    say(f"reconstructed {len(images)} images from {len(layers)} layer(s) with learned "
        f"inverters in {dt * 1e3:.0f} ms ({n / max(dt, 1e-9):.0f} reconstructions/s); "
        f"tensors (N, layers, C, H, W): wrote {t}")
    return 0
