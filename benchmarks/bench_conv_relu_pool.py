"""Benchmark: fused conv+ReLU+max-pool against the eager and compiled compositions.

Prints, per shape, the median time of the fused op (inputs in NCHW, as users
pass them; any layout conversion inside the op is counted) beside
  * eager NCHW:            conv2d -> relu -> max_pool2d(return_indices=True)
  * eager channels-last:   the same with x and weight already channels-last
  * torch.compile:         the composition compiled by inductor (NCHW inputs)
with ratios (baseline / ours, > 1 means we are faster) for the forward and for
forward+backward, and the bytes autograd saves for backward beyond x, weight
and bias. Run: python benchmarks/bench_conv_relu_pool.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt, interleaved_median_ms, machine_line, ratio, table  # noqa: E402

import cnnvis_ext  # noqa: E402
from cnnvis_ext.ops import conv_relu_pool  # noqa: E402

# name: (N, C_in, C_out, H, k, pad, x_requires_grad)
SHAPES = {
    "a": (64, 3, 32, 32, 5, 2, False),
    "b": (64, 32, 64, 16, 5, 2, True),
    "c": (8, 64, 128, 56, 3, 1, True),
    "d": (1, 3, 64, 224, 3, 1, False),
}
QUICK = {
    "a": (8, 3, 16, 32, 5, 2, False),
    "b": (8, 16, 32, 16, 5, 2, True),
}


def composition(x, w, b, pad):
    y = F.relu(F.conv2d(x, w, b, padding=pad))
    return F.max_pool2d(y, 2, 2, return_indices=True)


def fused(x, w, b, pad):
    return conv_relu_pool(x, w, b, padding=pad, pool_kernel=2)


def saved_bytes(fn, x, w, b) -> int:
    keep = {x.data_ptr(), w.data_ptr(), b.data_ptr()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in keep:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repetitions (CI)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dtype = torch.float32
    shapes = QUICK if args.quick else SHAPES
    reps = args.reps or (3 if args.quick else 21)
    print(f"# conv_relu_pool benchmark ({machine_line(dev)}, cnnvis_ext {cnnvis_ext.__version__})")
    print("median ms (variants timed round-robin); ratio = baseline / ours (> 1: ours faster); "
          "2x2 pooling, stride 1 conv\n")

    fwd_rows, bwd_rows, mem_rows = [], [], []
    bwd_ratios_nchw = []
    for name, (n, cin, cout, h, k, pad, xgrad) in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(n, cin, h, h, device=dev, dtype=dtype)
        w = torch.randn(cout, cin, k, k, device=dev, dtype=dtype) * 0.1
        b = torch.randn(cout, device=dev, dtype=dtype) * 0.1
        x_cl = x.contiguous(memory_format=torch.channels_last)
        w_cl = w.contiguous(memory_format=torch.channels_last)
        comp = None if args.no_compile else torch.compile(composition)
        label = f"{name}: N={n} {cin}->{cout} {h}x{h} k{k}"

        fwd = {"ours": lambda: fused(x, w, b, pad), "nchw": lambda: composition(x, w, b, pad),
               "cl": lambda: composition(x_cl, w_cl, b, pad)}
        if comp is not None:
            fwd["comp"] = lambda: comp(x, w, b, pad)
        with torch.no_grad():
            t = interleaved_median_ms(fwd, dev, reps=reps)
        t_ours, t_nchw, t_cl, t_comp = t["ours"], t["nchw"], t["cl"], t.get("comp")
        fwd_rows.append([label, fmt(t_ours), fmt(t_nchw), ratio(t_nchw, t_ours), fmt(t_cl),
                         ratio(t_cl, t_ours), fmt(t_comp), ratio(t_comp, t_ours)])

        def train_step(fn, xx, ww, bb):
            xx = xx.detach().requires_grad_(xgrad)
            ww = ww.detach().requires_grad_()
            bb = bb.detach().requires_grad_()
            out = fn(xx, ww, bb, pad)[0]
            out.backward(torch.ones_like(out))

        comp_train = None if args.no_compile else torch.compile(composition)
        train = {"ours": lambda: train_step(fused, x, w, b),
                 "nchw": lambda: train_step(composition, x, w, b),
                 "cl": lambda: train_step(composition, x_cl, w_cl, b)}
        if comp_train is not None:
            train["comp"] = lambda: train_step(comp_train, x, w, b)
        t = interleaved_median_ms(train, dev, reps=reps)
        t_ours_b, t_nchw_b, t_cl_b, t_comp_b = t["ours"], t["nchw"], t["cl"], t.get("comp")
        bwd_ratios_nchw.append(t_nchw_b / t_ours_b)
        bwd_rows.append([label + (" (x.grad)" if xgrad else ""), fmt(t_ours_b), fmt(t_nchw_b),
                         ratio(t_nchw_b, t_ours_b), fmt(t_cl_b), ratio(t_cl_b, t_ours_b),
                         fmt(t_comp_b), ratio(t_comp_b, t_ours_b)])

        xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
        m_ours = saved_bytes(lambda: fused(xs, ws, bs, pad), xs, ws, bs)
        m_eager = saved_bytes(lambda: composition(xs, ws, bs, pad), xs, ws, bs)
        mem_rows.append([label, f"{m_ours / 2**20:.2f}", f"{m_eager / 2**20:.2f}",
                         f"{m_ours / max(m_eager, 1):.3f}x"])

    heads = ["shape", "ours", "eager NCHW", "ratio", "eager CL", "ratio", "compile", "ratio"]
    print("## forward (no grad)\n")
    print(table(heads, fwd_rows))
    print("\n## forward + backward (grads of weight, bias, and x where marked)\n")
    print(table(heads, bwd_rows))
    print(f"\nmedian fwd+bwd ratio vs eager NCHW over shapes: "
          f"{statistics.median(bwd_ratios_nchw):.2f}x")
    print("\n## bytes autograd saves for backward beyond x, weight, bias (MiB)\n")
    print(table(["shape", "ours", "eager", "ours/eager"], mem_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
