"""Feature-visualization quality and speed: every parameterization on the demo's networks, and
MACO batched against horama's MACO run objective by objective.

Part 1 (quality). The survey's network (cifar_cnn) and the residual network (residual_cnn) are
trained on the bundled digits (32 px), independently. For each parameterization (pixel,
Fourier, MACO with the training images' spectrum, the generator prior of an inverter trained at
conv3) one image per class is made for the survey's network; the table gives the class logit reached after 64 and after 256 steps
(mean over the classes), the transferability of the 256-step images to the residual network
(the share it classifies as their class), their plausibility in its penultimate layer (own-class
minus other-class cosine similarity to real images' class centroids), and seconds per image.
A second table compares them with multifaceted visualization on channels of conv3 (it needs a
feature map, so it has no class images): the activation reached and seconds per image.

Part 2 (speed). MACO for 16 channels of conv2, in one batch, against horama 0.3's ``maco``
called once per channel, with the same spectrum (written where horama looks for its download,
so it downloads nothing), the same image size and steps. horama takes at least 2 crops per step
(with 1 its squeeze drops the batch dimension), ours one jittered image per objective per step,
so the table gives the ratio per step and per model input (halved). Ratio = horama / ours.

Run: python benchmarks/bench_feature_vis.py [--quick] (needs torchvision and horama for part 2;
without them part 2 says so and is skipped).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import cnnvis_ext
from cnnvis_ext import metrics, vis
from cnnvis_ext.data import load_dataset
from cnnvis_ext.models import cifar_cnn, residual_cnn
from cnnvis_ext.train import TrainConfig, evaluate, train


def _train(model, data, epochs, seed):
    train(model, data, TrainConfig(epochs=epochs, seed=seed), progress=False, log=None)
    return model.eval()


def _quality(model, other, data, steps, params, log):
    classes = list(range(data.num_classes))
    objs = [vis.class_logit(c) for c in classes]
    rows = []
    for name, make in params:
        t0 = time.perf_counter()
        res = make(objs, steps[-1])
        secs = (time.perf_counter() - t0) / len(objs)
        images, values = res
        reached = [values[s - 1].mean().item() for s in steps]
        tr = metrics.transferability(images, classes, other).item()
        pl = metrics.plausibility(images, classes, data.test_images, data.test_labels, other,
                                  "pool").score.mean().item()
        rows.append([name] + [f"{v:.2f}" for v in reached] + [f"{tr:.2f}", f"{pl:+.3f}",
                                                              f"{secs:.2f}"])
        log(f"  {name}: done in {secs * len(objs):.1f} s")
    return rows


def _print(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def part1(args):
    data = load_dataset(size=32)
    epochs = 2 if args.quick else 8
    model = _train(cifar_cnn(num_classes=data.num_classes), data, epochs, 0)
    other = _train(residual_cnn(num_classes=data.num_classes), data, epochs, 1)
    acc = (evaluate(model, data.test_images, data.test_labels),
           evaluate(other, data.test_images, data.test_labels))
    steps = [16, 32] if args.quick else [64, 256]
    spectrum = vis.image_spectrum(data.train_images)
    color = vis.color_correlation(data.train_images)
    inv_epochs = 1 if args.quick else 6
    inverter = vis.train_inverter(model, "conv3", data.train_images, epochs=inv_epochs,
                                  progress=False)

    def am(**kw):
        return lambda objs, n: tuple(vis.activation_maximization(model, objs, size=32, steps=n,
                                                                  progress=False, **kw))

    params = [("pixel", am(param="pixel")), ("fourier (default)", am(param="fourier")),
              ("fourier, data colours", am(param="fourier", decorrelate=color)),
              ("maco, data spectrum", lambda objs, n: tuple(vis.maco_fv(
                  model, objs, spectrum=spectrum, color=color, size=32, steps=n,
                  progress=False))[:2]),
              ("maco, 1/f", lambda objs, n: tuple(vis.maco_fv(model, objs, size=32, steps=n,
                                                               progress=False))[:2]),
              ("generator prior (conv3)", am(generator=inverter))]
    print(f"# survey net test accuracy {acc[0]:.3f}, residual net {acc[1]:.3f} "
          f"({epochs} epochs each)")
    rows = _quality(model, other, data, steps, params, log=lambda s: print("#" + s))
    _print(f"Feature visualization quality on the survey's network (class logits, {len(rows)} "
           "parameterizations); transferability and plausibility in the residual network",
           ["parameterization", f"logit @{steps[0]}", f"logit @{steps[1]}", "transferability",
            "plausibility", "s / image"], rows)
    channels_table(model, data, steps, spectrum, color, args)


def channels_table(model, data, steps, spectrum, color, args):
    """Channels of conv3 (multifaceted visualization needs a feature map, not class logits):
    the channel's mean activation reached, per parameterization, and seconds per image."""
    units = [0, 1, 2, 3]
    objs = [vis.channel("conv3", u) for u in units]
    dataset = torch.utils.data.TensorDataset(data.train_images)
    rows = []

    def timed(name, fn):
        t0 = time.perf_counter()
        vals, n_images = fn()
        secs = (time.perf_counter() - t0) / n_images
        rows.append([name] + [f"{v:.3f}" for v in vals] + [f"{secs:.2f}"])

    def am(**kw):
        def fn():
            v = vis.activation_maximization(model, objs, size=32, steps=steps[-1],
                                            progress=False, **kw).values
            return [v[s - 1].mean().item() for s in steps], len(objs)
        return fn

    def maco():
        v = vis.maco_fv(model, objs, spectrum=spectrum, color=color, size=32, steps=steps[-1],
                        progress=False).values
        return [v[s - 1].mean().item() for s in steps], len(objs)

    def facets():
        k = 2 if args.quick else 4
        per = [vis.multifaceted_visualization(model, "conv3", u, dataset, facets=k,
                                              top=16 if args.quick else 64, steps=steps[-1],
                                              progress=False).values for u in units]
        return [sum(v[s - 1].mean().item() for v in per) / len(per) for s in steps], k * len(units)

    timed("pixel", am(param="pixel"))
    timed("fourier (default)", am(param="fourier"))
    timed("maco, data spectrum", maco)
    timed("multifaceted (per facet, from its cluster's mean image)", facets)
    _print(f"Channels {units} of conv3: mean activation reached (mean over units and facets)",
           ["parameterization", f"@{steps[0]}", f"@{steps[1]}", "s / image"], rows)


