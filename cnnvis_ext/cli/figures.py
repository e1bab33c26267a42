"""Figure builders shared by the commands and the demo: each returns tensors (grids,
heat maps, overlays) that a command saves as PNG files and the demo puts in its report."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._modules import get_layer
from ..vis import (FIRST_LAYER, ZBox, activation_maximization, deconvnet_attribution,
                   feature_maps, guided_backprop, guided_grad_cam, integrated_gradients, invert,
                   kernels, lrp, make_grid, occlusion, overlay, saliency, top_activations)
from ..vis.cam import CAM_METHODS
from ..vis.maco import MacoParam
from ..vis.actmax import MACO_LR
from ..vis.transforms import Jitter, Pad
from .errors import CLIError
from .loading import default_conv_layer, model_device

__all__ = ["ATTRIBUTION_METHODS", "MORE_ATTRIBUTION_METHODS", "ALL_ATTRIBUTION_METHODS",
           "NEEDS_PRIOR", "tile", "upscale_for", "out_dir", "fname",
           "view_kernels", "view_feature_maps", "view_actmax", "view_invert", "view_attribution",
           "view_deconv_top"]

#: The first five (the demo's report and `cnnvis evaluate`'s default).
ATTRIBUTION_METHODS = ("saliency", "guided", "deconvnet", "lrp", "gradcam")
#: The CAM family beyond Grad-CAM, Guided Grad-CAM, integrated gradients and occlusion.
MORE_ATTRIBUTION_METHODS = ("gradcampp", "xgradcam", "layercam", "hirescam", "scorecam",
                            "ablationcam", "eigencam", "guidedgradcam", "ig", "occlusion")
ALL_ATTRIBUTION_METHODS = ATTRIBUTION_METHODS + MORE_ATTRIBUTION_METHODS
#: Methods whose maps are (N, H, W) heat maps already (the rest give (N, C, H, W)).
_CAM_NAMES = tuple(CAM_METHODS)
NEEDS_PRIOR = "--param generator needs --prior INVERTER.pt (from `cnnvis train-inverter`)"


# --------------------------------------------------------------------------- output

def tile(images: Tensor, ncol: Optional[int] = None, pad: int = 2,
         normalize: bool = True) -> Tensor:
    """:func:`cnnvis_ext.vis.make_grid` on white, ``ncol`` columns (default: a square), on the CPU;
    ``normalize`` scales each tile to [0, 1] by its own range."""
    images = images.detach().float().cpu()
    ncol = ncol or max(1, math.ceil(math.sqrt(len(images))))
    return make_grid(images, nrow=ncol, padding=pad, pad_value=1.0,
                     normalize="tile" if normalize else None)


def upscale_for(size: int) -> int:
    """Nearest-neighbour scale that makes a ``size``-pixel tile pleasant to look at."""
    return max(1, min(8, 128 // max(size, 1)))


def out_dir(args) -> Path:
    """``--out``, created if needed (a file of that name is an error)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def fname(layer: str) -> str:
    """A layer name made safe for a file name."""
    return re.sub(r"[^\w.-]", "_", layer) or "output"


