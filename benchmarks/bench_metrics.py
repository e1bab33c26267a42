#!/usr/bin/env python
"""Benchmark of ``cnnvis_ext.metrics`` against Quantus 0.6.0 on the same work.

For each network (torchvision resnet18 with random weights and randomized BatchNorm statistics,
and the survey's ``cnnvis_ext.models.cifar_cnn()``, random weights) and 16 images, one table:
median ms of ours and of Quantus's metric with the same settings, and the ratio (Quantus / ours,
> 1: ours faster), timed round-robin. The maps come from ``vis.saliency``; where a metric
explains (max-sensitivity, MPRT, random logit) Quantus is given the same method as its
``explain_func`` (numpy in and out), and both are given the maps of the targets (Quantus's
``a_batch``, our ``maps=``), so both sides explain the same images and the ratio is the metric's
own machinery. The pairs (their agreement is checked in tests/metrics/test_quantus.py):

* region perturbation: ``region_perturbation(baseline="black", score="probability")`` /
  ``RegionPerturbation(order="morf", perturb_baseline="black")``;
* deletion curve: ``deletion_insertion(baseline="black", curves="deletion")`` /
  ``PixelFlipping`` with the same number of steps;
* faithfulness correlation: ``faithfulness_correlation(features="values", baseline="black")``
  / ``FaithfulnessCorrelation`` (both draw their own subsets: the same amount of work);
* max-sensitivity: ``max_sensitivity`` / ``MaxSensitivity`` (uniform noise, same radius);
* MPRT: ``model_randomization(randomize=<Quantus's reset_parameters>)`` over Quantus's layers /
  ``MPRT`` (cascading, Spearman);
* random logit: ``random_logit(similarity=spearman)`` / ``RandomLogit(similarity_func=
  correlation_spearman)``; and each one's default similarity (ours: 2-D SSIM; Quantus:
  skimage's SSIM of the flattened maps, one image at a time);
* transferability and plausibility: no Quantus counterpart (ours only).

Usage: python benchmarks/bench_metrics.py [--quick] [--threads N] [--reps N] [--size PX]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (fmt, interleaved_median_ms, machine_line, median_ms, ratio, table,  # noqa: E402
                     zoo_model)

from cnnvis_ext import metrics as M  # noqa: E402
from cnnvis_ext import vis  # noqa: E402
from cnnvis_ext.models import cifar_cnn  # noqa: E402

QUIET = dict(disable_warnings=True, display_progressbar=False)


def _resnet18():
    return zoo_model("resnet18")


def _cifar():
    torch.manual_seed(0)
    return cifar_cnn().eval()


def _saliency(model, x, t):
    return vis.saliency(model, x, t)


def _quantus_explain(model, inputs, targets, **kwargs):
    """Quantus's ``explain_func``: the same saliency, numpy in and out."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    return vis.saliency(model, x, torch.as_tensor(np.asarray(targets)).long()).numpy()


def _reset(module, index):
    """What Quantus's MPRT does to each layer (seed 42)."""
    torch.manual_seed(43)
    module.reset_parameters()


