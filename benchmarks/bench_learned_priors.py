#!/usr/bin/env python
"""Benchmark of the learned priors: up-convolutional inverters and the generator prior.

Network: the survey's example CNN (cifar_cnn's layout: [CONV 3x3 -> RELU -> POOL 2] x 3 with
16, 32, 64 filters -> FC 64 -> FC 10) written out as a plain ``nn.Sequential`` ("unfused")
and the same weights after ``cnnvis_ext.fuse`` ("fused": one conv+relu+pool op per block);
random weights, the bundled digits (32x32x3) as data. Inverted layer: the second block's
output (``5``, codes of 32x8x8), the same point in both models.

(i)   inverter training (``vis.train_inverter``), images/s (wall time of the call / images x
      epochs): the default pixel loss (the frozen model runs once over the data, its codes
      are cached), the pixel loss recomputing the codes every step (``cache_codes=False``),
      and the pixel+feature loss (every step also runs the model on the reconstruction and
      backpropagates through it). Fused against unfused frozen model. With cached codes the
      model runs only once; what difference remains comes from the codes' memory format (the
      fused conv+relu+pool op returns channels-last maps, so the decoder runs channels-last).
(ii)  reconstruction: ``vis.invert_learned`` (one forward pass, a batch of images) against
      ``vis.invert`` (Mahendran & Vedaldi, ``--invert-steps`` iterations on a batch), in
      images/s of each, on the fused and the unfused model. They do not reach the same
      quality: the pixel MSE of each against the originals is printed beside.
(iii) activation maximization of the 10 class logits in one batch: the generator prior
      (``param="generator"``, a code at layer 5 decoded by the inverter) against pixel
      space (``param="pixel"``, no transforms), steps/s.

Ratio column: the first row of each case ("ours") against the row, as throughput of ours /
throughput of the row (= the row's time / ours for the same work; > 1: ours is faster), all
measured in the same run, round-robin (one run of each variant per round, so that the load
of a shared machine hits all of them alike); medians of the rounds.

Usage:  python benchmarks/bench_learned_priors.py [--quick] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_median_ms, machine_line, table  # noqa: E402

import cnnvis_ext  # noqa: E402
from cnnvis_ext import vis  # noqa: E402
from cnnvis_ext.data import load_dataset  # noqa: E402

LAYER = "5"  # the pool of the second block: (32, 8, 8) codes


def plain_cifar_cnn(channels=(16, 32, 64), hidden=64, classes=10, size=32) -> nn.Sequential:
    """cifar_cnn's layout with separate Conv2d / ReLU / MaxPool2d modules (what fuse() takes)."""
    layers, c = [], 3
    for w in channels:
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    side = size // 2 ** len(channels)
    layers += [nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


def round_robin(fns, reps, device, warmup=True):
    """Median seconds of each ``fns[k]()``, timed round-robin (``_common.interleaved_median_ms``)."""
    ms = interleaved_median_ms(fns, device, warmup=1 if warmup else 0, reps=reps)
    return {k: v / 1e3 for k, v in ms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-size run: fewer images, steps, rounds")
    ap.add_argument("--device", default=os.environ.get("CNNVIS_DEVICE", "auto"),
                    help="cpu, cuda or auto (default: $CNNVIS_DEVICE or auto)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--invert-steps", type=int, help="iterations of vis.invert (default: 200, "
                    "the CLI's; --quick: 50)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev_s = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev_s)
    q = args.quick
    n_train, epochs, reps = (128, 1, 2) if q else (1438, 2, 5)
    n_rec, n_inv, inv_steps = (256, 2, args.invert_steps or 20) if q else (1024, 16, args.invert_steps or 200)
    am_steps = 8 if q else 64

    torch.manual_seed(0)
    plain = plain_cifar_cnn().to(device).eval()
    fused = cnnvis_ext.fuse(copy.deepcopy(plain)).eval()
    models = {"fused": fused, "unfused": plain}
    data = load_dataset()
    x_train = data.train_images[:n_train].to(device)
    x_test = data.test_images.to(device)
    x_rec = torch.cat([x_test] * (1 + n_rec // len(x_test)))[:n_rec]
    x_inv = x_test[:n_inv]
    print(f"# bench_learned_priors: {machine_line(device)}; cifar_cnn layout, random weights, "
          f"digits 32x32x3, layer {LAYER} (codes {tuple(fused[:6](x_test[:1]).shape[1:])}); "
          f"{reps} rounds, medians\n")
    with torch.no_grad():
        torch.testing.assert_close(fused(x_test[:8]), plain(x_test[:8]), rtol=1e-4, atol=1e-4)

    rows = []

    def add(case, variant, seconds, work, unit, ref=None, extra="-"):
        rate = work / seconds
        r = None if ref is None else ref / rate
        rows.append([case, variant, f"{seconds * 1e3:.1f}", f"{rate:,.1f} {unit}",
                     "-" if r is None else (f"{r:,.0f}x" if r >= 100 else f"{r:.2f}x"), extra])
        return rate

    # (i) inverter training ------------------------------------------------------------------
    train_variants = {
        "pixel loss, cached codes (default)": dict(loss="pixel"),
        "pixel loss, codes recomputed each step": dict(loss="pixel", cache_codes=False),
        "pixel+feature loss": dict(loss="pixel+feature"),
    }
    for model in models.values():  # one-time costs (kernel selection, allocator) before timing
        vis.train_inverter(model, LAYER, x_train[:64], epochs=1, loss="pixel+feature",
                           progress=False)
    for label, kw in train_variants.items():
        fns = {m: (lambda model=model: vis.train_inverter(model, LAYER, x_train, epochs=epochs,
                                                          batch_size=64, seed=0, progress=False,
                                                          **kw))
               for m, model in models.items()}
        t = round_robin(fns, reps, device, warmup=False)
        work = n_train * epochs
        ref = add(f"(i) train_inverter, {label}", "fused model (ours)", t["fused"], work, "images/s")
        add("", "unfused model", t["unfused"], work, "images/s", ref)

    # (ii) learned against optimization-based reconstruction -------------------------------
    inv = vis.train_inverter(fused, LAYER, x_train, epochs=epochs, batch_size=64, seed=0,
                             progress=False)
    fns = {f"learned {m}": (lambda model=model: vis.invert_learned(inv, model, x_rec, check=False))
           for m, model in models.items()}
    last = {}

    def run_invert(m, model):
        last[m] = vis.invert(model, LAYER, x_inv, steps=inv_steps, progress=False).images

    fns.update({f"invert {m}": (lambda m=m, model=model: run_invert(m, model))
                for m, model in models.items()})
    t = round_robin(fns, reps, device)
    mse_l = float((vis.invert_learned(inv, fused, x_inv) - x_inv).pow(2).mean())
    mse_o = float((last["fused"] - x_inv).pow(2).mean())
    case = f"(ii) reconstruction from layer {LAYER}"
    ref = add(case, f"invert_learned, batch of {n_rec}, fused (ours)", t["learned fused"], n_rec,
              "images/s", extra=f"{mse_l:.4f}")
    add("", f"invert_learned, batch of {n_rec}, unfused", t["learned unfused"], n_rec, "images/s", ref)
    add("", f"invert(), {inv_steps} steps, batch of {n_inv}, fused", t["invert fused"], n_inv,
        "images/s", ref, extra=f"{mse_o:.4f}")
    add("", f"invert(), {inv_steps} steps, batch of {n_inv}, unfused", t["invert unfused"], n_inv,
        "images/s", ref)

    # (iii) generator prior against pixel-space activation maximization --------------------
    objs = [vis.class_logit(c) for c in range(10)]
    fns = {
        "generator": lambda: vis.activation_maximization(fused, objs, generator=inv, steps=am_steps,
                                                         lr=0.05, progress=False),
        "pixel": lambda: vis.activation_maximization(fused, objs, param="pixel", transforms=None,
                                                     size=32, steps=am_steps, lr=0.05,
                                                     progress=False),
    }
    t = round_robin(fns, reps, device)
    case = f"(iii) actmax of 10 classes, one batch, {am_steps} steps"
    ref = add(case, f"generator prior (code at {LAYER}), fused (ours)", t["generator"], am_steps,
              "steps/s")
    add("", "pixel space, no transforms, fused", t["pixel"], am_steps, "steps/s", ref)

    print(table(["case", "variant", "median ms", "throughput", "ratio (ours / this)",
                 "pixel MSE"], rows))
    print("\nratio: throughput of the first row of the case (ours) / throughput of the row; > 1: "
          "ours is faster. (ii) compares one forward pass with an optimization that reaches another "
          f"quality (pixel MSE on {n_inv} test images; the inverter trained {epochs} epoch(s) on "
          f"{n_train} images). (iii): the generator prior pays for decoding its code every step.")


if __name__ == "__main__":
    main()
