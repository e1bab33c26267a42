"""``cnnvis demo``: train the survey's example CNN and write every view into one HTML report.

The report (``OUT/index.html``) shows, with captions: the training curves and
the confusion matrix; test images with their predictions; the training of
up-convolutional inverters of the last two conv layers (Dosovitskiy & Brox),
saved as ``OUT/inverter_<layer>.pt``; the first layer's kernels; feature maps
of a test image at every layer; activation maximization of every class and of
every channel of each conv layer, and of every class through the learned
generator prior (Nguyen et al., DGN-AM) beside the input-space images;
deconvnet projections of the top-9 activations of every channel of the last
conv layer beside their input patches; inversion of a test image from every
layer, and the learned reconstructions beside the optimized ones; saliency,
guided backprop, deconvnet, LRP and Grad-CAM maps of a few test images, and beside them the
CAM family, integrated gradients and occlusion; how far to trust these maps (deletion and
insertion curves, a ranking by deletion AUC, insertion AUC and AOPC, the cascading
randomization test with the randomized maps); and the transferability and plausibility of the
class images of every feature-visualization parameterization, with MACO's transparency maps
(those sections are in :mod:`cnnvis_ext.cli.demo_trust`).

Each section is one function of a :class:`Demo` and a :class:`~cnnvis_ext.report.Section`.
A section that fails is reported in the page and on stderr, the others still
run, and the command then exits with status 1.
"""
from __future__ import annotations

import sys
import time
import traceback as _tb
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..data import DataSplit, load_dataset
from ..models import cifar_cnn, residual_cnn
from ..nn import ConvReLUPool2d, fuse
from ..report import Report, Section, label_grid, plot_confusion, plot_curves
from ..train import (TrainConfig, confusion_matrix, evaluate, load_checkpoint, predict,
                     save_checkpoint, train)
from ..vis import invert_learned, train_inverter
from ..vis import objectives as O
from .demo_frontier import section_frontier
from .demo_trust import (attribution_grid, section_attribution_more,
                         section_feature_vis_quality, section_trust)
from .errors import CLIError
from .figures import (ATTRIBUTION_METHODS, tile, upscale_for, view_actmax, view_attribution,
                      view_deconv_top, view_feature_maps, view_invert, view_kernels)
from .loading import LoadedModel, conv_layers, layer_channels, resolve_device

__all__ = ["run_demo", "Demo"]


class SectionSkipped(Exception):
    """A section that cannot be drawn because an earlier one did not produce its input."""


def _say(s: str) -> None:
    print(s, flush=True)


@dataclass
class Demo:
    """The trained network, its data and the report, and the results that later sections
    show beside earlier ones."""

    args: object
    dev: torch.device
    out: Path
    data: DataSplit
    model: nn.Module
    model_kwargs: dict
    history: dict
    train_s: float
    rep: Report
    inverters: Dict[str, nn.Module] = field(default_factory=dict)
    #: the class images of the input-space actmax section
    actmax_classes: Optional[Tensor] = None
    #: test image -> (layers, reconstructions, seconds) of the inversion section
    inversions: Dict[int, Tuple[List[str], Tensor, float]] = field(default_factory=dict)
    #: the residual network of its section (the trust sections use it as a second network)
    residual: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        self.model.eval()
        self.progress = not self.args.quiet
        self.classes = self.data.classes
        self.preds = predict(self.model, self.data.test_images)
        self.acc = evaluate(self.model, self.data.test_images, self.data.test_labels)
        self.convs = conv_layers(self.model)
        self.n_img = min(self.args.images, len(self.data.test_labels))
        self.test_x = self.data.test_images[:self.n_img].to(self.dev)
        self.size = self.data.image_shape[-1]
        self.up = upscale_for(self.size)
        self.lm = LoadedModel(self.model, "cifar_cnn", self.size, self.data.image_shape[0],
                              list(self.classes))
        self.inv_layers = self.convs[-2:]
        a = self.args
        self.inv_epochs = (a.inverter_epochs if a.inverter_epochs is not None
                           else 2 if a.checkpoint else min(2, a.epochs))

    def add(self, sec: Section, image, name: str, caption: str, scale: int = 1) -> None:
        self.rep.add_image(sec, image, name, caption, scale=scale)


