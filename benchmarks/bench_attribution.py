#!/usr/bin/env python
"""Benchmark of attribution beyond the first five (issue 19): resnet18 (weights=None).

Table 1: each method against its peer on the same work (median ms over interleaved rounds;
ratio = peer / ours, > 1: ours faster): the gradient CAMs, Score-CAM, Ablation-CAM and
Eigen-CAM against pytorch-grad-cam; Layer Grad-CAM and Guided Grad-CAM, integrated
gradients (equal steps and batching) and occlusion (captum's defaults, and equal batching)
against captum. Table 2: the maps of 10 targets per image in one call against 10
single-target calls of ours.

Full: 8 images of 224 x 224 (Score-CAM: 1 image; its 512 masked forward passes per image
make 8 images minutes per run on 2 cores). ``--quick``: 2 images of 64 x 64.
Usage: python benchmarks/bench_attribution.py [--quick] [--threads N] [--reps N]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, interleaved_median_ms, machine_line, ratio, table  # noqa: E402

from cnnvis_ext import vis  # noqa: E402


def _model():
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torchvision.models.resnet18(weights=None)
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False  # captum's hooks need it; the same model for every row
    return m.eval()


def _quiet(fn):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    return run


def peer_table(args, m, x, t):
    import tqdm  # noqa: F401  (pytorch-grad-cam's progress bars: silenced below)
    from captum.attr import GuidedGradCam, IntegratedGradients, LayerGradCam, Occlusion
    from pytorch_grad_cam import (AblationCAM, EigenCAM, GradCAMPlusPlus, HiResCAM, LayerCAM,
                                  ScoreCAM, XGradCAM)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import functools
    tqdm_mod = sys.modules["tqdm"]
    tqdm_mod.tqdm = functools.partial(tqdm_mod.tqdm, disable=True)

    layer = m.layer4
    tg = [ClassifierOutputTarget(int(c)) for c in t]
    rows = []

    def lib_cam(cls, xx, tt, **kw):
        obj = cls(model=m, target_layers=[layer], **kw)
        return lambda: obj(xx, tt)

    cases = [("Grad-CAM++", lambda: vis.grad_cam_pp(m, "layer4", x, t), lib_cam(GradCAMPlusPlus, x, tg)),
             ("XGrad-CAM", lambda: vis.xgrad_cam(m, "layer4", x, t), lib_cam(XGradCAM, x, tg)),
             ("LayerCAM", lambda: vis.layer_cam(m, "layer4", x, t), lib_cam(LayerCAM, x, tg)),
             ("HiResCAM", lambda: vis.hires_cam(m, "layer4", x, t), lib_cam(HiResCAM, x, tg)),
             ("Eigen-CAM", lambda: vis.eigen_cam(m, "layer4", x), lib_cam(EigenCAM, x, tg)),
             ("Ablation-CAM (batch 32 both)", lambda: vis.ablation_cam(m, "layer4", x, t, batch_size=32),
              lib_cam(AblationCAM, x, tg, batch_size=32)),
             # defaults: ours stacks 128 ablated copies after the layer (the prefix runs once
             # per stack), pytorch-grad-cam runs 32 ablated full forwards at a time
             ("Ablation-CAM (each at its default batch)",
              lambda: vis.ablation_cam(m, "layer4", x, t), lib_cam(AblationCAM, x, tg))]
    xs, ts = x[:1], t[:1]
    cases.append((f"Score-CAM ({xs.shape[0]} image, batch 16 both)",
                  lambda: vis.score_cam(m, "layer4", xs, ts, batch_size=16),
                  lib_cam(ScoreCAM, xs, tg[:1])))
    lgc, ggc = LayerGradCam(m, layer), GuidedGradCam(m, layer)
    cases += [("Layer Grad-CAM vs captum", lambda: vis.grad_cam(m, "layer4", x, t, upsample=False),
               lambda: lgc.attribute(x, target=t)),
              ("Guided Grad-CAM vs captum", lambda: vis.guided_grad_cam(m, "layer4", x, t),
               lambda: ggc.attribute(x, target=t, interpolate_mode="bilinear"))]
    ig = IntegratedGradients(m)
    steps = args.steps
    cases.append((f"IG {steps} steps, all in one batch",
                  lambda: vis.integrated_gradients(m, x, t, steps=steps, completeness=False),
                  lambda: ig.attribute(x, target=t, n_steps=steps)))
    # the same outputs: ours always reports the completeness error, captum when asked
    cases.append((f"IG {steps} steps, both with the completeness error",
                  lambda: vis.integrated_gradients(m, x, t, steps=steps),
                  lambda: ig.attribute(x, target=t, n_steps=steps,
                                       return_convergence_delta=True)))
    occ = Occlusion(m)
    w, s = args.window, args.window // 2
    ppe = 64
    cases.append((f"occlusion {w}/{s}: ours (batch 256) vs captum defaults (1 per eval)",
                  lambda: vis.occlusion(m, x, t, window=w, stride=s),
                  lambda: occ.attribute(x, (3, w, w), strides=(3, s, s), target=t)))
    cases.append((f"occlusion {w}/{s}: equal batching ({ppe} positions per eval)",
                  lambda: vis.occlusion(m, x, t, window=w, stride=s, batch_size=ppe * x.shape[0]),
                  lambda: occ.attribute(x, (3, w, w), strides=(3, s, s), target=t,
                                        perturbations_per_eval=ppe)))
    for name, ours, peer in cases:
        tm = interleaved_median_ms({"ours": _quiet(ours), "peer": _quiet(peer)}, warmup=1,
                                   reps=args.reps)
        rows.append([name, fmt(tm["ours"]), fmt(tm["peer"]), ratio(tm["peer"], tm["ours"])])
        print(f"  {name}: {rows[-1][1]} / {rows[-1][2]} ms", file=sys.stderr)
    print(f"## each method against its peer: resnet18, {x.shape[0]} x 3 x {x.shape[-1]} x "
          f"{x.shape[-1]}, target layer layer4\n")
    print(table(["method", "ours ms", "peer ms", "ratio"], rows))


def targets_table(args, m, x):
    tt = torch.arange(10).expand(x.shape[0], 10)
    rows = []
    cases = [("saliency", lambda t: vis.saliency(m, x, t)),
             ("Grad-CAM", lambda t: vis.grad_cam(m, "layer4", x, t)),
             ("LayerCAM", lambda t: vis.layer_cam(m, "layer4", x, t)),
             ("Grad-CAM++", lambda t: vis.grad_cam_pp(m, "layer4", x, t)),
             (f"IG {args.steps // 2} steps", lambda t: vis.integrated_gradients(m, x, t, steps=args.steps // 2))]
    for name, fn in cases:
        def one_pass(fn=fn):
            fn(tt)

        def ten_calls(fn=fn):
            for j in range(10):
                fn(tt[:, j])
        tm = interleaved_median_ms({"one": one_pass, "ten": ten_calls}, warmup=1, reps=args.reps)
        rows.append([name, fmt(tm["one"]), fmt(tm["ten"]), ratio(tm["ten"], tm["one"])])
        print(f"  {name}: {rows[-1][1]} / {rows[-1][2]} ms", file=sys.stderr)
    print(f"\n## 10 targets per image: one call (one forward, one batched backward) against 10 "
          f"single-target calls, {x.shape[0]} images\n")
    print(table(["method", "one call ms", "10 calls ms", "ratio"], rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.reps = args.reps or (2 if args.quick else 3)
    n, size = (2, 64) if args.quick else (8, 224)
    args.steps = 8 if args.quick else 32
    args.window = 16 if args.quick else 32
    m = _model()
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.arange(n) % 1000
    print(f"# bench_attribution: {machine_line('cpu')}; resnet18, random weights\n")
    peer_table(args, m, x, t)
    targets_table(args, m, x)


if __name__ == "__main__":
    main()
