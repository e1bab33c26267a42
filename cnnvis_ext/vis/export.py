"""Image export (Pillow) and heat maps of attributions, with built-in colour maps.

No matplotlib: the colour maps are closed-form piecewise-linear functions.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io import atomic_write
from .views import make_grid

__all__ = ["COLORMAPS", "colormap", "heatmap", "overlay", "to_uint8", "save_image"]


def _jet(t: Tensor) -> Tensor:
    return torch.stack([(1.5 - (4 * t - 3).abs()).clamp(0, 1),
                        (1.5 - (4 * t - 2).abs()).clamp(0, 1),
                        (1.5 - (4 * t - 1).abs()).clamp(0, 1)], dim=-3)


def _hot(t: Tensor) -> Tensor:
    return torch.stack([(3 * t).clamp(0, 1), (3 * t - 1).clamp(0, 1), (3 * t - 2).clamp(0, 1)], dim=-3)


def _gray(t: Tensor) -> Tensor:
    return torch.stack([t, t, t], dim=-3)


def _bwr(t: Tensor) -> Tensor:
    # blue (0) -> white (0.5) -> red (1)
    one = torch.ones_like(t)
    r = torch.where(t < 0.5, 2 * t, one)
    g = torch.minimum(2 * t, 2 - 2 * t)
    b = torch.where(t > 0.5, 2 - 2 * t, one)
    return torch.stack([r, g, b], dim=-3).clamp(0, 1)


#: Built-in colour maps: value in [0, 1] -> RGB in [0, 1].
COLORMAPS = {"jet": _jet, "hot": _hot, "gray": _gray, "bwr": _bwr}


def colormap(values: Tensor, cmap: str = "jet") -> Tensor:
    """Map values in [0, 1] of shape ``(..., H, W)`` to RGB ``(..., 3, H, W)``.

    ``cmap``: ``"jet"``, ``"hot"``, ``"gray"`` or ``"bwr"`` (diverging, for signed maps).
    """
    if cmap not in COLORMAPS:
        raise ValueError(f"cmap: expected one of {sorted(COLORMAPS)}, got {cmap!r}")
    if not isinstance(values, Tensor) or values.dim() < 2:
        raise ValueError("values: expected a tensor (..., H, W)")
    v = values.float() if not values.is_floating_point() else values
    return COLORMAPS[cmap](v.clamp(0, 1))


def heatmap(attribution: Tensor, cmap: Optional[str] = None, *, reduce: str = "absmax",
            signed: bool = False) -> Tensor:
    """Colour an attribution map.

    Args:
        attribution: ``(N, C, H, W)`` (channels reduced with ``reduce``) or ``(N, H, W)``.
        cmap: colour map (default ``"jet"``, or ``"bwr"`` when ``signed``).
        reduce: channel reduction: ``"absmax"`` (saliency: max over channels of
            the absolute value), ``"sum"`` (LRP: relevance per pixel), ``"max"``,
            ``"mean"``.
        signed: keep the sign; each map is scaled to [-1, 1] by its largest
            magnitude and mapped to [0, 1] (0 at 0.5). Otherwise each map is
            scaled to [0, 1] by its min and max.

    Returns:
        ``(N, 3, H, W)`` RGB in [0, 1].
    """
    a = attribution
    if not isinstance(a, Tensor):
        raise TypeError(f"attribution: expected a Tensor, got {type(a).__name__}")
    a = a.detach().float() if not a.is_floating_point() else a.detach()
    if a.dim() == 2:
        a = a.unsqueeze(0)
    if a.dim() == 4:
        if reduce == "absmax":
            a = a.abs().amax(1)
        elif reduce == "sum":
            a = a.sum(1)
        elif reduce == "max":
            a = a.amax(1)
        elif reduce == "mean":
            a = a.mean(1)
        else:
            raise ValueError(f"reduce: expected 'absmax', 'sum', 'max' or 'mean', got {reduce!r}")
    if a.dim() != 3:
        raise ValueError(f"attribution: expected (N, C, H, W) or (N, H, W), got shape "
                         f"{tuple(attribution.shape)}")
    tiny = torch.finfo(a.dtype).tiny
    if signed:
        m = a.flatten(1).abs().amax(1).clamp_min(tiny).reshape(-1, 1, 1)
        v = 0.5 + 0.5 * a / m
    else:
        lo = a.flatten(1).amin(1).reshape(-1, 1, 1)
        hi = a.flatten(1).amax(1).reshape(-1, 1, 1)
        v = (a - lo) / (hi - lo).clamp_min(tiny)
    return colormap(v, cmap or ("bwr" if signed else "jet"))


def overlay(image: Tensor, attribution: Tensor, alpha: float = 0.5, cmap: Optional[str] = None,
            **heatmap_kwargs) -> Tensor:
    """Blend the heat map of ``attribution`` over ``image``.

    Args:
        image: ``(N, C, H, W)`` or ``(C, H, W)`` in [0, 1], C = 1 or 3.
        attribution: as :func:`heatmap`; resized (bilinear) to the image size.
        alpha: weight of the heat map.
        cmap, heatmap_kwargs: passed to :func:`heatmap`.

    Returns:
        ``(N, 3, H, W)`` in [0, 1].
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    img = image.unsqueeze(0) if image.dim() == 3 else image
    if img.dim() != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"image: expected (N, 1|3, H, W) or (1|3, H, W), got shape {tuple(image.shape)}")
    heat = heatmap(attribution, cmap, **heatmap_kwargs).to(img.device)
    if heat.shape[0] != img.shape[0]:
        if img.shape[0] == 1:
            img = img.expand(heat.shape[0], -1, -1, -1)
        else:
            raise ValueError(f"attribution: {heat.shape[0]} maps for {img.shape[0]} images")
    if heat.shape[-2:] != img.shape[-2:]:
        heat = F.interpolate(heat, size=img.shape[-2:], mode="bilinear", align_corners=False)
    img = img.detach().to(heat.dtype).clamp(0, 1)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    return ((1 - alpha) * img + alpha * heat).clamp(0, 1)