# --------------------------------------------------------------------------- the network

def _train_or_load(args, data: DataSplit, dev,
                   cfg: TrainConfig) -> Tuple[nn.Module, dict, dict, float]:
    """``(model, model_kwargs, history, training seconds)``: ``--checkpoint``, or a new training."""
    if args.checkpoint:
        model, ckpt = load_checkpoint(args.checkpoint, map_location=dev)
        if list(ckpt["classes"]) != list(data.classes):
            raise CLIError(f"--checkpoint: its classes {ckpt['classes']} differ from the data's "
                           f"{data.classes}")
        _say(f"loaded {args.checkpoint}")
        return model, ckpt["model_kwargs"], ckpt.get("history") or {}, 0.0
    kwargs = dict(num_classes=data.num_classes, in_channels=data.image_shape[0],
                  input_size=data.image_shape[-1])
    model = cifar_cnn(**kwargs).to(dev)
    _say(f"training cifar_cnn for {args.epochs} epochs on {dev} ...")
    t0 = time.perf_counter()
    hist = train(model, data, cfg, progress=not args.quiet, log=_say)
    return model, kwargs, hist, time.perf_counter() - t0


def _facts(d: Demo) -> Dict[str, str]:
    data, kwargs = d.data, d.model_kwargs
    return {
        "data": f"{data.name}: {len(data.train_labels)} training, {len(data.test_labels)} test "
                f"images, {data.num_classes} classes",
        "model": f"cifar_cnn({', '.join(f'{k}={v}' for k, v in kwargs.items())}): "
                 f"{sum(p.numel() for p in d.model.parameters()):,} parameters; layers "
                 + ", ".join(n for n, _ in d.model.named_children()),
        "test accuracy": f"{d.acc:.2%}",
        "training": (f"{len(d.history.get('test_acc', []))} epochs, {d.train_s:.0f}s on {d.dev}"
                     if not d.args.checkpoint else f"from {d.args.checkpoint}"),
    }


# --------------------------------------------------------------------------- sections

def section_training(d: Demo, sec: Section) -> None:
    hist, data, classes = d.history, d.data, d.classes
    if hist.get("train_loss"):
        d.add(sec, plot_curves({"train loss": hist["train_loss"]},
                               title="training loss (cross-entropy)"),
              "training_loss.png", "Training loss per epoch.")
        d.add(sec, plot_curves({"train acc": hist["train_acc"], "test acc": hist["test_acc"]},
                               title="accuracy", ylim=(0, 1)),
              "training_accuracy.png",
              f"Training and test accuracy per epoch; final test accuracy {d.acc:.2%}.")
    cm = confusion_matrix(d.preds, data.test_labels, data.num_classes)
    d.add(sec, plot_confusion(cm, classes, title="test-set confusion matrix"),
          "confusion_matrix.png",
          "Confusion matrix on the test set: rows are true classes, columns "
          "predictions; the diagonal holds the correct answers.")
    k = min(32, len(data.test_labels))
    labels = [classes[int(p)] if int(p) == int(t) else f"{classes[int(p)]} (is {classes[int(t)]})"
              for p, t in zip(d.preds[:k], data.test_labels[:k])]
    d.add(sec, label_grid(data.test_images[:k], labels, ncol=8, scale=2),
          "test_predictions.png",
          f"The first {k} test images with the network's prediction under each; "
          "a mistake shows the true class in brackets.")


