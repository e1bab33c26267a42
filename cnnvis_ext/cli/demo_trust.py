"""The sections of ``cnnvis demo`` on attribution beyond the first five and on how far to trust
the pictures: the CAM family, integrated gradients and occlusion beside the first five;
deletion and insertion curves, AOPC and the cascading randomization test of every method on the
survey's network and on the residual network; and the transferability and plausibility of the
class images of every feature-visualization parameterization, with MACO's transparency maps.

Each ``section_*`` takes the :class:`~cnnvis_ext.cli.demo.Demo` (used by its attributes only:
this module is imported by ``demo``, not the other way round) and a report section.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import metrics as M
from ..models import cifar_cnn
from ..report import label_grid, plot_curves, plot_table
from ..train import TrainConfig, evaluate, predict, train
from ..vis import color_correlation, image_spectrum, maco_fv, overlay
from ..vis import objectives as O
from ..vis.transforms import Jitter, Pad
from .figures import (ALL_ATTRIBUTION_METHODS, MORE_ATTRIBUTION_METHODS, attribution_heat,
                      explainer, view_actmax, view_attribution)

__all__ = ["attribution_grid", "section_attribution_more", "section_trust",
           "section_feature_vis_quality", "RESIDUAL_LAYER"]

#: the residual network's layer of the CAM methods (its last block)
RESIDUAL_LAYER = "block3"
#: points of each deletion / insertion curve after the first
CURVE_STEPS = 16
#: perturbed images per forward of the faithfulness metrics (a 32 px network: small batches
#: would only add Python overhead)
_BATCH = 512

#: metric -> (column header, what a better method does)
_RANKED = {"deletion": ("deletion AUC", "lower"), "insertion": ("insertion AUC", "higher"),
           "aopc": ("AOPC", "higher")}


def _say(s: str) -> None:
    print(s, flush=True)


def attribution_grid(d, targets: Tensor, overlays: Dict[str, Tensor]) -> Tensor:
    """One row per test image: the image labelled with its target class, then each overlay."""
    tiles, labels = [], []
    for i in range(d.n_img):
        img = d.data.test_images[i]
        tiles.append(img.expand(3, -1, -1) if img.shape[0] == 1 else img)
        labels.append(f"#{i}: {d.classes[int(targets[i])]}")
        for m, ov in overlays.items():
            tiles.append(ov[i])
            labels.append(m)
    return label_grid(torch.stack(tiles), labels, ncol=len(overlays) + 1, scale=d.up)


def _networks(d) -> List[Tuple[str, str, nn.Module, str]]:
    """``(name, file prefix, model, CAM layer)`` of the survey's network and, when the residual
    section trained it, the residual network."""
    nets = [("the survey's network", "", d.model, d.convs[-1])]
    if getattr(d, "residual", None) is not None:
        nets.append(("the residual network", "residual_", d.residual, RESIDUAL_LAYER))
    return nets


def _no_residual_note(d, sec) -> None:
    if getattr(d, "residual", None) is None:
        sec.notes.append("The residual network is not shown: its section above did not "
                         "train it.")


# --------------------------------------------------------------------------- attribution

def section_attribution_more(d, sec) -> None:
    """Every method of ``ALL_ATTRIBUTION_METHODS`` as overlays, on each network."""
    for name, prefix, model, layer in _networks(d):
        targets = predict(model, d.test_x).to(d.dev)
        overlays, secs = {}, {}
        for m in ALL_ATTRIBUTION_METHODS:
            t0 = time.perf_counter()
            overlays[m] = view_attribution(model, d.test_x, targets, m, layer)[1]
            secs[m] = time.perf_counter() - t0
        d.add(sec, attribution_grid(d, targets, overlays), f"{prefix}attribution_more.png",
              f"{name[0].upper()}{name[1:]}: one row per test image, its predicted class, then "
              f"the first five methods and the {len(MORE_ATTRIBUTION_METHODS)} others "
              f"({', '.join(MORE_ATTRIBUTION_METHODS)}), the CAM family at {layer}; each map "
              "scaled to its own maximum.")
        sec.notes.append(f"Seconds for the {d.n_img} images on {name}: "
                         + ", ".join(f"{m} {s:.2f}" for m, s in secs.items()) + ".")
    _no_residual_note(d, sec)


# --------------------------------------------------------------------------- trust

def _eval_images(d) -> Tensor:
    """The test images the faithfulness metrics average over: more than the figures show
    (4 per figure image, at most 32: 16 with the default ``--images 4``)."""
    n = min(len(d.data.test_labels), 32, 4 * d.n_img)
    return d.data.test_images[:n].to(d.dev)


def _patch(x: Tensor) -> int:
    """Region perturbation's patch: an eighth of the side, or the largest divisor below it."""
    p = max(1, x.shape[-1] // 8)
    while x.shape[-1] % p or x.shape[-2] % p:
        p -= 1
    return p


def _faithfulness(d, model: nn.Module, layer: str, x: Tensor, t: Tensor):
    """Per method: raw maps, mean deletion and insertion curves, deletion / insertion AUC and
    AOPC (means over the images)."""
    maps, dele, ins, scores = {}, {}, {}, {}
    for m in ALL_ATTRIBUTION_METHODS:
        maps[m] = explainer(m, layer)(model, x, t).detach()
        # as RISE (Petsiuk et al.): delete to black, insert into a blurred copy
        dc = M.deletion_insertion(model, x, maps[m], t, steps=CURVE_STEPS, baseline="black",
                                  batch_size=_BATCH, curves="deletion")
        ic = M.deletion_insertion(model, x, maps[m], t, steps=CURVE_STEPS, baseline="blur",
                                  batch_size=_BATCH, curves="insertion")
        rp = M.region_perturbation(model, x, maps[m], t, patch_size=_patch(x), regions=16,
                                   seed=d.args.seed, batch_size=_BATCH)
        dele[m], ins[m] = dc.deletion.mean(0).tolist(), ic.insertion.mean(0).tolist()
        scores[m] = {"deletion": float(dc.deletion_auc.mean()),
                     "insertion": float(ic.insertion_auc.mean()), "aopc": float(rp.aopc.mean())}
    return maps, dele, ins, scores


def _ranking(scores: Dict[str, Dict[str, float]]) -> List[Tuple[str, float]]:
    """Methods by their mean rank over the three metrics (1 = best), best first."""
    ranks = {m: 0.0 for m in scores}
    for k, (_, better) in _RANKED.items():
        order = sorted(scores, key=lambda m: scores[m][k], reverse=better == "higher")
        for r, m in enumerate(order, 1):
            ranks[m] += r / len(_RANKED)
    return sorted(ranks.items(), key=lambda kv: kv[1])


def _sanity(d, sec, maps: Dict[str, Tensor]) -> None:
    """Cascading randomization (Adebayo et al. 2018) of the survey's network for every method:
    the table of rank correlation and SSIM per layer, and image #0's randomized maps."""
    model, layer = d.model, d.convs[-1]
    n = d.n_img
    x, t = d.test_x, d.preds[:n].to(d.dev)
    layers = M.randomization_order(model)
    res = {m: M.model_randomization(model, x, t, explainer(m, layer), layers=layers,
                                    seed=d.args.seed, maps=maps[m][:n])
           for m in ALL_ATTRIBUTION_METHODS}
    header = ["method"] + [f"{l} {k}" for l in layers for k in ("rho", "SSIM")]
    rows = [[m] + [float(v) for j in range(len(layers))
                   for v in (r.spearman[j].mean(), r.ssim[j].mean())]
            for m, r in res.items()]
    d.add(sec, plot_table(header, rows, title=f"Cascading randomization of the survey's "
                          f"network, {n} test images: similarity to the original map"),
          "trust_sanity_table.png",
          "The sanity check of Adebayo et al. (2018): the parameters of "
          f"{', '.join(layers)} are re-drawn one layer at a time and cumulatively, top first "
          "(column 'conv2' has every layer down to conv2 random). rho: Spearman rank "
          "correlation, SSIM: structural similarity, of the absolute maps, mean over the "
          "images. A map that stays similar once the weights are random does not explain "
          "the trained network.")
    last = len(layers) - 1
    sec.notes.append("Rank correlation with every layer randomized: " + ", ".join(
        f"{m} {float(r.spearman[last].mean()):.2f}" for m, r in res.items()) + ".")
    img = d.data.test_images[:1]
    tiles, labels = [], []
    for m, r in res.items():
        heat = attribution_heat(m, torch.cat([maps[m][:1], r.maps[:, 0]]))
        tiles.append(overlay(img.expand(len(heat), -1, -1, -1), heat, alpha=0.55).float().cpu())
        labels += [m] + [f"to {l}" for l in layers]
    d.add(sec, label_grid(torch.cat(tiles), labels, ncol=len(layers) + 1, scale=3),
          "trust_sanity_maps.png",
          f"Test image #0, one row per method: the original map, then the map after "
          f"randomizing {layers[0]}, then down to each next layer ('to {layers[-1]}': every "
          "layer random). Adebayo et al. found that guided backprop and the deconvnet barely "
          "change while the top layers are random (they reconstruct the image) and saliency "
          "and Grad-CAM do; compare the rows here, and the table's numbers.")


def section_trust(d, sec) -> None:
    """Deletion / insertion curves and the ranking table per network, then the sanity check."""
    x_all = _eval_images(d)
    survey_maps = None
    for name, prefix, model, layer in _networks(d):
        t = predict(model, x_all).to(d.dev)
        maps, dele, ins, scores = _faithfulness(d, model, layer, x_all, t)
        if survey_maps is None:
            survey_maps = maps
        for kind, series, better in (("deletion", dele, "lower"), ("insertion", ins, "higher")):
            d.add(sec, plot_curves(series, title=f"{kind} on {name}: target probability",
                                   xlabel=f"step (1/{CURVE_STEPS} of the pixels each)",
                                   ylim=(0.0, 1.0), legend="right"),
                  f"trust_{prefix}{kind}.png",
                  f"{kind.capitalize()} curves on {name} (Petsiuk et al. 2018), mean over "
                  f"{len(x_all)} test images and their predicted classes: the class "
                  f"probability as the most important pixels of each map are "
                  + ("set to black (each image's minimum), as RISE deletes" if kind == "deletion"
                     else "copied into a blurred copy of the image, as RISE inserts")
                  + f"; a {better} curve is better.")
        ranked = _ranking(scores)
        rows = [[m] + [scores[m][k] for k in _RANKED] + [r] for m, r in ranked]
        d.add(sec, plot_table(["method"] + [f"{h} ({b})" for h, b in _RANKED.values()]
                              + ["mean rank"], rows,
                              title=f"Faithfulness on {name}, {len(x_all)} test images",
                              best=[None] + [b for _, b in _RANKED.values()] + ["lower"]),
              f"trust_{prefix}ranking.png",
              f"The methods on {name} ranked by their mean rank over deletion AUC (to black; "
              "lower is better), insertion AUC (into a blurred copy; higher) and AOPC (region perturbation, Samek et al. "
              f"2017: {_patch(x_all)}-pixel patches, most relevant first; higher); the best of "
              "each column shaded.")
        sec.notes.append(f"Ranking on {name} (best first): "
                         + ", ".join(f"{m} {r:.1f}" for m, r in ranked) + ".")
    _no_residual_note(d, sec)
    _sanity(d, sec, survey_maps)


# --------------------------------------------------------------------------- feature vis

def _second_network(d) -> Tuple[nn.Module, str, str]:
    """``(network, its penultimate layer, description)``: the residual network when the demo
    trained it, otherwise a second cifar_cnn trained with another seed."""
    if getattr(d, "residual", None) is not None:
        return d.residual, "pool", "the residual network (trained independently above)"
    epochs = min(d.args.epochs, 8)
    torch.manual_seed(d.args.seed + 1)
    model = cifar_cnn(**d.model_kwargs).to(d.dev)
    train(model, d.data, TrainConfig(epochs=epochs, seed=d.args.seed + 1), progress=d.progress,
          log=None)
    model.eval()
    acc = evaluate(model, d.data.test_images, d.data.test_labels)
    return model, "relu", (f"a second cifar_cnn trained with seed {d.args.seed + 1} "
                           f"({epochs} epochs, test accuracy {acc:.2%})")


def _parameterizations(d) -> List[Tuple[str, Callable[[list], Tuple[Tensor, Optional[Tensor]]]]]:
    """``(name, make)``: ``make(objectives)`` -> ``(images, MACO transparency or None)``."""
    kw = dict(size=d.size, steps=d.args.steps, seed=d.args.seed, progress=d.progress)

    def am(param, **extra):
        return lambda objs: (view_actmax(d.model, objs, lr=0.05, param=param, **kw, **extra),
                             None)

    def maco(objs):
        pad = max(1, d.size // 16)
        res = maco_fv(d.model, objs, spectrum=image_spectrum(d.data.train_images),
                      color=color_correlation(d.data.train_images),
                      transforms=[Pad(pad, mode="replicate"), Jitter(2 * pad)], **kw)
        return res.images.detach().float().cpu(), res.transparency.detach().float().cpu()

    out = [("pixel", am("pixel")), ("fourier", am("fourier")), ("maco", maco)]
    out += [(f"generator {layer}", am("generator", generator=inv))
            for layer, inv in d.inverters.items()]
    return out


def _transparency_grid(d, images: Tensor, transparency: Tensor) -> Tensor:
    """MACO's images, their transparency maps and the images seen through them: 3 rows."""
    a = transparency.sum(1, keepdim=True)
    flat = a.flatten(1)
    a = ((flat - flat.amin(1, keepdim=True))
         / (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True)).clamp_min(1e-12)).view_as(a)
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    seen = rgb * a + (1 - a)  # the image where the gradient went, white elsewhere
    rows = torch.cat([rgb, a.expand(-1, 3, -1, -1), seen])
    labels = ([f"{c}" for c in d.classes] + [f"{c}: transparency" for c in d.classes]
              + [f"{c}: seen through" for c in d.classes])
    return label_grid(rows, labels, ncol=len(images), scale=d.up)


def section_feature_vis_quality(d, sec) -> None:
    """Class images of each parameterization, their transferability and plausibility in a
    second network, and MACO's transparency maps."""
    other, layer, desc = _second_network(d)
    classes = list(range(d.data.num_classes))
    objs = [O.class_logit(c) for c in classes]
    real_x, real_y = d.data.test_images, d.data.test_labels
    rows, tiles, labels, maco = [], [], [], None
    for name, make in _parameterizations(d):
        t0 = time.perf_counter()
        imgs, transparency = make(objs)
        secs = (time.perf_counter() - t0) / len(objs)
        with torch.no_grad():
            p = d.model(imgs.to(d.dev)).softmax(-1).diagonal().cpu()
        tr = float(M.transferability(imgs, classes, other))
        pl = float(M.plausibility(imgs, classes, real_x, real_y, other, layer).score.mean())
        rows.append([name, float(p.mean()), tr, pl, secs])
        tiles.append(imgs)
        short = name.replace("generator", "gen.")  # the label fits under a 128 px tile
        labels += [f"{c}: {short} p={float(v):.2f}" for c, v in zip(d.classes, p)]
        if transparency is not None:
            maco = (imgs, transparency)
    n_cls = len(classes)
    d.add(sec, label_grid(torch.cat(tiles).clamp(0, 1), labels, ncol=n_cls, scale=d.up),
          "fv_quality_classes.png",
          f"One row per parameterization ({', '.join(r[0] for r in rows)}): the image that "
          f"maximizes each class logit of the survey's network ({d.args.steps} Adam steps, "
          "same seed), with the network's probability of the class under each. MACO keeps "
          "the Fourier magnitude of the training images (vis.image_spectrum) and their colour "
          "correlation, and optimizes the phase only.")
    d.add(sec, plot_table(["parameterization", "p(class), this net", "transferability",
                           "plausibility", "s / image"], rows,
                          title=f"Feature visualization quality: {n_cls} class images each",
                          best=[None, "higher", "higher", "higher", "lower"]),
          "fv_quality_table.png",
          f"Transferability: the share of the class images that {desc} assigns to their class. "
          f"Plausibility: in its penultimate layer ({layer}), the cosine similarity of each "
          "image to the mean of the real test images of its class minus that to the other "
          "classes' means (Fel et al. 2023); higher is more natural.")
    sec.notes.append("Transferability / plausibility: " + ", ".join(
        f"{r[0]} {r[2]:.2f} / {r[3]:+.3f}" for r in rows) + ".")
    if not d.inverters:
        sec.notes.append("The generator prior is not shown: the learned inverters were not "
                         "trained (see 'Learned inverters' above).")
    if maco is not None:
        d.add(sec, _transparency_grid(d, *maco), "fv_maco_transparency.png",
              "MACO (Fel et al. 2023): top, the class images; middle, the transparency map "
              "of each (the accumulated |gradient| of the objective per pixel over the "
              "optimization: where the network looked); bottom, each image shown through its "
              "transparency (white where the gradient never went).")
