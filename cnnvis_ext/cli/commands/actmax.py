"""``cnnvis actmax``: activation maximization of classes, channels or objective specs, in one
batch; with ``--layers``/``--all-channels`` (or under torchrun) a resumable job that writes
one image per channel."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from ...distributed import JobDir, WorkUnit, get_world_size, layer_seed, offset_seed, run_units
from ...io import atomic_save, atomic_write_bytes
from ...report import save_png
from ...vis import objectives as O
from ..errors import CLIError
from ..figures import NEEDS_PRIOR, fname, out_dir, tile, upscale_for, view_actmax
from ..jobs import JOB_CHUNK, channel_runs, file_stamp, is_main, job_spec, say, split_names
from ..loading import (LoadedModel, check_layer, class_names, conv_layers, layer_channels,
                       load_inverter, model_context, model_device, needs_hooks, select_units)

HELP = "activation maximization of classes or channels (batched)"


def _objectives(args, lm: LoadedModel) -> Tuple[list, List[str]]:
    """The objectives of one batch and their names: ``--objective`` specs, the channels of
    ``--layer``, or the classes."""
    model = lm.model
    if args.objective:
        return [O.parse_objective(s) for s in args.objective], list(args.objective)
    if args.layer:
        needs_hooks(lm, "activation maximization of a layer")
        layer = check_layer(model, args.layer)
        units = select_units(args, layer_channels(model, layer, lm))
        return [O.channel(layer, u) for u in units], [f"{layer}:{u}" for u in units]
    with torch.no_grad():
        x = torch.zeros(1, lm.in_channels, lm.input_size, lm.input_size,
                        device=model_device(model))
        n_out = model(x).shape[-1]
    classes = list(args.classes) if args.classes else list(range(n_out))
    bad = [c for c in classes if not 0 <= c < n_out]
    if bad:
        raise CLIError(f"--classes: {bad[0]} is out of range (the model has {n_out} outputs)")
    names = class_names(lm, n_out)
    return [O.class_logit(c) for c in classes], [f"class {names[c]}" for c in classes]


def _spectrum(args):
    """``--spectrum`` as view_actmax takes it (checked: only with --param maco, a file that
    exists, or 'digits' / 'power')."""
    if args.spectrum is None:
        return None
    if args.param != "maco":
        raise CLIError("--spectrum: the magnitude of --param maco; add --param maco")
    if args.spectrum in ("digits", "power"):
        return args.spectrum
    if not Path(args.spectrum).is_file():
        raise CLIError(f"--spectrum: no such file {args.spectrum!r} (save one with "
                       "torch.save(cnnvis_ext.vis.image_spectrum(images), path))")
    return args.spectrum


def _param(args, lm: LoadedModel) -> Tuple[str, Optional[nn.Module], Any]:
    """``(param, generator, size)``: ``--prior`` loads the generator and fixes the size."""
    if not args.prior:
        if args.param == "generator":
            raise CLIError(NEEDS_PRIOR)
        return args.param or "fourier", None, args.size or lm.input_size
    if args.param not in (None, "generator"):
        raise CLIError(f"--param {args.param}: --prior optimizes a code of the generator, not "
                       "an image; drop --param")
    inv = load_inverter(args.prior, lm, "--prior")
    _, h, w = inv.image_shape
    if args.size and (args.size, args.size) != (h, w):
        raise CLIError(f"--size: the --prior generator makes {h}x{w} images; drop --size")
    return "generator", inv, (h, w) if h != w else h


def run(args) -> int:
    _, lm = model_context(args)
    if args.layers or args.all_channels or get_world_size() > 1:
        return _run_job(args, lm)
    objectives, names = _objectives(args, lm)
    param, gen, size = _param(args, lm)
    imgs = view_actmax(lm.model, objectives, size=size, steps=args.steps, lr=args.lr,
                       param=param, seed=args.seed, progress=not args.quiet,
                       batch_size=args.batch_size, generator=gen, spectrum=_spectrum(args))
    tag = fname(args.layer) if args.layer else ("objectives" if args.objective else "classes")
    if gen is not None:
        tag += f"_prior_{fname(gen.layer)}"
    p = save_png(tile(imgs, normalize=False), out_dir(args) / f"actmax_{tag}.png",
                 scale=upscale_for(imgs.shape[-1]))
    how = (f", through the generator prior of {gen.layer} ({Path(args.prior).name})"
           if gen is not None else "")
    say(f"activation maximization of {len(names)} objectives ({', '.join(names[:8])}"
        f"{', ...' if len(names) > 8 else ''}), {args.steps} steps{how}: wrote {p}")
    return 0


def _run_job(args, lm: LoadedModel) -> int:
    """``actmax --layers L1,L2 --all-channels``: one image per channel, resumable, split across
    ranks. Channel ``c`` of layer ``L`` gets the image that one batch of all channels of ``L``
    would give it with seed ``layer_seed(seed, L)``, whatever the ranks and the chunking."""
    needs_hooks(lm, "activation maximization of a layer")
    if args.objective or args.classes:
        raise CLIError("--layers/--all-channels (and torchrun) render channels of layers; "
                       "drop --objective/--classes")
    model = lm.model
    names = split_names(args.layers) or ([args.layer] if args.layer else conv_layers(model))
    if not names:
        raise CLIError("--layers: the model has no convolution layer; name layers with --layers")
    layers = [check_layer(model, l) for l in dict.fromkeys(names)]
    chunk = args.batch_size or JOB_CHUNK
    param, gen, size = _param(args, lm)
    units, per_layer = [], {}
    for layer in layers:
        c = layer_channels(model, layer, lm)
        chans = list(range(c)) if (args.all_channels or not args.units) else select_units(args, c)
        per_layer[layer] = chans
        for run_ in channel_runs(chans, chunk):
            units.append(WorkUnit(f"{layer}:{run_[0]}-{run_[-1]}", len(run_), (layer, run_)))
    out = out_dir(args)
    spectrum = _spectrum(args)
    spec = dict(job_spec(args, lm), layers=per_layer, steps=args.steps, lr=args.lr, size=size,
                param=param, chunk=chunk)
    if spectrum is not None:
        spec["spectrum"] = spectrum if spectrum in ("digits", "power") else file_stamp(spectrum)
    if gen is not None:
        spec["prior"] = file_stamp(args.prior)
    job = JobDir(out, "actmax", spec)

    def piece(layer: str, chans: List[int]) -> Path:
        return out / "actmax" / fname(layer) / f"c{chans[0]:04d}-{chans[-1]:04d}.pt"

    def compute(u):
        layer, chans = u.data
        seed = offset_seed(layer_seed(args.seed, layer), chans[0])
        return view_actmax(model, [O.channel(layer, c) for c in chans], size=size,
                           steps=args.steps, lr=args.lr, param=param, seed=seed,
                           progress=False, generator=gen, spectrum=spectrum).cpu()

    def write(u, imgs):
        layer, chans = u.data
        files = [atomic_save({"layer": layer, "channels": chans, "images": imgs},
                             piece(layer, chans))]
        for c, img in zip(chans, imgs):
            files.append(save_png(img, out / "actmax" / fname(layer) / f"c{c:04d}.png",
                                  scale=upscale_for(img.shape[-1])))
        return files

    run_units(units, compute, write, job, progress=not args.quiet,
              desc=f"actmax {len(units)} units", log=say)
    if not is_main():
        return 0
    side = f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"
    what = (f"generator parameterization ({Path(args.prior).name}, layer {gen.layer})"
            if gen is not None else f"{param} parameterization")
    lines = ["# activation maximization", "",
             f"seed {args.seed}, {args.steps} steps, lr {args.lr or 'default'}, {what}, "
             f"{side} images", "",
             "| layer | channels | grid | per channel |", "|---|---|---|---|"]
    for layer in layers:
        imgs = torch.cat([torch.load(piece(*u.data), weights_only=True)["images"]
                          for u in units if u.data[0] == layer])
        g = save_png(tile(imgs, normalize=False), out / f"actmax_{fname(layer)}.png",
                     scale=upscale_for(imgs.shape[-1]))
        lines.append(f"| {layer} | {len(per_layer[layer])} | {g.name} | "
                     f"actmax/{fname(layer)}/cNNNN.png |")
        say(f"{layer}: {len(per_layer[layer])} channels: wrote {g}")
    atomic_write_bytes(out / "actmax_report.md", ("\n".join(lines) + "\n").encode())
    job.mark_complete()
    say(f"activation maximization of {sum(u.size for u in units)} channels of "
        f"{len(layers)} layers: wrote {out / 'actmax_report.md'}")
    return 0