def section_inverters(d: Demo, sec: Section) -> None:
    if not d.inv_layers:
        raise SectionSkipped("the model has no convolution layer to invert")
    data = d.data
    x_test = data.test_images.to(d.dev)
    base = float((data.train_images.mean(0).to(d.dev) - x_test).pow(2).mean())
    facts, errs = [], []
    for layer in d.inv_layers:
        t0 = time.perf_counter()
        inv = train_inverter(d.model, layer, data.train_images, epochs=d.inv_epochs,
                             seed=d.args.seed, progress=d.progress, log=_say)
        t_train = time.perf_counter() - t0
        inv.save(d.out / f"inverter_{layer}.pt")
        d.inverters[layer] = inv
        rec = invert_learned(inv, d.model, x_test, batch_size=256, check=False)
        errs.append(f"{layer} {float((rec - x_test).pow(2).mean()):.4f}")
        facts.append(f"{layer} ({sum(p.numel() for p in inv.parameters()):,} parameters, "
                     f"{inv.depth} up-convolutions, {t_train:.0f}s)")
    d.rep.facts["learned inverters"] = (f"{', '.join(facts)}: {d.inv_epochs} epochs each on the "
                                        f"{len(data.train_labels)} training images")
    if d.inv_epochs:
        d.add(sec, plot_curves({f"{l} pixel MSE": d.inverters[l].history["pixel_mse"]
                                for l in d.inv_layers}, title="inverter training: pixel MSE"),
              "inverter_training.png",
              f"Pixel MSE on the training images per epoch of the inverters of "
              f"{' and '.join(d.inv_layers)}. Held-out MSE on the {len(x_test)} test "
              f"images: {', '.join(errs)}; the mean training image scores {base:.4f}.")
    else:
        sec.notes.append(f"--inverter-epochs 0: untrained decoders (held-out MSE "
                         f"{', '.join(errs)}; the mean image scores {base:.4f}).")
    sec.notes.append("Saved as " + ", ".join(f"inverter_{l}.pt" for l in d.inv_layers)
                     + ": use them with `cnnvis invert --learned FILE` and `cnnvis actmax "
                       "--prior FILE` (with --model checkpoint.pt).")


def _need_inverters(d: Demo) -> None:
    if not d.inverters:
        raise SectionSkipped("the learned inverters were not trained (see the section "
                             "'Learned inverters' above)")


def section_kernels(d: Demo, sec: Section) -> None:
    grid, caption = view_kernels(d.model, d.convs[0])
    d.add(sec, grid, "kernels_conv1.png", caption, scale=8)


def section_maps(d: Demo, sec: Section) -> None:
    views = view_feature_maps(d.model, d.test_x[:1], d.convs)
    d.add(sec, d.data.test_images[0], "maps_input.png",
          f"The input: test image #0 (class {d.classes[int(d.data.test_labels[0])]}).",
          scale=d.up)
    for layer, grid, caption in views:
        d.add(sec, grid, f"maps_{layer}.png", caption, scale=3)


def _actmax(d: Demo, objectives: list, **kw) -> Tensor:
    return view_actmax(d.model, objectives, size=d.size, steps=d.args.steps, lr=0.05,
                       seed=d.args.seed, progress=d.progress, **kw)


def section_actmax(d: Demo, sec: Section) -> None:
    imgs = _actmax(d, [O.class_logit(c) for c in range(d.data.num_classes)], param="fourier")
    d.actmax_classes = imgs
    d.add(sec, label_grid(imgs, [f"class {c}" for c in d.classes],
                          ncol=min(10, len(d.classes)), scale=d.up),
          "actmax_classes.png",
          f"Images that maximize each class logit ({d.args.steps} Adam steps in a "
          "decorrelated Fourier parameterization with jitter), all classes in one batch.")
    for layer in d.convs:
        c = layer_channels(d.model, layer, d.lm)
        imgs = _actmax(d, [O.channel(layer, u) for u in range(c)], param="fourier")
        d.add(sec, tile(imgs, ncol=min(16, c), normalize=False), f"actmax_{layer}.png",
              f"{layer}: the image that maximizes the mean activation of each of "
              f"its {c} channels (channel 0 top left, row-major), one batch.", scale=2)


