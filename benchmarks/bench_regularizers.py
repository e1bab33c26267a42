#!/usr/bin/env python
"""Benchmark of the regularizer ops: total_variation_and_grad, gaussian_blur, regularize_.

Each table row is one configuration; every baseline is measured in the same
run and printed as ``median ms (baseline / ours)``; a ratio above 1 means the
extension is faster. The last column is the extension's distance from the
memory-bandwidth bound: the bytes the op must move (read x, write the result;
regularize_ also reads grad) divided by the copy bandwidth measured at the
start of the run (``x.clone()``), so ``2.0x`` means twice the bound.

Baselines:
  TV        eager autograd formula (cnnvis_ext.ops.reference.total_variation),
            torch.compile of it, kornia.losses.total_variation (L1, when importable)
  blur      kornia.filters.gaussian_blur2d, torchvision gaussian_blur (when
            importable), eager separable depthwise conv2d in NCHW and in
            channels-last, torch.compile of it
  regularize_  the eager step sequence (one op per part, torch.quantile)

Usage:  python benchmarks/bench_regularizers.py [--quick] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import cnnvis_ext
from cnnvis_ext.ops import reference as R
from cnnvis_ext import ops

try:
    import kornia
except Exception:  # noqa: BLE001  (absent or broken beside this torch)
    kornia = None
try:
    import torchvision.transforms.functional as TF
except Exception:  # noqa: BLE001
    TF = None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


STAT = "median"  # or "min" (--stat): on a shared, oversubscribed machine the
                 # median measures the scheduler; the minimum is the op's cost


def bench(fn, device, warmup=3, min_runs=5, budget_s=1.5, stat=None):
    """Median (or minimum, see --stat) wall time of fn() in ms (synchronizing CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times) if (stat or STAT) == "min" else statistics.median(times)


def copy_bandwidth(device, dtype):
    x = torch.randn(16 * 3 * 224 * 224, device=device, dtype=dtype)
    ms = bench(lambda: x.clone(), device, budget_s=1.0, stat="min")  # a hardware bound: best case
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)  # bytes / s


def cell(base_ms, ours_ms):
    if base_ms is None:
        return "absent"
    if isinstance(base_ms, str):
        return base_ms
    return f"{base_ms:.2f} ({base_ms / ours_ms:.1f}x)"


def try_ms(fn, device):
    try:
        return bench(fn, device)
    except Exception as e:  # noqa: BLE001  (a baseline that fails is reported, not fatal)
        return f"failed: {type(e).__name__}"


def print_table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def bench_tv(shapes, device, dtype, bw):
    def eager_value_grad(x, beta, mode):
        xr = x.detach().requires_grad_()
        v = R.total_variation(xr, beta, 1e-8, "sum", mode)
        (g,) = torch.autograd.grad(v, xr)
        return v, g

    compiled_tv = torch.compile(R.total_variation)

    def compiled_value_grad(x, beta, mode):
        xr = x.detach().requires_grad_()
        v = compiled_tv(xr, beta, 1e-8, "sum", mode)
        (g,) = torch.autograd.grad(v, xr)
        return v, g

    def kornia_value_grad(x):
        xr = x.detach().requires_grad_()
        v = kornia.losses.total_variation(xr, reduction="sum").sum()
        (g,) = torch.autograd.grad(v, xr)
        return v, g

    def ours_autograd(x, beta, mode, weight):
        xr = x.detach().requires_grad_()
        v = ops.total_variation(xr, beta, 1e-8, "sum", mode)
        (g,) = torch.autograd.grad(v if weight == 1 else weight * v, xr)
        return v, g

    rows, through = [], []
    for shape in shapes:
        x = torch.randn(shape, device=device, dtype=dtype)
        bound = 2 * x.numel() * x.element_size() / bw * 1e3
        for label, beta, mode in [("beta=2", 2.0, "isotropic"), ("beta=1", 1.0, "isotropic"),
                                  ("beta=1.5", 1.5, "isotropic"), ("anisotropic", 2.0, "anisotropic")]:
            ours = bench(lambda: ops.total_variation_and_grad(x, beta, 1e-8, "sum", mode), device)
            eager = try_ms(lambda: eager_value_grad(x, beta, mode), device)
            comp = try_ms(lambda: compiled_value_grad(x, beta, mode), device)
            korn = try_ms(lambda: kornia_value_grad(x), device) if kornia is not None else None
            rows.append([str(tuple(shape)), label, f"{ours:.2f}", cell(eager, ours), cell(comp, ours),
                         cell(korn, ours), f"{bound:.2f} ({ours / bound:.1f}x)"])
            auto1 = bench(lambda: ours_autograd(x, beta, mode, 1.0), device)
            autow = bench(lambda: ours_autograd(x, beta, mode, -0.3), device)
            through.append([str(tuple(shape)), label, f"{ours:.2f}", f"{auto1:.2f} ({auto1 / ours:.2f}x)",
                            f"{autow:.2f} ({autow / ours:.2f}x)", cell(eager, autow)])
    print_table(f"total_variation_and_grad (value + gradient), {STAT} ms (baseline / ours)",
                ["shape", "TV", "ours", "eager autograd", "torch.compile", "kornia L1 TV",
                 "bound (ours / bound)"], rows)
    print_table(f"total_variation through autograd (value + backward) against total_variation_and_grad, "
                f"{STAT} ms (ours through autograd / and_grad; eager autograd / ours)",
                ["shape", "TV", "and_grad", "autograd, loss = tv", "autograd, loss = -0.3 tv",
                 "eager autograd / ours"], through)


