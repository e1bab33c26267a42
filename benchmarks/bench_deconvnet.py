"""Benchmark of unpool_conv_transpose and of whole deconvnet projections.

Tables (median ms; ratio = baseline / ours, > 1 means ours is faster):
  1. the op against the eager composition (relu, max_unpool2d, conv_transpose2d), dense and
     one-hot inputs, at a CIFAR-size, a VGG-size and a large-image layer;
  2. projections of channels of the last conv layer of a VGG-11-shaped net (random weights)
     for one image: cnnvis_ext.deconvnet (all units batched) against the eager
     layer-by-layer projection run unit by unit, and captum's NeuronDeconvolution unit by
     unit when captum is importable ("absent" otherwise);
  3. all channels of that layer against one captum Deconvolution attribution.

Usage: python benchmarks/bench_deconvnet.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext import ops
from cnnvis_ext.vis import deconvnet

try:
    from captum.attr import Deconvolution, NeuronDeconvolution
except Exception:  # pragma: no cover
    Deconvolution = NeuronDeconvolution = None


def bench(fn, reps=5, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def bench_interleaved(fns, reps=7, warmup=1, minima=False):
    """Median ms of each function (and, with ``minima``, the fastest call's ms), the calls
    interleaved so that a noisy machine's slow phases hit every function alike."""
    for f in fns:
        for _ in range(warmup):
            f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for f, t in zip(fns, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    med = [statistics.median(t) * 1e3 for t in ts]
    return (med, [min(t) * 1e3 for t in ts]) if minima else med


def vgg11(width=1.0, classes=1000, image=224):
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            v = int(v * width)
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    feats = nn.Sequential(*layers)
    s = image // 32
    head = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 512), nn.ReLU(), nn.Linear(512, classes))
    return nn.Sequential(feats, head).eval()


def eager_projection(model_features, x, last, unit):
    """Zeiler-Fergus with stock ops: forward recording indices, then project one unit."""
    rec = []
    h = x
    mods = list(model_features)[: last + 1]
    for m in mods:
        if isinstance(m, nn.MaxPool2d):
            inp = h
            h, idx = F.max_pool2d(h, m.kernel_size, m.stride, return_indices=True)
            rec.append(("pool", idx, inp.shape[-2:]))
        elif isinstance(m, nn.Conv2d):
            rec.append(("conv", m, h.shape[-2:]))
            h = m(h)
        else:
            rec.append(("relu",))
            h = F.relu(h)
    flat = h[:, unit].flatten(1)
    pos = flat.argmax(1)
    top = torch.zeros_like(h)
    top[0, unit].view(-1)[pos] = flat.max(1).values
    v = top
    for r in reversed(rec):
        if r[0] == "pool":
            v = F.max_unpool2d(v, r[1], 2, 2, output_size=r[2])
        elif r[0] == "relu":
            v = F.relu(v)
        else:
            v = F.conv_transpose2d(v, r[1].weight, padding=1)
    return v