def section_actmax_prior(d: Demo, sec: Section) -> None:
    _need_inverters(d)
    objs = [O.class_logit(c) for c in range(d.data.num_classes)]
    rows, labels, lines = [], [], []
    if d.actmax_classes is not None:
        rows.append(d.actmax_classes.cpu())
        labels += [f"{c}: input space" for c in d.classes]
        lines.append("row 1: in input space (the figure above)")
    for layer, inv in d.inverters.items():
        imgs = _actmax(d, objs, param="generator", generator=inv)
        with torch.no_grad():
            p = d.model(imgs.to(d.dev)).softmax(-1).diagonal().cpu()
        rows.append(imgs)
        labels += [f"{c}: {layer} p={float(v):.2f}" for c, v in zip(d.classes, p)]
        lines.append(f"row {len(rows)}: a code at {layer} decoded by its inverter")
    d.add(sec, label_grid(torch.cat(rows), labels, ncol=d.data.num_classes, scale=d.up),
          "actmax_classes_generator.png",
          f"The image that maximizes each class logit ({d.args.steps} Adam steps); "
          + "; ".join(lines) + ". Under each generator image: the network's "
          "probability of the target class.")


def _pad_stack(grids) -> Tensor:
    """Stack per-unit grids, padding each to the largest (a unit can have fewer than k hits)."""
    h = max(g.shape[-2] for g in grids)
    w = max(g.shape[-1] for g in grids)
    return torch.stack([torch.nn.functional.pad(g, (0, w - g.shape[-1], 0, h - g.shape[-2]),
                                                value=1.0) for g in grids])


def section_deconv(d: Demo, sec: Section) -> None:
    layer, top = d.convs[-1], d.args.top
    c = layer_channels(d.model, layer, d.lm)
    units = list(range(min(c, d.args.max_units)))
    res = view_deconv_top(d.model, layer, d.data.test_images, k=top, units=units,
                          progress=d.progress)
    ncol = min(8, len(res))
    patches = _pad_stack([p for _, p, _ in res])
    projections = _pad_stack([q for _, _, q in res])
    d.add(sec, tile(projections, ncol=ncol, pad=4, normalize=False),
          f"deconv_{layer}_projections.png",
          f"{layer}: for each of {len(units)} channels (row-major), the deconvnet "
          f"projections to pixel space of its top-{top} activations over the test set.", scale=2)
    d.add(sec, tile(patches, ncol=ncol, pad=4, normalize=False), f"deconv_{layer}_patches.png",
          f"{layer}: the input patches under those {top} activations, in the same layout.",
          scale=2)


def _layers_to_invert(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules()
            if n and isinstance(m, (nn.Conv2d, ConvReLUPool2d, nn.Linear))]


def section_invert(d: Demo, sec: Section) -> None:
    layers = _layers_to_invert(d.model)
    for i in range(min(2, d.n_img)):
        t0 = time.perf_counter()
        rec = view_invert(d.model, d.test_x[i], layers, steps=d.args.steps, seed=d.args.seed,
                          progress=d.progress)
        d.inversions[i] = (layers, rec, time.perf_counter() - t0)
        row = torch.cat([d.data.test_images[i:i + 1], rec])
        d.add(sec, label_grid(row, ["original"] + layers, ncol=len(row), scale=d.up),
              f"invert_{i}.png",
              f"Test image #{i} and its reconstructions from the representation at "
              f"{', '.join(layers)} ({d.args.steps} steps each).")


def _learned_row(d: Demo, i: int, recs: Dict[str, Tensor]) -> Tuple[Tensor, List[str], str]:
    """Test image ``i``, its optimized reconstructions at the inverters' layers (when the
    inversion section made them) and its learned ones: tiles, labels and their pixel MSE."""
    tiles, labels = [d.data.test_images[i:i + 1]], ["original"]
    if i in d.inversions:
        layers, rec, _ = d.inversions[i]
        for l in d.inverters:
            if l in layers:
                tiles.append(rec[layers.index(l)][None].cpu())
                labels.append(f"{l} optimized")
    for l, r in recs.items():
        tiles.append(r[i:i + 1])
        labels.append(f"{l} learned")
    errs = ", ".join(f"{lab} {float((t[0] - d.data.test_images[i]).pow(2).mean()):.4f}"
                     for t, lab in zip(tiles[1:], labels[1:]))
    return torch.cat(tiles).clamp(0, 1), labels, errs