def bench_blur(shapes, device, dtype, bw, sigmas):
    def separable(x, sigma, k):
        return R.gaussian_blur_separable(x, sigma, k)

    compiled_sep = torch.compile(separable)
    rows = []
    for shape in shapes:
        x = torch.randn(shape, device=device, dtype=dtype)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        bound = 2 * x.numel() * x.element_size() / bw * 1e3
        for sigma in sigmas:
            k = ops.gaussian_blur_kernel_size(sigma)
            ours = bench(lambda: ops.gaussian_blur(x, sigma, k), device)
            korn = (try_ms(lambda: kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma),
                                                                  border_type="reflect"), device)
                    if kornia is not None else None)
            tvis = (try_ms(lambda: TF.gaussian_blur(x, [k, k], [sigma, sigma]), device)
                    if TF is not None else None)
            nchw = try_ms(lambda: separable(x, sigma, k), device)
            nhwc = try_ms(lambda: separable(x_cl, sigma, k), device)
            comp = try_ms(lambda: compiled_sep(x, sigma, k), device)
            fastest = min([v for v in (korn, tvis, nchw, nhwc, comp) if isinstance(v, float)],
                          default=float("nan"))
            rows.append([str(tuple(shape)), f"{sigma} (k={k})", f"{ours:.2f}", cell(korn, ours),
                         cell(tvis, ours), cell(nchw, ours), cell(nhwc, ours), cell(comp, ours),
                         f"{fastest / ours:.1f}x", f"{bound:.2f} ({ours / bound:.1f}x)"])
    print_table(f"gaussian_blur, {STAT} ms (baseline / ours)",
                ["shape", "sigma", "ours", "kornia", "torchvision", "eager sep. NCHW",
                 "eager sep. channels-last", "torch.compile sep.", "vs fastest",
                 "bound (ours / bound)"], rows)
    print_table(f"total_variation through autograd (value + backward) against total_variation_and_grad, "
                f"{STAT} ms (ours through autograd / and_grad; eager autograd / ours)",
                ["shape", "TV", "and_grad", "autograd, loss = tv", "autograd, loss = -0.3 tv",
                 "eager autograd / ours"], through)


def eager_regularize_(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi):
    """The step sequence one would write in eager PyTorch (one op per part): the reference
    step with the separable two-convolution blur."""
    return R.regularize_(x, grad, lr, decay, blur_sigma, norm_pct, contrib_pct, lo, hi,
                         blur=lambda t, s: R.gaussian_blur_separable(
                             t, s, ops.gaussian_blur_kernel_size(s)))


def bench_regularize(shapes, device, dtype, bw):
    configs = [
        ("step+decay+clamp", dict(lr=0.1, decay=1e-3, blur_sigma=0.0, norm_pct=0.0, contrib_pct=0.0,
                                  lo=-1.0, hi=1.0)),
        ("+ norm/contrib clip 10%", dict(lr=0.1, decay=1e-3, blur_sigma=0.0, norm_pct=10.0,
                                         contrib_pct=10.0, lo=-1.0, hi=1.0)),
        ("+ blur 0.5 + clips", dict(lr=0.1, decay=1e-3, blur_sigma=0.5, norm_pct=10.0,
                                    contrib_pct=10.0, lo=-1.0, hi=1.0)),
    ]
    rows = []
    for shape in shapes:
        x0 = torch.randn(shape, device=device, dtype=dtype)
        g = torch.randn_like(x0)
        bound = 3 * x0.numel() * x0.element_size() / bw * 1e3
        for label, kw in configs:
            x = x0.clone()
            ours = bench(lambda: ops.regularize_(x, g, **kw), device)
            y = x0.clone()
            if x0.numel() // x0.shape[0] * x0.shape[0] // x0.shape[1] > 2 ** 24 and kw["norm_pct"]:
                eager = "torch.quantile: input too large"
            else:
                eager = try_ms(lambda: eager_regularize_(y, g, **kw), device)
            rows.append([str(tuple(shape)), label, f"{ours:.2f}", cell(eager, ours),
                         f"{bound:.2f} ({ours / bound:.1f}x)"])
    print_table(f"regularize_ (in place), {STAT} ms (baseline / ours)",
                ["shape", "parts", "ours", "eager sequence", "bound (ours / bound)"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, for CI")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    ap.add_argument("--only", choices=["tv", "blur", "regularize"], default=None)
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="statistic over the timed runs (default median)")
    args = ap.parse_args()
    global STAT
    STAT = args.stat
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32
    shapes = [(4, 3, 64, 64), (1, 3, 256, 256)] if args.quick else [(16, 3, 224, 224), (1, 3, 1024, 1024)]
    bw = copy_bandwidth(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"# cnnvis_ext {cnnvis_ext.__version__} regularizers on {name}; torch {torch.__version__}; "
          f"kornia {'absent' if kornia is None else kornia.__version__}; "
          f"torchvision {'absent' if TF is None else 'present'}; "
          f"copy bandwidth {bw / 1e9:.1f} GB/s; float32; {STAT} ms over the timed runs")
    if args.only in (None, "tv"):
        bench_tv(shapes, device, dtype, bw)
    if args.only in (None, "blur"):
        bench_blur(shapes, device, dtype, bw, [0.5, 1.0, 2.0])
    if args.only in (None, "regularize"):
        bench_regularize(shapes, device, dtype, bw)


if __name__ == "__main__":
    main()