def part2(args):
    try:
        import horama  # noqa: F401
        from horama import maco_fv as hm
    except Exception as e:  # torchvision / horama absent
        print(f"\n# part 2 skipped: horama not importable ({type(e).__name__}: {e})")
        return
    torch.manual_seed(0)
    model = cifar_cnn().eval()
    size, steps, n = 32, (8 if args.quick else 64), 16
    spectrum = vis.image_spectrum(load_dataset(size=size).train_images)
    objs = [vis.channel("conv2", c) for c in range(n)]
    t0 = time.perf_counter()
    vis.maco_fv(model, objs, spectrum=spectrum, size=size, steps=steps, progress=False)
    ours = time.perf_counter() - t0
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            np.save(hm.MACO_SPECTRUM_FILENAME, spectrum.numpy())  # no download
            t0 = time.perf_counter()
            for c in range(n):
                hm.maco(lambda x, c=c: _conv2(model, x)[:, c].mean(),
                        total_steps=steps, learning_rate=1.0, image_size=size,
                        model_input_size=size, crops_per_iteration=2, device="cpu")
            theirs = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
    _print(f"MACO, {n} channels of conv2, {steps} steps, {size} px, CPU "
           f"{torch.get_num_threads()} threads",
           ["ours (one batch), s", "horama (one call per channel), s", "horama / ours",
            "per model input (horama / ours / 2)"],
           [[f"{ours:.2f}", f"{theirs:.2f}", f"{theirs / ours:.1f}x", f"{theirs / ours / 2:.1f}x"]])


def _conv2(model, x):
    from cnnvis_ext._modules import forward_until

    return forward_until(model, x, ["conv2"])["conv2"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and steps (CI-sized)")
    ap.add_argument("--part", choices=["1", "2"], default=None)
    args = ap.parse_args()
    print(f"# cnnvis_ext {cnnvis_ext.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.part in (None, "1"):
        part1(args)
    if args.part in (None, "2"):
        part2(args)


if __name__ == "__main__":
    main()