def section_invert_learned(d: Demo, sec: Section) -> None:
    _need_inverters(d)
    data, steps = d.data, d.args.steps
    k = min(16, len(data.test_labels))
    x = data.test_images[:k].to(d.dev)
    t0 = time.perf_counter()
    recs = {l: invert_learned(inv, d.model, x, check=False).float().cpu()
            for l, inv in d.inverters.items()}
    dt = time.perf_counter() - t0
    for i in range(min(2, d.n_img)):
        row, labels, errs = _learned_row(d, i, recs)
        d.add(sec, label_grid(row, labels, ncol=len(row), scale=d.up), f"invert_learned_{i}.png",
              f"Test image #{i}, its optimization-based reconstructions from "
              f"{' and '.join(d.inverters)} ({steps} steps, from the section above) "
              f"and the learned ones (one forward pass); pixel MSE: {errs}.")
    grid = torch.cat([data.test_images[:k]] + list(recs.values())).clamp(0, 1)
    labels = [f"#{i}" for i in range(k)] + [l for l in recs for _ in range(k)]
    per_s = k * len(recs) / max(dt, 1e-9)
    opt_s = [t for _, _, t in d.inversions.values()]
    speed = (f"; optimization took {sum(opt_s) / len(opt_s):.1f}s per image for all "
             f"{len(next(iter(d.inversions.values()))[0])} layers" if opt_s else "")
    d.add(sec, label_grid(grid, labels, ncol=k, scale=2), "invert_learned_test.png",
          f"The first {k} held-out test images (top row) and their learned "
          f"reconstructions from {' and '.join(recs)} (one row each): "
          f"{k * len(recs)} reconstructions in {dt * 1e3:.0f} ms ({per_s:.0f}/s){speed}.")


def section_attribution(d: Demo, sec: Section) -> None:
    targets = d.preds[:d.n_img].to(d.dev)
    overlays = {m: view_attribution(d.model, d.test_x, targets, m, d.convs[-1])[1]
                for m in ATTRIBUTION_METHODS}
    d.add(sec, attribution_grid(d, targets, overlays), "attribution.png",
          "One row per test image: the image with its predicted class, then the "
          f"heat map of each method for that class ({', '.join(overlays)}), overlaid "
          "on the image; each map scaled to its own maximum.")


def section_residual(d: Demo, sec: Section) -> None:
    """A residual network with BatchNorm trained on the same data: its fused speed-up, LRP,
    deconvnet top-9 and Grad-CAM, the methods working on a modern architecture."""
    epochs = min(d.args.epochs, 8)
    model = residual_cnn(d.data.num_classes, in_channels=d.data.image_shape[0]).to(d.dev)
    t0 = time.perf_counter()
    train(model, d.data, TrainConfig(epochs=epochs, seed=d.args.seed), progress=d.progress,
          log=None)
    train_s = time.perf_counter() - t0
    model.eval()
    d.residual = model
    acc = evaluate(model, d.data.test_images, d.data.test_labels)
    fused = fuse(model, inplace=False)
    x = d.data.test_images[:64].to(d.dev)

    def step(m):
        xi = x.detach().requires_grad_(True)
        m(xi).sum().backward()

    with torch.no_grad():
        same = torch.allclose(fused(x), model(x), rtol=1e-4, atol=1e-4)
    times = {}
    for name, m in (("eager", model), ("fused", fused)):
        step(m)
        t1 = time.perf_counter()
        for _ in range(5):
            step(m)
        times[name] = (time.perf_counter() - t1) / 5
    n_fused = sum(isinstance(m, ConvReLUPool2d) for m in fused.modules())
    sec.notes.append(f"residual_cnn: {sum(p.numel() for p in model.parameters()):,} parameters, "
                     f"{epochs} epochs in {train_s:.0f}s, test accuracy {acc:.2%}. fuse() ran "
                     f"{n_fused} conv+BatchNorm+ReLU(+pool) runs as fused ops (outputs "
                     f"{'equal' if same else 'DIFFERENT'}); forward+backward of 64 images: "
                     f"{times['eager'] * 1e3:.0f} ms eager, {times['fused'] * 1e3:.0f} ms fused "
                     f"({times['eager'] / times['fused']:.2f}x).")
    targets = predict(model, d.test_x).to(d.dev)
    maps = {m: view_attribution(model, d.test_x, targets, m, "block3")[1] for m in ("lrp", "gradcam")}
    d.add(sec, attribution_grid(d, targets, maps), "residual_attribution.png",
          "residual_cnn: LRP (epsilon rules on a graph: the residual additions share relevance "
          "in proportion to each branch, BatchNorm merged into the convolutions) and Grad-CAM "
          "at block3, for the predicted class.")
    units = list(range(min(8, d.args.max_units)))
    res = view_deconv_top(model, "block3", d.data.test_images, k=d.args.top, units=units,
                          progress=d.progress)
    d.add(sec, tile(_pad_stack([q for _, _, q in res]), ncol=min(8, len(res)), pad=4,
                    normalize=False), "residual_deconv_block3.png",
          f"residual_cnn block3: deconvnet projections of the top-{d.args.top} activations of "
          f"{len(units)} channels over the test set, through the residual connections.", scale=2)


