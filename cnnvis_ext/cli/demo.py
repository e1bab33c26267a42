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
layer, and the learned reconstructions beside the optimized ones; and saliency,
guided backprop, deconvnet, LRP and Grad-CAM maps of a few test images.

A view whose implementation is missing from this build is not faked: its
section says that it is not available. A view that fails is reported in the
page and on stderr, and the command then exits with status 1.
"""
from __future__ import annotations

import math
import sys
import time
import traceback as _tb
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

from . import cli
from .cli import CLIError, FeatureUnavailable, _make_grid, _upscale_for
from .report import Report, Section, label_grid, plot_confusion, plot_curves

__all__ = ["run_demo"]


def _layers_to_invert(model: nn.Module) -> List[str]:
    from .nn import ConvReLUPool2d

    return [n for n, m in model.named_modules()
            if n and isinstance(m, (nn.Conv2d, ConvReLUPool2d, nn.Linear))]


def run_demo(args) -> int:
    """Run the demo for parsed ``cnnvis demo`` arguments; returns the exit status."""
    from .data import load_dataset
    from .models import cifar_cnn
    from .train import (TrainConfig, confusion_matrix, evaluate, load_checkpoint, predict,
                        save_checkpoint, train)

    t_start = time.perf_counter()
    dev = cli.resolve_device(args.device)
    torch.manual_seed(args.seed)
    progress = not args.quiet
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    say = lambda s: print(s, flush=True)  # noqa: E731
    data = load_dataset(args.data, progress=progress)
    say(f"data: {data}")
    rep = Report(out, title="cnnvis demo: looking inside the survey's example CNN",
                 intro="The ConvNet of the survey (INPUT → [CONV → RELU → POOL] × 3 → FC → FC → "
                       "softmax), built from cnnvis_ext's fused conv+ReLU+pool blocks, trained on "
                       + (f"the images of {data.name}." if args.data else
                          "scikit-learn's 1,797 handwritten digits (8×8, scaled to 32×32×3)."))
    failures: List[str] = []

    def run_section(title: str, text: str, body: Callable[[Section], None]) -> None:
        sec = rep.section(title, text)
        t0 = time.perf_counter()
        try:
            body(sec)
        except FeatureUnavailable as e:
            sec.figures.clear()
            rep.skip(sec, str(e))
            say(f"[skipped] {title}: {e}")
            return
        except Exception as e:  # a real failure: keep going, report it, exit 1 at the end
            if getattr(args, "traceback", False):
                raise
            sec.figures.clear()
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            rep.skip(sec, f"failed ({msg})")
            failures.append(f"{title}: {msg}")
            print(f"cnnvis demo: section {title!r} failed: {msg}", file=sys.stderr)
            print("".join(_tb.format_exception(type(e), e, e.__traceback__)[-3:]), file=sys.stderr)
            return
        sec.notes.append(f"({time.perf_counter() - t0:.1f}s)")
        say(f"[done] {title} ({time.perf_counter() - t0:.1f}s)")

    # ---------------------------------------------------------------- model
    if args.checkpoint:
        model, ckpt = load_checkpoint(args.checkpoint, map_location=dev)
        hist, kwargs = ckpt.get("history") or {}, ckpt["model_kwargs"]
        if list(ckpt["classes"]) != list(data.classes):
            raise CLIError(f"--checkpoint: its classes {ckpt['classes']} differ from the data's "
                           f"{data.classes}")
        say(f"loaded {args.checkpoint}")
        train_s = 0.0
    else:
        kwargs = dict(num_classes=data.num_classes, in_channels=data.image_shape[0],
                      input_size=data.image_shape[-1])
        model = cifar_cnn(**kwargs).to(dev)
        cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
        say(f"training cifar_cnn for {args.epochs} epochs on {dev} ...")
        t0 = time.perf_counter()
        hist = train(model, data, cfg, progress=progress, log=say)
        train_s = time.perf_counter() - t0
    model.eval()
    preds = predict(model, data.test_images)
    acc = evaluate(model, data.test_images, data.test_labels)
    say(f"test accuracy: {acc:.2%} ({len(data.test_labels)} test images)")
    if not args.checkpoint:
        save_checkpoint(out / "checkpoint.pt", model, model_kwargs=kwargs, classes=data.classes,
                        history=hist, config=cfg, data=data.name, test_acc=acc)
    lm = cli.LoadedModel(model, "cifar_cnn", data.image_shape[-1], data.image_shape[0],
                         list(data.classes))
    classes = data.classes
    convs = cli.conv_layers(model)
    n_img = min(args.images, len(data.test_labels))
    test_x = data.test_images[:n_img].to(dev)
    test_y = data.test_labels[:n_img]
    size = data.image_shape[-1]
    up = _upscale_for(size)

    rep.facts.update({
        "data": f"{data.name}: {len(data.train_labels)} training, {len(data.test_labels)} test "
                f"images, {data.num_classes} classes",
        "model": f"cifar_cnn({', '.join(f'{k}={v}' for k, v in kwargs.items())}): "
                 f"{sum(p.numel() for p in model.parameters()):,} parameters; layers "
                 + ", ".join(n for n, _ in model.named_children()),
        "test accuracy": f"{acc:.2%}",
        "training": (f"{len(hist.get('test_acc', []))} epochs, {train_s:.0f}s on {dev}"
                     if not args.checkpoint else f"from {args.checkpoint}"),
    })

    # ---------------------------------------------------------------- training
    def s_training(sec: Section) -> None:
        if hist.get("train_loss"):
            rep.add_image(sec, plot_curves({"train loss": hist["train_loss"]},
                                           title="training loss (cross-entropy)"),
                          "training_loss.png", "Training loss per epoch.")
            rep.add_image(sec, plot_curves({"train acc": hist["train_acc"],
                                            "test acc": hist["test_acc"]},
                                           title="accuracy", ylim=(0, 1)),
                          "training_accuracy.png",
                          f"Training and test accuracy per epoch; final test accuracy {acc:.2%}.")
        cm = confusion_matrix(preds, data.test_labels, data.num_classes)
        rep.add_image(sec, plot_confusion(cm, classes, title="test-set confusion matrix"),
                      "confusion_matrix.png",
                      "Confusion matrix on the test set: rows are true classes, columns "
                      "predictions; the diagonal holds the correct answers.")
        k = min(32, len(data.test_labels))
        labels = [classes[int(p)] if int(p) == int(t) else f"{classes[int(p)]} (is {classes[int(t)]})"
                  for p, t in zip(preds[:k], data.test_labels[:k])]
        rep.add_image(sec, label_grid(data.test_images[:k], labels, ncol=8, scale=2),
                      "test_predictions.png",
                      f"The first {k} test images with the network's prediction under each; "
                      "a mistake shows the true class in brackets.")

    run_section("Training", "The example network trained with Adam and a one-cycle schedule.",
                s_training)

    # Results that later sections show side by side: input-space class images, optimized
    # inversions, and the learned inverters ({layer: inverter}).
    shared: Dict[str, object] = {}
    inverters: Dict[str, nn.Module] = {}
    inv_layers = convs[-2:]
    inv_epochs = (args.inverter_epochs if getattr(args, "inverter_epochs", None) is not None
                  else 2 if args.checkpoint else min(2, args.epochs))

    # ---------------------------------------------------------------- learned inverters
    def s_inverters(sec: Section) -> None:
        train_inverter = cli._vis_attr("train_inverter",
                                       "learned inversion (cnnvis_ext.vis.train_inverter)")
        invert_learned = cli._vis_attr("invert_learned",
                                       "learned inversion (cnnvis_ext.vis.invert_learned)")
        if not inv_layers:
            raise FeatureUnavailable("the model has no convolution layer to invert")
        x_test = data.test_images.to(dev)
        base = float((data.train_images.mean(0).to(dev) - x_test).pow(2).mean())
        facts, errs = [], []
        for layer in inv_layers:
            t0 = time.perf_counter()
            inv = train_inverter(model, layer, data.train_images, epochs=inv_epochs,
                                 seed=args.seed, progress=progress, log=say)
            t_train = time.perf_counter() - t0
            inv.save(out / f"inverter_{layer}.pt")
            inverters[layer] = inv
            rec = invert_learned(inv, model, x_test, batch_size=256, check=False)
            err = float((rec - x_test).pow(2).mean())
            errs.append(f"{layer} {err:.4f}")
            facts.append(f"{layer} ({sum(p.numel() for p in inv.parameters()):,} parameters, "
                         f"{inv.depth} up-convolutions, {t_train:.0f}s)")
        rep.facts["learned inverters"] = (f"{', '.join(facts)}: {inv_epochs} epochs each on the "
                                          f"{len(data.train_labels)} training images")
        if inv_epochs:
            rep.add_image(sec, plot_curves({f"{l} pixel MSE": inverters[l].history["pixel_mse"]
                                            for l in inv_layers},
                                           title="inverter training: pixel MSE"),
                          "inverter_training.png",
                          f"Pixel MSE on the training images per epoch of the inverters of "
                          f"{' and '.join(inv_layers)}. Held-out MSE on the {len(x_test)} test "
                          f"images: {', '.join(errs)}; the mean training image scores "
                          f"{base:.4f}.")
        else:
            sec.notes.append(f"--inverter-epochs 0: untrained decoders (held-out MSE "
                             f"{', '.join(errs)}; the mean image scores {base:.4f}).")
        sec.notes.append("Saved as " + ", ".join(f"inverter_{l}.pt" for l in inv_layers)
                         + ": use them with `cnnvis invert --learned FILE` and `cnnvis actmax "
                           "--prior FILE` (with --model checkpoint.pt).")

    run_section("Learned inverters of " + " and ".join(inv_layers or ["(no conv layer)"]),
                "Dosovitskiy & Brox (2016): an up-convolutional network (transposed convolutions, "
                "one x2 stage per octave between the layer's map and the image) trained to map the "
                "frozen network's representation back to the image, on the training split only. "
                "Used below for learned reconstructions and as the generator prior of activation "
                "maximization.", s_inverters)

    def need_inverters() -> None:
        if not inverters:
            raise FeatureUnavailable("the learned inverters were not trained (see the section "
                                     "'Learned inverters' above)")

    # ---------------------------------------------------------------- kernels
    def s_kernels(sec: Section) -> None:
        grid, caption = cli.view_kernels(model, convs[0])
        rep.add_image(sec, grid, "kernels_conv1.png", caption, scale=8)

    run_section("Kernels of the first layer",
                "Each tile is one learned 3×3 filter of the first CONV layer, shown as RGB.",
                s_kernels)

    # ---------------------------------------------------------------- feature maps
    def s_maps(sec: Section) -> None:
        views = cli.view_feature_maps(model, test_x[:1], convs)
        rep.add_image(sec, data.test_images[0], "maps_input.png",
                      f"The input: test image #0 (class {classes[int(data.test_labels[0])]}).",
                      scale=up)
        for layer, grid, caption in views:
            rep.add_image(sec, grid, f"maps_{layer}.png", caption, scale=3)

    run_section("Feature maps of a test image at every layer",
                "The activation volume after each CONV → RELU → POOL block, one tile per channel.",
                s_maps)

    # ---------------------------------------------------------------- activation maximization
    def s_actmax(sec: Section) -> None:
        from .vis import objectives as O

        imgs = cli.view_actmax(model, [O.class_logit(c) for c in range(data.num_classes)],
                               size=size, steps=args.steps, lr=0.05, param="fourier",
                               seed=args.seed, progress=progress)
        shared["actmax_classes"] = imgs
        rep.add_image(sec, label_grid(imgs, [f"class {c}" for c in classes],
                                      ncol=min(10, len(classes)), scale=up),
                      "actmax_classes.png",
                      f"Images that maximize each class logit ({args.steps} Adam steps in a "
                      "decorrelated Fourier parameterization with jitter), all classes in one "
                      "batch.")
        for layer in convs:
            c = cli._layer_channels(model, layer, lm)
            imgs = cli.view_actmax(model, [O.channel(layer, u) for u in range(c)], size=size,
                                   steps=args.steps, lr=0.05, param="fourier", seed=args.seed,
                                   progress=progress)
            rep.add_image(sec, _make_grid(imgs, ncol=min(16, c), normalize=False),
                          f"actmax_{layer}.png",
                          f"{layer}: the image that maximizes the mean activation of each of "
                          f"its {c} channels (channel 0 top left, row-major), one batch.",
                          scale=2)

    run_section("Activation maximization",
                "Gradient ascent in input space on a class score or on the mean of one channel "
                "(Erhan et al. 2009; Simonyan et al. 2014; Olah et al. 2017).", s_actmax)

    # ---------------------------------------------------------------- generator prior
    def s_actmax_prior(sec: Section) -> None:
        from .vis import objectives as O

        need_inverters()
        objs = [O.class_logit(c) for c in range(data.num_classes)]
        rows, labels, lines = [], [], []
        if "actmax_classes" in shared:
            rows.append(shared["actmax_classes"].cpu())
            labels += [f"{c}: input space" for c in classes]
            lines.append("row 1: in input space (the figure above)")
        for layer, inv in inverters.items():
            imgs = cli.view_actmax(model, objs, size=size, steps=args.steps, lr=0.05,
                                   param="generator", generator=inv, seed=args.seed,
                                   progress=progress)
            with torch.no_grad():
                p = model(imgs.to(dev)).softmax(-1).diagonal().cpu()
            rows.append(imgs)
            labels += [f"{c}: {layer} p={float(v):.2f}" for c, v in zip(classes, p)]
            lines.append(f"row {len(rows)}: a code at {layer} decoded by its inverter")
        rep.add_image(sec, label_grid(torch.cat(rows), labels, ncol=data.num_classes, scale=up),
                      "actmax_classes_generator.png",
                      f"The image that maximizes each class logit ({args.steps} Adam steps); "
                      + "; ".join(lines) + ". Under each generator image: the network's "
                      "probability of the target class.")

    run_section("Activation maximization through a learned generator prior",
                "Nguyen et al. (2016, DGN-AM): optimize a code h at the inverter's layer instead of "
                "pixels, with x = inverter(h), an L2 decay on h and h clipped to the range of codes "
                "seen on real images, so that the result stays close to what natural inputs "
                "produce.", s_actmax_prior)

    # ---------------------------------------------------------------- deconvnet top-9
    def s_deconv(sec: Section) -> None:
        layer = convs[-1]
        c = cli._layer_channels(model, layer, lm)
        units = list(range(min(c, args.max_units)))
        res = cli.view_deconv_top(model, layer, data.test_images, k=args.top, units=units,
                                  progress=progress)
        ncol = min(8, len(res))
        patches = _pad_stack([p for _, p, _ in res])
        projections = _pad_stack([q for _, _, q in res])
        rep.add_image(sec, _make_grid(projections, ncol=ncol, pad=4, normalize=False),
                      f"deconv_{layer}_projections.png",
                      f"{layer}: for each of {len(units)} channels (row-major), the deconvnet "
                      f"projections to pixel space of its top-{args.top} activations over the "
                      "test set.", scale=2)
        rep.add_image(sec, _make_grid(patches, ncol=ncol, pad=4, normalize=False),
                      f"deconv_{layer}_patches.png",
                      f"{layer}: the input patches under those {args.top} activations, in the "
                      "same layout.", scale=2)

    run_section("Deconvnet: top-9 activations of the last conv layer",
                "Zeiler & Fergus (2014): each strong activation is projected back to pixel space "
                "by unpooling with the forward pass's switches, rectifying and filtering with "
                "the transposed kernels.", s_deconv)

    # ---------------------------------------------------------------- inversion
    def s_invert(sec: Section) -> None:
        layers = _layers_to_invert(model)
        for i in range(min(2, n_img)):
            t0 = time.perf_counter()
            rec = cli.view_invert(model, test_x[i], layers, steps=args.steps, seed=args.seed,
                                  progress=progress)
            shared.setdefault("invert", {})[i] = (layers, rec, time.perf_counter() - t0)
            row = torch.cat([data.test_images[i:i + 1], rec])
            rep.add_image(sec, label_grid(row, ["original"] + layers, ncol=len(row), scale=up),
                          f"invert_{i}.png",
                          f"Test image #{i} and its reconstructions from the representation at "
                          f"{', '.join(layers)} ({args.steps} steps each).")

    run_section("Inversion of a test image from every layer",
                "Mahendran & Vedaldi (2015): find an image whose representation matches the "
                "original's, with total-variation and alpha-norm priors.", s_invert)

    # ---------------------------------------------------------------- learned inversion
    def s_invert_learned(sec: Section) -> None:
        invert_learned = cli._vis_attr("invert_learned",
                                       "learned inversion (cnnvis_ext.vis.invert_learned)")
        need_inverters()
        k = min(16, len(data.test_labels))
        x = data.test_images[:k].to(dev)
        t0 = time.perf_counter()
        recs = {l: invert_learned(inv, model, x, check=False).float().cpu()
                for l, inv in inverters.items()}
        dt = time.perf_counter() - t0
        opt = shared.get("invert", {})
        for i in range(min(2, n_img)):
            tiles, labels = [data.test_images[i:i + 1]], ["original"]
            if i in opt:
                layers, rec, _ = opt[i]
                for l in inverters:
                    if l in layers:
                        tiles.append(rec[layers.index(l)][None].cpu())
                        labels.append(f"{l} optimized")
            for l, r in recs.items():
                tiles.append(r[i:i + 1])
                labels.append(f"{l} learned")
            row = torch.cat(tiles).clamp(0, 1)
            errs = ", ".join(f"{lab} {float((t[0] - data.test_images[i]).pow(2).mean()):.4f}"
                             for t, lab in zip(tiles[1:], labels[1:]))
            rep.add_image(sec, label_grid(row, labels, ncol=len(row), scale=up),
                          f"invert_learned_{i}.png",
                          f"Test image #{i}, its optimization-based reconstructions from "
                          f"{' and '.join(inverters)} ({args.steps} steps, from the section above) "
                          f"and the learned ones (one forward pass); pixel MSE: {errs}.")
        grid = torch.cat([data.test_images[:k]] + list(recs.values())).clamp(0, 1)
        labels = [f"#{i}" for i in range(k)] + [l for l in recs for _ in range(k)]
        per_s = k * len(recs) / max(dt, 1e-9)
        opt_s = [t for _, _, t in opt.values()]
        speed = (f"; optimization took {sum(opt_s) / len(opt_s):.1f}s per image for all "
                 f"{len(next(iter(opt.values()))[0])} layers" if opt_s else "")
        rep.add_image(sec, label_grid(grid, labels, ncol=k, scale=2),
                      "invert_learned_test.png",
                      f"The first {k} held-out test images (top row) and their learned "
                      f"reconstructions from {' and '.join(recs)} (one row each): "
                      f"{k * len(recs)} reconstructions in {dt * 1e3:.0f} ms ({per_s:.0f}/s)"
                      f"{speed}.")

    run_section("Learned inversion beside optimization",
                "Dosovitskiy & Brox (2016): the trained inverters reconstruct an image from its "
                "representation in one forward pass; even from deeper layers they keep the "
                "colour and contours that the representation still encodes.", s_invert_learned)

    # ---------------------------------------------------------------- attribution
    def s_attr(sec: Section) -> None:
        targets = preds[:n_img].to(dev)
        cols = {}
        missing = []
        for method in cli.ATTRIBUTION_METHODS:
            try:
                _, overlay = cli.view_attribution(model, test_x, targets, method, convs[-1])
                cols[method] = overlay
            except FeatureUnavailable as e:
                missing.append(f"{method}: {e}")
        if not cols:
            raise FeatureUnavailable("; ".join(missing))
        tiles, labels = [], []
        for i in range(n_img):
            img = data.test_images[i]
            tiles.append(img.expand(3, -1, -1) if img.shape[0] == 1 else img)
            labels.append(f"#{i}: {classes[int(preds[i])]}")
            for m, ov in cols.items():
                tiles.append(ov[i])
                labels.append(m)
        rep.add_image(sec, label_grid(torch.stack(tiles), labels, ncol=len(cols) + 1, scale=up),
                      "attribution.png",
                      "One row per test image: the image with its predicted class, then the "
                      f"heat map of each method for that class ({', '.join(cols)}), overlaid "
                      "on the image; each map scaled to its own maximum.")
        for m in missing:
            sec.notes.append(f"Not shown: {m}")

    run_section("Attribution: saliency, guided backprop, deconvnet, LRP, Grad-CAM",
                "Which pixels the prediction depends on: the gradient (Simonyan et al. 2014), "
                "its guided and deconvnet variants, layer-wise relevance propagation (z-box / "
                "gamma / epsilon rules) and Grad-CAM at the last conv layer.", s_attr)

    path = rep.write()
    say(f"wrote {path} ({sum(len(s.figures) for s in rep.sections)} images, "
        f"{time.perf_counter() - t_start:.0f}s)")
    if failures:
        print(f"cnnvis demo: error: {len(failures)} section(s) failed: {'; '.join(failures)}",
              file=sys.stderr)
        return 1
    return 0


def _pad_stack(grids) -> torch.Tensor:
    """Stack per-unit grids, padding each to the largest (a unit can have fewer than k hits)."""
    h = max(g.shape[-2] for g in grids)
    w = max(g.shape[-1] for g in grids)
    return torch.stack([torch.nn.functional.pad(g, (0, w - g.shape[-1], 0, h - g.shape[-2]),
                                                value=1.0) for g in grids])