def to_uint8(tensor: Tensor) -> Tensor:
    """``(C, H, W)``/``(H, W)`` float in [0, 1] (clamped) or uint8 -> ``(H, W, C)`` uint8 on the CPU."""
    t = tensor.detach()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
        raise ValueError(f"tensor: expected (C, H, W) with C in 1, 3, 4 or (H, W), got shape "
                         f"{tuple(tensor.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)
    return t.permute(1, 2, 0).contiguous().cpu()


def save_image(tensor: Union[Tensor, list], path: Union[str, os.PathLike], *, format: Optional[str] = None,
               quality: int = 95, nrow: int = 8, padding: int = 2, normalize: Optional[str] = None,
               channels: str = "auto") -> str:
    """Write an image or a batch (as a grid) with Pillow, atomically.

    The file is written to a temporary file in the same directory and moved
    into place with :func:`os.replace`, so readers never see a partial file.

    Args:
        tensor: ``(C, H, W)``/``(H, W)`` float in [0, 1] or uint8, or a batch
            ``(N, C, H, W)`` / list, tiled with :func:`make_grid`.
        path: destination; the format follows the extension (``.png``,
            ``.jpg``/``.jpeg``, ...) unless ``format`` is given.
        quality: JPEG quality.
        nrow, padding, normalize: for batches, as :func:`make_grid`;
            ``normalize`` also applies to a single image.
        channels: how an image of other than 1 or 3 channels is shown
            (:func:`~cnnvis_ext.vis.views.channel_view`): ``"auto"`` (default) its channels
            side by side in grey, ``"rgb"`` a projection on three principal components,
            ``"rgba"`` 4 channels as colour and alpha.

    Returns:
        The path written, as a string.
    """
    from PIL import Image

    if isinstance(tensor, (list, tuple)) or (isinstance(tensor, Tensor) and tensor.dim() == 4):
        tensor = make_grid(tensor, nrow=nrow, padding=padding, normalize=normalize,
                           channels=channels)
    elif not isinstance(tensor, Tensor):
        raise TypeError(f"tensor: expected a Tensor or a list of them, got {type(tensor).__name__}")
    elif normalize is not None or (tensor.dim() == 3 and tensor.shape[0] not in (1, 3)):
        tensor = make_grid(tensor.unsqueeze(0) if tensor.dim() == 3 else tensor[None, None],
                           nrow=1, padding=0, normalize=normalize, channels=channels)
    arr = to_uint8(tensor).numpy()
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    img = Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode=mode)
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = format or Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"path: cannot infer an image format from {path!r}; give format= "
                         "(e.g. 'PNG' or 'JPEG')")
    if fmt.upper() == "JPEG" and mode == "RGBA":
        img = img.convert("RGB")
    kw = {"quality": int(quality)} if fmt.upper() == "JPEG" else {}
    atomic_write(path, lambda f: img.save(f, format=fmt, **kw))
    return path