def _sections(d: Demo) -> List[Tuple[str, str, Callable[[Demo, Section], None]]]:
    """``(title, text, draw)`` of each section, in the order of the page."""
    return [
        ("Training", "The example network trained with Adam and a one-cycle schedule.",
         section_training),
        ("Learned inverters of " + " and ".join(d.inv_layers or ["(no conv layer)"]),
         "Dosovitskiy & Brox (2016): an up-convolutional network (transposed convolutions, "
         "one x2 stage per octave between the layer's map and the image) trained to map the "
         "frozen network's representation back to the image, on the training split only. "
         "Used below for learned reconstructions and as the generator prior of activation "
         "maximization.", section_inverters),
        ("Kernels of the first layer",
         "Each tile is one learned 3×3 filter of the first CONV layer, shown as RGB.",
         section_kernels),
        ("Feature maps of a test image at every layer",
         "The activation volume after each CONV → RELU → POOL block, one tile per channel.",
         section_maps),
        ("Activation maximization",
         "Gradient ascent in input space on a class score or on the mean of one channel "
         "(Erhan et al. 2009; Simonyan et al. 2014; Olah et al. 2017).", section_actmax),
        ("Activation maximization through a learned generator prior",
         "Nguyen et al. (2016, DGN-AM): optimize a code h at the inverter's layer instead of "
         "pixels, with x = inverter(h), an L2 decay on h and h clipped to the range of codes "
         "seen on real images, so that the result stays close to what natural inputs "
         "produce.", section_actmax_prior),
        ("Deconvnet: top-9 activations of the last conv layer",
         "Zeiler & Fergus (2014): each strong activation is projected back to pixel space "
         "by unpooling with the forward pass's switches, rectifying and filtering with "
         "the transposed kernels.", section_deconv),
        ("Inversion of a test image from every layer",
         "Mahendran & Vedaldi (2015): find an image whose representation matches the "
         "original's, with total-variation and alpha-norm priors.", section_invert),
        ("Learned inversion beside optimization",
         "Dosovitskiy & Brox (2016): the trained inverters reconstruct an image from its "
         "representation in one forward pass; even from deeper layers they keep the "
         "colour and contours that the representation still encodes.", section_invert_learned),
        ("A residual network with BatchNorm",
         "The same data, a modern architecture (residual blocks with BatchNorm, written as "
         "torchvision's ResNets): fused by dataflow, explained with LRP and Grad-CAM, and its "
         "top activations projected by the deconvnet through the skip connections.",
         section_residual),
        ("Attribution: saliency, guided backprop, deconvnet, LRP, Grad-CAM",
         "Which pixels the prediction depends on: the gradient (Simonyan et al. 2014), "
         "its guided and deconvnet variants, layer-wise relevance propagation (z-box / "
         "gamma / epsilon rules) and Grad-CAM at the last conv layer.", section_attribution),
        ("Attribution beyond the first five: the CAM family, integrated gradients, occlusion",
         "Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Score-CAM, Ablation-CAM, Eigen-CAM and "
         "Guided Grad-CAM at the last conv layer, integrated gradients (Sundararajan et al. "
         "2017, black baseline, 32 steps) and occlusion sensitivity (Zeiler & Fergus 2014, a "
         "black patch of an eighth of the side slid over the image), beside the first five, on both networks.",
         section_attribution_more),
        ("How far to trust these maps",
         "Faithfulness: does removing what a map calls important lower the score (deletion), "
         "and does adding it back raise it (insertion)? And the sanity check: does the map "
         "change when the network's weights are replaced by random ones? Every method on the "
         "survey's network and on the residual network.", section_trust),
        ("Feature visualization quality: transferability and plausibility",
         "Class images of each parameterization (pixel, Fourier, MACO with the data's "
         "spectrum, the generator prior of each inverter), judged by a second, independently "
         "trained network: does it see the class too (transferability), and are the images' "
         "features close to those of real images of the class (plausibility)?",
         section_feature_vis_quality),
        ("Past activation maximization: accentuation, caricatures, facets",
         "Feature visualization that starts from real images: feature accentuation pushes a "
         "test image toward a class while staying near it, a caricature exaggerates what a "
         "layer sees in it, and multifaceted visualization shows the several kinds of image "
         "one unit responds to.", section_frontier),
    ]


