"""Plain views: feature maps, learned kernels, and image grids."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .._modules import capture, forward_until, get_layer, model_device_dtype
from ._common import check_float_images, check_input_channels, check_model, eval_mode

__all__ = ["feature_maps", "kernels", "make_grid"]


def feature_maps(model: nn.Module, image: Tensor, layers: Union[str, Sequence[str], None] = None
                 ) -> Dict[str, Tensor]:
    """The activations of every channel of each of ``layers`` for ``image``.

    Args:
        model: any ``nn.Module`` (run in eval mode, without autograd; the
            forward pass stops after the deepest requested layer).
        image: ``(C, H, W)`` or ``(N, C, H, W)``.
        layers: a name, a list of names (``named_modules()`` names), or
            ``None`` for every leaf module that the forward pass runs.

    Returns:
        ``{name: activation}``, each ``(N, C_l, H_l, W_l)`` (or ``(N, F)``) on
        the model's device; a 3-D ``image`` still gives a batch of one.
    """
    check_model(model)
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a Tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"image: expected (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    check_float_images(image, "image")
    check_input_channels(model, image, "image")
    every_leaf = layers is None
    if every_leaf:
        layers = [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    elif isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers: expected at least one layer name")
    for name in layers:
        get_layer(model, name)
    device, dtype = model_device_dtype(model)
    x = image.to(device=device, dtype=dtype)
    # protect: a later in-place module (ReLU(inplace=True)) must not change a recorded map
    with eval_mode(model), torch.no_grad():
        if every_leaf:
            # the leaves the forward pass runs (a model may define modules it never calls),
            # in the order they first produce their output
            with capture(model, layers, protect=True) as acts:
                model(x)
            return dict(acts)
        acts = forward_until(model, x, layers, protect=True, arg="layers")
    return {n: acts[n] for n in layers}


def _normalize_tiles(t: Tensor) -> Tensor:
    flat = t.flatten(1)
    lo = flat.amin(1).reshape(-1, *([1] * (t.dim() - 1)))
    hi = flat.amax(1).reshape(-1, *([1] * (t.dim() - 1)))
    return (t - lo) / (hi - lo).clamp_min(torch.finfo(t.dtype).eps if t.is_floating_point() else 1)


def kernels(model: nn.Module, layer: str, *, normalize: bool = True) -> Tensor:
    """The learned kernels of a convolution ``layer`` as image tiles.

    A layer whose kernels have 3 (or 1) input channels, usually the first,
    gives one RGB (or grey) tile per output channel: ``(C_out, 3, kH, kW)``.
    Deeper layers give one grey tile per (output, input) channel pair,
    ``(C_out * C_in, 1, kH, kW)`` in output-major order: use
    ``make_grid(tiles, nrow=C_in)`` for one row per output channel.

    Args:
        model: the model.
        layer: a name from ``named_modules()`` of a module with a 4-D
            ``weight`` (Conv2d, fused ConvReLUPool2d/ConvReLU2d, ...).
        normalize: scale each tile to [0, 1] by its own min and max.

    Returns:
        The tiles, on the model's device.
    """
    check_model(model)
    mod = get_layer(model, layer)
    w = getattr(mod, "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 4:
        raise ValueError(f"layer: {layer!r} ({type(mod).__name__}) has no 4-D convolution weight")
    w = w.detach()
    if w.shape[1] not in (1, 3):
        w = w.reshape(-1, 1, *w.shape[2:])
    return _normalize_tiles(w) if normalize else w.clone()


def channel_view(images: Tensor, view: str = "auto") -> Tensor:
    """Images of any channel count as images that can be shown (1 or 3 channels, or RGBA).

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        view: ``"auto"``: 1 and 3 channels as they are, other counts as ``"grid"``;
            ``"grid"``: each image's channels side by side as grey tiles (1 px apart),
            ``(N, 1, H, C*W + C-1)``; ``"rgb"``: the projection on the batch's first three
            principal components of the channel vectors, each scaled to [0, 1] over the batch;
            ``"rgba"``: 4 channels as colour and alpha (only when they are that).

    Returns:
        ``(N, C', H, W')`` with ``C'`` 1, 3 or 4.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected an (N, C, H, W) tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    n, c, h, w = images.shape
    if view == "auto":
        view = "as-is" if c in (1, 3) else "grid"
    if view == "as-is":
        return images
    if view == "rgba":
        if c != 4:
            raise ValueError(f"view: 'rgba' needs 4 channels, the images have {c}")
        return images
    if view == "grid":
        out = images.new_zeros(n, 1, h, c * w + c - 1)
        for k in range(c):
            out[:, 0, :, k * (w + 1):k * (w + 1) + w] = images[:, k]
        return out
    if view == "rgb":
        v = images.detach().float().transpose(0, 1).reshape(c, -1)
        v = v - v.mean(1, keepdim=True)
        u, _, _ = torch.linalg.svd(v, full_matrices=False)
        proj = (u[:, :3].T @ v).reshape(min(3, c), n, h, w).transpose(0, 1)
        if proj.shape[1] < 3:
            proj = torch.cat([proj, proj.new_zeros(n, 3 - proj.shape[1], h, w)], 1)
        lo = proj.amin((0, 2, 3), keepdim=True)
        hi = proj.amax((0, 2, 3), keepdim=True)
        return ((proj - lo) / (hi - lo).clamp_min(1e-12)).to(images.dtype)
    raise ValueError(f"view: expected 'auto', 'grid', 'rgb' or 'rgba', got {view!r}")


def make_grid(tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0,
              normalize: Optional[str] = None, channels: str = "auto") -> Tensor:
    """Tile a batch of images into one image.

    Args:
        tensor: ``(N, C, H, W)``, ``(N, H, W)`` (grey) or a list of equally shaped images.
        nrow: images per row.
        padding: pixels between tiles and around the grid.
        pad_value: value of the padding.
        normalize: ``"tile"`` (each image scaled to [0, 1] by its own min/max),
            ``"all"`` (one scale for the whole batch) or ``None``.
        channels: how images of other than 1 or 3 channels are shown (:func:`channel_view`:
            ``"auto"`` tiles their channels side by side, ``"rgb"`` projects them).

    Returns:
        ``(C, H_grid, W_grid)`` on the input's device.
    """
    if isinstance(tensor, (list, tuple)):
        if not tensor:
            raise ValueError("tensor: expected at least one image")
        tensor = torch.stack([t if t.dim() == 3 else t.unsqueeze(0) for t in tensor])
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor: expected a Tensor or a list of them, got {type(tensor).__name__}")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 4:
        raise ValueError(f"tensor: expected (N, C, H, W) or (N, H, W), got shape {tuple(tensor.shape)}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow: expected a positive int, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding: expected a non-negative int, got {padding!r}")
    t = tensor.detach()
    if not t.is_floating_point():
        t = t.float()
    if normalize == "tile":
        t = _normalize_tiles(t)
    elif normalize == "all":
        lo, hi = t.min(), t.max()
        t = (t - lo) / (hi - lo).clamp_min(torch.finfo(t.dtype).eps)
    elif normalize is not None:
        raise ValueError(f"normalize: expected 'tile', 'all' or None, got {normalize!r}")
    t = channel_view(t, channels)
    n, c, h, w = t.shape
    cols = min(nrow, max(n, 1))
    rows = (n + cols - 1) // cols
    H, W = rows * (h + padding) + padding, cols * (w + padding) + padding
    grid = t.new_full((c, H, W), float(pad_value))
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, y:y + h, x:x + w] = t[i]
    return grid