def bench_model(name, model, size, n, args):
    import quantus
    from quantus.functions.similarity_func import correlation_spearman

    g = torch.Generator().manual_seed(2)
    x = torch.rand(n, 3, size, size, generator=g)
    classes = model(x[:1]).shape[1]
    t = torch.arange(n) % classes
    a = vis.saliency(model, x, t)
    xn, tn, an = x.numpy(), t.numpy(), a.numpy()
    q = args.quick
    steps, patch = (4, 8) if q else (16, 8)
    runs, samples = (8, 3) if q else (50, 10)
    subset = min(224, size * size // 4)
    layers = [k for k, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]

    qrp = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=steps, order="morf",
                                     perturb_baseline="black", normalise=False, abs=False, **QUIET)
    # PixelFlipping runs through all C*H*W values, features_in_step at a time, and wants it to
    # divide H*W: 3k steps of H*W/k values (k a power of two for these sizes)
    k = 1 if q else 8
    flips = 3 * k
    qpf = quantus.PixelFlipping(features_in_step=size * size // k, perturb_baseline="black",
                                normalise=False, abs=False, **QUIET)
    qfc = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=subset, perturb_baseline="black",
                                          normalise=False, abs=False, return_aggregate=False, **QUIET)
    qms = quantus.MaxSensitivity(nr_samples=samples, lower_bound=0.02, normalise=False, abs=False,
                                 **QUIET)
    qmprt = quantus.MPRT(seed=42, layer_order="top_down", abs=True, normalise=True,
                         return_aggregate=False, **QUIET)
    qrl = quantus.RandomLogit(num_classes=classes, seed=42, similarity_func=correlation_spearman,
                              normalise=False, abs=False, **QUIET)
    qrl_ssim = quantus.RandomLogit(num_classes=classes, seed=42, normalise=False, abs=False, **QUIET)
    common = dict(model=model, x_batch=xn, y_batch=tn, device="cpu")

    pairs = [
        (f"region perturbation ({steps} regions of {patch}x{patch})",
         lambda: M.region_perturbation(model, x, a, t, patch_size=patch, regions=steps,
                                       baseline="black", score="probability"),
         lambda: qrp(a_batch=an, softmax=True, **common)),
        (f"deletion curve / PixelFlipping ({flips} steps)",
         lambda: M.deletion_insertion(model, x, a, t, steps=flips, baseline="black",
                                      curves="deletion"),
         lambda: qpf(a_batch=an, softmax=True, **common)),
        (f"faithfulness correlation ({runs} runs of {subset} values)",
         lambda: M.faithfulness_correlation(model, x, a, t, subset_size=subset, runs=runs,
                                            features="values", baseline="black"),
         lambda: qfc(a_batch=an, **common)),
        (f"max-sensitivity ({samples} samples)",
         lambda: M.max_sensitivity(model, x, t, _saliency, samples=samples, radius=0.02,
                                   maps=a),
         lambda: qms(a_batch=an, explain_func=_quantus_explain, **common)),
        (f"MPRT cascade ({len(layers)} layers)",
         lambda: M.model_randomization(model, x, t, _saliency, layers=layers, randomize=_reset,
                                       maps=a),
         lambda: qmprt(a_batch=an, explain_func=_quantus_explain, **common)),
        ("random logit (Spearman both)",
         lambda: M.random_logit(model, x, t, _saliency, classes, similarity=M.spearman, maps=a),
         lambda: qrl(a_batch=an, explain_func=_quantus_explain, **common)),
        ("random logit (default SSIM each)",
         lambda: M.random_logit(model, x, t, _saliency, classes, maps=a),
         lambda: qrl_ssim(a_batch=an, explain_func=_quantus_explain, **common)),
    ]
    rows = []
    for label, ours, theirs in pairs:
        if args.only and args.only not in label:
            continue
        reps = 1 if ("MPRT" in label and name == "resnet18") else args.reps
        ms = interleaved_median_ms({"ours": ours, "quantus": theirs}, warmup=1, reps=reps)
        rows.append([label, fmt(ms["ours"]), fmt(ms["quantus"]), ratio(ms["quantus"], ms["ours"])])
        print(f"  {name}: {label}: {ms['ours']:.1f} / {ms['quantus']:.1f} ms", file=sys.stderr)
    if not args.only:
        real = torch.rand(4 * n, 3, size, size, generator=g)
        labels = torch.arange(4 * n) % classes
        layer = "avgpool" if name == "resnet18" else "fc1"
        rows.append(["transferability (no Quantus counterpart)",
                     fmt(median_ms(lambda: M.transferability(x, t, model), warmup=1,
                                   reps=args.reps)), "-", "-"])
        rows.append([f"plausibility vs {4 * n} real images (no Quantus counterpart)",
                     fmt(median_ms(lambda: M.plausibility(x, t, real, labels, model, layer),
                                   warmup=1, reps=args.reps)), "-", "-"])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 images, fewer steps, 1 rep (CI)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--size", type=int, default=64, help="resnet18 image size (default 64)")
    ap.add_argument("--only", default="", help="run the metrics whose label contains this")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.reps = args.reps or (1 if args.quick else 3)
    n = 4 if args.quick else 16
    import quantus

    print(f"# bench_metrics: {machine_line('cpu')}; quantus {quantus.__version__}; {n} images, "
          f"random weights; median ms of {args.reps} round-robin reps (MPRT on resnet18: 1)\n")
    for name, make, size in [("resnet18", _resnet18, args.size), ("cifar_cnn", _cifar, 32)]:
        model = make()
        for p in model.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = bench_model(name, model, size, n, args)
        print(f"## {name}, {n} x 3 x {size} x {size}\n")
        print(table(["metric", "ours ms", "Quantus ms", "ratio"], rows))
        print()


if __name__ == "__main__":
    main()