def _run_section(d: Demo, title: str, text: str, draw, failures: List[str]) -> None:
    """Draw one section; a failure is shown in the page and on stderr, and counted."""
    sec = d.rep.section(title, text)
    t0 = time.perf_counter()
    try:
        draw(d, sec)
    except SectionSkipped as e:
        sec.figures.clear()
        d.rep.skip(sec, str(e))
        _say(f"[skipped] {title}: {e}")
        return
    except Exception as e:  # a real failure: keep going, report it, exit 1 at the end
        if d.args.traceback:
            raise
        sec.figures.clear()
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        d.rep.skip(sec, f"failed ({msg})")
        failures.append(f"{title}: {msg}")
        print(f"cnnvis demo: section {title!r} failed: {msg}", file=sys.stderr)
        print("".join(_tb.format_exception(type(e), e, e.__traceback__)[-3:]), file=sys.stderr)
        return
    sec.notes.append(f"({time.perf_counter() - t0:.1f}s)")
    _say(f"[done] {title} ({time.perf_counter() - t0:.1f}s)")


def run_demo(args) -> int:
    """Run the demo for parsed ``cnnvis demo`` arguments; returns the exit status."""
    t_start = time.perf_counter()
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, progress=not args.quiet)
    _say(f"data: {data}")
    rep = Report(out, title="cnnvis demo: looking inside the survey's example CNN",
                 intro="The ConvNet of the survey (INPUT → [CONV → RELU → POOL] × 3 → FC → FC → "
                       "softmax), built from cnnvis_ext's fused conv+ReLU+pool blocks, trained on "
                       + (f"the images of {data.name}." if args.data else
                          "scikit-learn's 1,797 handwritten digits (8×8, scaled to 32×32×3)."))
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    model, kwargs, hist, train_s = _train_or_load(args, data, dev, cfg)
    d = Demo(args, dev, out, data, model, kwargs, hist, train_s, rep)
    _say(f"test accuracy: {d.acc:.2%} ({len(data.test_labels)} test images)")
    if not args.checkpoint:
        save_checkpoint(out / "checkpoint.pt", model, model_kwargs=kwargs, classes=data.classes,
                        history=hist, config=cfg, data=data.name, test_acc=d.acc)
    rep.facts.update(_facts(d))
    failures: List[str] = []
    for title, text, draw in _sections(d):
        _run_section(d, title, text, draw, failures)
    path = rep.write()
    _say(f"wrote {path} ({sum(len(s.figures) for s in rep.sections)} images, "
         f"{time.perf_counter() - t_start:.0f}s)")
    if failures:
        print(f"cnnvis demo: error: {len(failures)} section(s) failed: {'; '.join(failures)}",
              file=sys.stderr)
        return 1
    return 0
