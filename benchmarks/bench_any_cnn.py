#!/usr/bin/env python
"""Benchmark of the toolkit on networks that are not chains (torchvision, random weights).

Tables (median ms over interleaved rounds; ratio = baseline / ours, > 1: ours faster):

1. ``cnnvis_ext.fuse`` on resnet18, mobilenet_v2 and vgg16_bn: forward + backward with frozen
   parameters and the gradient with respect to the input (8 x 3 x 128 x 128 by default),
   fused against the model as it is (NCHW), the same in channels-last, and the conv-only
   bound: the same network with its BatchNorm and activation modules replaced by identities,
   channels-last (the cost of the convolutions alone; for resnet18 the target is the fused
   model within 1.10x of it). Also the bytes autograd saves for backward (parameters
   excluded), fused over eager.
2. deconvnet projections of 16 channels of resnet18's ``layer3`` for one 224 x 224 image:
   ``cnnvis_ext.vis.deconvnet`` (all units batched) against captum's NeuronDeconvolution run
   unit by unit (target: at least 3x).
3. LRP on resnet50 (224 x 224, one image): ``vis.lrp(rules="epsilon_plus_flat")`` against
   zennit's EpsilonPlusFlat with its ResNet canonizer, ms per image.

Needs torchvision; captum and zennit for tables 2 and 3 ("absent" otherwise).
Usage: python benchmarks/bench_any_cnn.py [--quick] [--threads N] [--reps N]
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, interleaved_median_ms, machine_line, ratio, table, zoo_model  # noqa: E402

import cnnvis_ext  # noqa: E402
from cnnvis_ext import vis  # noqa: E402
from cnnvis_ext.nn import ConvReLUPool2d  # noqa: E402


def _model(name):
    m = zoo_model(name)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _conv_only(model):
    """The network with every BatchNorm and ReLU-family module made an identity."""
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6)):
            parent, _, child = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, child, nn.Identity())
    return m


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward (parameters excluded): a map
    saved by two ops (a ReLU's output and the next convolution's input) counts once."""
    seen = {}

    def pack(t):
        if not isinstance(t, nn.Parameter) and t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def fuse_table(args):
    rows = []
    shape = (2, 3, 64, 64) if args.quick else (8, 3, 128, 128)
    for name in ["resnet18", "mobilenet_v2", "vgg16_bn"]:
        m = _model(name)
        fused = cnnvis_ext.fuse(m, inplace=False)
        n_fused = sum(isinstance(x, ConvReLUPool2d) for x in fused.modules())
        m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
        bound = _conv_only(m).to(memory_format=torch.channels_last)
        x = torch.randn(shape)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def step(model, inp):
            def run():
                xi = inp.detach().requires_grad_(True)
                model(xi).sum().backward()
            return run

        t = interleaved_median_ms({"fused": step(fused, x), "eager": step(m, x),
                                   "eager_cl": step(m_cl, x_cl), "bound": step(bound, x_cl)},
                                  warmup=1, reps=args.reps)
        sb_f = _saved_bytes(lambda: fused(x.detach().requires_grad_(True)))
        sb_e = _saved_bytes(lambda: m(x.detach().requires_grad_(True)))
        rows.append([f"{name} {tuple(shape)} ({n_fused} fused)", fmt(t["fused"]), fmt(t["eager"]),
                     ratio(t["eager"], t["fused"]), fmt(t["eager_cl"]),
                     ratio(t["eager_cl"], t["fused"]), fmt(t["bound"]),
                     f"{t['fused'] / t['bound']:.2f}x", f"{sb_f / 2**20:.1f} / {sb_e / 2**20:.1f}",
                     f"{sb_f / sb_e:.2f}x"])
    print("## fuse: forward + backward (input gradient, frozen parameters)\n")
    print(table(["model", "fused", "eager NCHW", "ratio", "eager CL", "ratio", "conv-only CL",
                 "fused / bound", "saved MiB fused / eager", "saved ratio"], rows))


def deconv_table(args):
    size = 64 if args.quick else 224
    m = _model("resnet18")
    x = torch.rand(1, 3, size, size)
    units = list(range(4 if args.quick else 16))
    fns = {"ours": lambda: vis.deconvnet(m, "layer3", x, units=units)}
    try:
        from captum.attr import NeuronDeconvolution

        nd = NeuronDeconvolution(m, m.layer3)

        def captum():
            for u in units:
                nd.attribute(x, neuron_selector=lambda o, u=u: o[:, u].flatten(1).max(1).values)
        fns["captum"] = captum
    except Exception as e:  # pragma: no cover - depends on the environment
        print(f"(captum absent: {type(e).__name__})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = interleaved_median_ms(fns, warmup=1, reps=max(3, args.reps // 2))
    print(f"\n## deconvnet: {len(units)} channels of resnet18 layer3, one {size}x{size} image\n")
    print(table(["ours (batched)", "captum NeuronDeconvolution (unit by unit)", "ratio"],
                [[fmt(t["ours"]), fmt(t.get("captum")), ratio(t.get("captum"), t["ours"])]]))


def lrp_table(args):
    size = 64 if args.quick else 224
    m = _model("resnet50")
    x = torch.rand(1, 3, size, size) * 2 - 1
    fns = {"ours": lambda: vis.lrp(m, x, 3, rules="epsilon_plus_flat")}
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer

        onehot = torch.zeros(1, 1000)
        onehot[0, 3] = 1

        def zennit():
            with Gradient(model=m, composite=EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as a:
                a(x, lambda out: out * onehot)
        fns["zennit"] = zennit
    except Exception as e:  # pragma: no cover
        print(f"(zennit absent: {type(e).__name__})")
    t = interleaved_median_ms(fns, warmup=1, reps=max(3, args.reps // 2))
    print(f"\n## LRP epsilon_plus_flat on resnet50, one {size}x{size} image (ms per image)\n")
    print(table(["ours", "zennit EpsilonPlusFlat", "ratio"],
                [[fmt(t["ours"]), fmt(t.get("zennit")), ratio(t.get("zennit"), t["ours"])]]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.reps = args.reps or (3 if args.quick else 10)
    print(f"# bench_any_cnn: {machine_line('cpu')}; torchvision models, random weights\n")
    fuse_table(args)
    deconv_table(args)
    lrp_table(args)


if __name__ == "__main__":
    main()