def _per_image_unit(t: Tensor) -> Tensor:
    """Scale each map of ``(N, ...)`` to [0, 1] by its own min and max."""
    flat = t.reshape(t.shape[0], -1)
    lo, hi = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (t.dim() - 1)
    return (t - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


# --------------------------------------------------------------------------- views

def view_kernels(model: nn.Module, layer: str) -> Tuple[Tensor, str]:
    """Kernels of ``layer`` as one grid, and a caption."""
    tiles = kernels(model, layer).detach().float().cpu()
    w = get_layer(model, layer).weight
    c_out = int(w.shape[0])
    per_input = tiles.shape[0] != c_out  # one grey tile per (output, input) channel pair
    grid = tile(tiles, ncol=int(w.shape[1]) if per_input else None, pad=1, normalize=True)
    kind = ("one row per filter, one tile per input channel" if per_input
            else "RGB" if tiles.shape[1] == 3 else "grey")
    return grid, (f"{layer}: {c_out} kernels of {tiles.shape[-2]}x{tiles.shape[-1]} ({kind}), "
                  "each tile scaled to its own range")


def view_feature_maps(model: nn.Module, image: Tensor, layers: Sequence[str],
                      max_channels: int = 64) -> List[Tuple[str, Tensor, str]]:
    """Feature maps of one image at each spatial layer: ``[(layer, grid, caption)]``."""
    maps = feature_maps(model, image[None] if image.dim() == 3 else image[:1], list(layers))
    out = []
    for layer in layers:
        a = maps[layer].detach().float().cpu()
        a = a[0] if a.dim() == 4 else a
        if a.dim() != 3:
            continue  # not a spatial layer
        c = a.shape[0]
        a = a[:max_channels]
        grid = tile(a.unsqueeze(1), pad=1, normalize=True)
        out.append((layer, grid, f"{layer}: {c} channels of {a.shape[-2]}x{a.shape[-1]}"
                    + (f" (first {max_channels} shown)" if c > max_channels else "")
                    + ", each scaled to its own range"))
    return out


def view_actmax(model: nn.Module, objectives: list, *, size, steps: int, lr: Optional[float],
                param: str, seed: int, progress: bool, batch_size: Optional[int] = None,
                generator: Optional[nn.Module] = None, spectrum=None) -> Tensor:
    """Activation maximization of ``objectives`` (one image each, batched): ``(N, C, H, W)``.

    ``param="generator"`` optimizes a code of ``generator`` (an ``UpConvInverter``)
    instead of pixels (Nguyen et al. 2016): no transforms, the code's own L2 decay
    and clipping to the range of real codes.
    """
    kw: Dict[str, Any] = dict(size=size, steps=steps, lr=lr, param=param, seed=seed,
                              progress=progress, batch_size=batch_size)
    if param == "generator":
        if generator is None:
            raise CLIError(NEEDS_PRIOR)
        kw.update(generator=generator, transforms=None)
    elif param == "maco":  # the phase under a fixed magnitude; the Fourier branch's transforms
        d = max(1, size // 16)
        kw.update(param=MacoParam.factory(spectrum), lr=MACO_LR if lr is None else lr,
                  transforms=[Pad(d, mode="replicate"), Jitter(2 * d)])
    elif param == "pixel":
        kw.update(transforms=None, regularizers=dict(decay=0.01, blur_sigma=0.5, blur_every=4))
    else:
        d = max(1, size // 16)  # pad then crop back: the size stays (FC heads need it)
        kw["transforms"] = [Pad(d, mode="replicate"), Jitter(2 * d)]
    return activation_maximization(model, objectives, **kw).images.detach().float().cpu()


def view_invert(model: nn.Module, image: Tensor, layers: Sequence[str], *, steps: int,
                seed: int, progress: bool) -> Tensor:
    """Reconstructions of one image from each layer: ``(len(layers), C, H, W)``."""
    x = image[None] if image.dim() == 3 else image[:1]
    res = invert(model, list(layers), x, steps=steps, seed=seed, progress=progress)
    return res.images.detach().float().cpu().reshape(len(layers), *x.shape[1:]).clamp(0, 1)


def _lrp_rules(images: Tensor) -> dict:
    """The usual composite: z-box on the first layer (bounded by the data range), gamma on
    the other convolutions, epsilon on the dense layers (Montavon et al. 2019)."""
    lo, hi = float(images.min()), float(images.max())
    return {"default": "epsilon", nn.Conv2d: "gamma", FIRST_LAYER: ZBox(lo, hi)}


def explainer(method: str, layer: Optional[str] = None, flag: str = "--method"):
    """``explain(model, images, targets) -> maps`` for a method name: the raw maps (signed
    attributions; the CAM family's ``(N, H, W)`` maps upsampled to the image; ``(N, T, ...)``
    for ``(N, T)`` targets)."""
    if method not in ALL_ATTRIBUTION_METHODS:
        raise CLIError(f"{flag}: expected one of {', '.join(ALL_ATTRIBUTION_METHODS)}, "
                       f"got {method!r}")
    if method in CAM_METHODS:
        fn = CAM_METHODS[method]
        return lambda m, x, t: fn(m, layer or default_conv_layer(m, last=True), x, t)
    if method == "guidedgradcam":
        return lambda m, x, t: guided_grad_cam(m, layer or default_conv_layer(m, last=True), x, t)
    if method == "lrp":
        return lambda m, x, t: lrp(m, x, t, rules=_lrp_rules(x)).relevance
    if method == "ig":
        return lambda m, x, t: integrated_gradients(m, x, t, steps=32).attributions
    if method == "occlusion":
        # a patch of an eighth of the image, half-overlapping
        return lambda m, x, t: occlusion(m, x, t, window=max(1, x.shape[-1] // 8),
                                         stride=max(1, x.shape[-1] // 16))
    return {"saliency": saliency, "guided": guided_backprop,
            "deconvnet": deconvnet_attribution}[method]


def view_attribution(model: nn.Module, images: Tensor, targets: Tensor, method: str,
                     layer: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Attribution heat maps ``(N, H, W)`` in [0, 1] and their overlays ``(N, 3, H, W)``;
    ``(N, T)`` targets give ``(N, T, H, W)`` and ``(N, T, 3, H, W)``."""
    attr = explainer(method, layer)(model, images, targets.long()).detach().float().cpu()
    multi = targets.dim() == 2
    n, T = images.shape[0], (targets.shape[1] if multi else 1)
    attr = attr.reshape(n * T, *attr.shape[(2 if multi else 1):])
    if method in _CAM_NAMES:
        heat = attr
    elif method == "lrp":
        heat = attr.sum(1).clamp(min=0)  # positive relevance
    elif method == "occlusion":
        heat = attr[:, 0].clamp(min=0)  # where occluding lowers the score
    else:
        # saliency: max |grad| over channels (Simonyan); the others: |signal| summed
        heat = attr.abs().amax(1) if method == "saliency" else attr.abs().sum(1)
    heat = _per_image_unit(heat)
    imgs = images.detach().float().cpu().repeat_interleave(T, 0)
    over = overlay(imgs, heat, alpha=0.55).float().cpu()
    if multi:
        return heat.reshape(n, T, *heat.shape[1:]), over.reshape(n, T, *over.shape[1:])
    return heat, over


def view_deconv_top(model: nn.Module, layer: str, images: Tensor, *, k: int, units: List[int],
                    progress: bool, batch_size: int = 128) -> List[Tuple[int, Tensor, Tensor]]:
    """Zeiler & Fergus top-``k`` grids per unit: ``[(unit, patches_grid, projections_grid)]``."""
    # batches of batch_size from one dataset, not one image at a time
    dataset = torch.utils.data.TensorDataset(images.to(model_device(model)))
    res = top_activations(model, layer, dataset, k=k, units=units, batch_size=batch_size,
                          progress=progress)
    ncol = int(math.ceil(math.sqrt(k)))
    return [(u, tile(res.patches[j], ncol=ncol, pad=1, normalize=True),
             tile(stretch_projections(res.projections[j]), ncol=ncol, pad=1, normalize=False))
            for j, u in enumerate(units)]


def stretch_projections(p: Tensor, q: float = 0.995) -> Tensor:
    """Deconvnet projections ``(K, C, H, W)`` shown each on its own range: the median (the
    background) becomes mid-grey and the ``q`` quantile of the deviation from it full
    contrast, so a projection whose energy sits in a few pixels is not a flat grey tile."""
    flat = p.detach().float().cpu().flatten(1)
    med = flat.median(1, keepdim=True).values
    dev = (flat - med).abs()
    scale = torch.quantile(dev, q, dim=1, keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * ((flat - med) / scale).clamp(-1, 1)).view_as(p)


def attribution_heat(method: str, attr: Tensor) -> Tensor:
    """Heat maps ``(N, H, W)`` in [0, 1] of the raw maps ``(N, ...)`` that ``explainer(method)``
    returns for one target per image, reduced and scaled as :func:`view_attribution` does
    (for maps computed once and shown several times, e.g. beside their randomized versions)."""
    attr = attr.detach().float().cpu()
    if method in _CAM_NAMES:
        heat = attr
    elif method == "lrp":
        heat = attr.sum(1).clamp(min=0)
    elif method == "occlusion":
        heat = attr[:, 0].clamp(min=0)
    else:
        heat = attr.abs().amax(1) if method == "saliency" else attr.abs().sum(1)
    return _per_image_unit(heat)
