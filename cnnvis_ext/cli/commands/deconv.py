"""``cnnvis deconv``: Zeiler & Fergus deconvnet projections, of the top-k activations of each
unit over the test set (a resumable job), or of the strongest activation in given images."""
from __future__ import annotations

from ...data import load_dataset
from ...distributed import JobDir, barrier, broadcast_object
from ...report import save_png
from ...vis import deconvnet
from ..figures import fname, out_dir, tile, upscale_for, view_deconv_top
from ..jobs import is_main, job_spec, say
from ..loading import (check_layer, default_conv_layer, layer_channels, load_images,
                       model_context, model_device, needs_hooks, select_units)

HELP = "deconvnet projections: top-k patches per unit, or of given images"
DESCRIPTION = ("Zeiler & Fergus deconvnet. Without --image/--index: scan the test set and draw, "
               "for each unit of --layer, its top-k input patches and their projections. With "
               "--image/--index: project each unit's strongest activation in those images.")


def run(args) -> int:
    _, lm = model_context(args)
    needs_hooks(lm, "deconv")
    model = lm.model
    layer = check_layer(model, args.layer) if args.layer else default_conv_layer(model, last=True)
    units = select_units(args, layer_channels(model, layer, lm))[: args.max_units]
    out = out_dir(args)
    if args.image or args.index:
        images, caps, _ = load_images(args, lm)
        rec = deconvnet(model, layer, images.to(model_device(model)), units=units)
        rec = rec.detach().float().cpu()
        rec = rec.reshape(len(images), len(units), *rec.shape[1:])
        for i in range(len(images)):
            p = save_png(tile(rec[i], normalize=True), out / f"deconv_input{i}_{fname(layer)}.png",
                         scale=upscale_for(lm.input_size))
            say(f"{caps[i]}: projections of the strongest activation of units "
                f"{units[0]}..{units[-1]} of {layer}: wrote {p}")
        return 0
    data = load_dataset(args.data, size=lm.input_size, channels=lm.in_channels,
                        progress=not args.quiet and is_main())
    spec = dict(job_spec(args, lm), layer=layer, units=units, top=args.top,
                data=str(args.data), n=len(data.test_images))
    job = JobDir(out, f"deconv_{fname(layer)}", spec)
    done = broadcast_object(sorted(job.load()) if is_main() else None)
    if all(f"unit{u}" in done for u in units):
        say(f"{job.path.name}: all {len(units)} units already written; nothing to do")
        return 0
    # every rank scans its share of the test set (top_activations merges them)
    grids = view_deconv_top(model, layer, data.test_images, k=args.top, units=units,
                            progress=not args.quiet)
    if is_main():
        for u, patches, projections in grids:
            p1 = save_png(patches, out / f"deconv_{fname(layer)}_unit{u}_patches.png", scale=4)
            p2 = save_png(projections, out / f"deconv_{fname(layer)}_unit{u}_projections.png",
                          scale=4)
            job.mark_done(f"unit{u}", [p1, p2])
            say(f"{layer} unit {u}: top-{args.top} patches {p1}, projections {p2}")
        job.mark_complete()
    barrier()
    return 0