def table_op(quick):
    print("\n### unpool_conv_transpose vs eager (relu + max_unpool2d + conv_transpose2d)\n")
    print("| shape (N, C_out, H_p, W_p) -> C_in | input | ours (ms) | eager (ms) | ratio "
          "| ratio of minima |")
    print("|---|---|---|---|---|---|")
    shapes = [(8, 64, 16, 16, 32), (1, 512, 14, 14, 512), (1, 64, 112, 112, 3)]
    if quick:
        shapes = [(2, 32, 8, 8, 16), (1, 64, 14, 14, 64)]
    for n, c, ph, pw, ci in shapes:
        s = (ph * 2, pw * 2)
        x = torch.randn(n, ci, *s)
        w = torch.randn(c, ci, 3, 3) * 0.05
        out, sw = ops.conv_relu_pool(x, w, None, padding=1, pool_kernel=2)
        idx = ops.switches_to_indices(sw, s, 2)
        onehot = torch.zeros_like(out)
        onehot[0, c // 2, ph // 2, pw // 2] = 1.0
        for name, p in [("dense", out), ("one-hot", onehot)]:
            (ours, eager), (ours_min, eager_min) = bench_interleaved([
                lambda: ops.unpool_conv_transpose(p, sw, w, padding=1, output_size=s,
                                                  input_size=s),
                lambda: F.conv_transpose2d(F.max_unpool2d(F.relu(p), idx, 2, 2, output_size=s),
                                           w, padding=1)], reps=5 if quick else 25, minima=True)
            print(f"| ({n}, {c}, {ph}, {pw}) -> {ci} | {name} | {ours:.2f} | {eager:.2f} | "
                  f"{eager / ours:.2f} | {eager_min / ours_min:.2f} |")


def table_projection(quick):
    image = 64 if quick else 224
    width = 0.25 if quick else 1.0
    units = 4 if quick else 16
    torch.manual_seed(0)
    model = vgg11(width, image=image)
    feats = model[0]
    last = max(i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d))
    layer_relu = last + 1
    x = torch.randn(1, 3, image, image)
    fused = cnnvis_ext.fuse(vgg11(width, image=image))
    fused.load_state_dict(model.state_dict())
    chans = list(range(units))
    print(f"\n### projections, VGG-11-shaped (width {width}), one {image}x{image} image, "
          f"last conv layer (features.{layer_relu})\n")
    print("| task | ours (ms) | eager unit by unit (ms) | captum NeuronDeconvolution unit by unit (ms) "
          "| ratio eager/ours | ratio captum/ours |")
    print("|---|---|---|---|---|---|")
    ours = bench(lambda: deconvnet(fused, f"0.{layer_relu}", x, units=chans), reps=3)
    eager = bench(lambda: [eager_projection(feats, x, layer_relu, u) for u in chans], reps=3)
    if NeuronDeconvolution is not None:
        nd = NeuronDeconvolution(model, feats[layer_relu])
        a = feats[: layer_relu + 1](x)

        def run_captum():
            outs = []
            for u in chans:
                pos = int(a[0, u].flatten().argmax())
                outs.append(nd.attribute(x, neuron_selector=(u, pos // a.shape[3], pos % a.shape[3])))
            return outs
        cap = bench(run_captum, reps=3)
        cap_s, cap_r = f"{cap:.1f}", f"{cap / ours:.2f}"
    else:
        cap_s = cap_r = "absent"
    print(f"| {units} channels | {ours:.1f} | {eager:.1f} | {cap_s} | {eager / ours:.2f} | {cap_r} |")

    nall = feats[last].out_channels
    ours_all, ours_nocrop = bench_interleaved([
        lambda: deconvnet(fused, f"0.{layer_relu}", x),
        lambda: deconvnet(fused, f"0.{layer_relu}", x, crop=False)], reps=1, warmup=0)
    if Deconvolution is not None:
        dc = Deconvolution(model)
        x4 = torch.randn(4, 3, image, image)
        one = bench(lambda: dc.attribute(x4, target=3), reps=3)
        one_s, r = f"{one:.1f}", f"{ours_all / one:.2f}x"
    else:
        one_s = r = "absent"
    print(f"\nall {nall} channels of features.{layer_relu} for one image: ours {ours_all:.1f} ms "
          f"(without receptive-field cropping: {ours_nocrop:.1f} ms); "
          f"one captum Deconvolution attribution (4 images, one target): {one_s} ms; "
          f"ours / captum = {r} (target: < 10x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (CI)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="captum")
    warnings.filterwarnings("ignore", message=".*require gradients.*")
    warnings.filterwarnings("ignore", message=".*backward hooks.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"captum {'present' if Deconvolution is not None else 'absent'}")
    with torch.no_grad():
        table_op(args.quick)
    table_projection(args.quick)


if __name__ == "__main__":
    main()
