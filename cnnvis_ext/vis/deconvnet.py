"""Zeiler & Fergus deconvnet projections: :func:`deconvnet`.

A projection keeps only the chosen activations at a layer and maps them back
to pixel space with the deconvnet's rule: max pools unpool with the forward
pass's switches, ReLU-family activations rectify the signal, convolutions and
linear maps (eval BatchNorm, average pooling) are transposed, a residual add
sends the signal down both branches, a concatenation splits it, a gate
multiplies it by its forward value.

Two formulations give the same values:

* on a chain of modules below the layer (Conv2d, ReLU, MaxPool2d, eval
  BatchNorm2d, the fused modules; seen in the model's traced dataflow, so an
  in-place residual add is never mistaken for a chain), each
  Conv2d(+ReLU)(+MaxPool2d) group is one call of
  :func:`cnnvis_ext.ops.unpool_conv_transpose` on the window of the map that
  the unit's receptive field covers, whose sparse path makes the first steps
  nearly free;
* on any other model (residual networks, concatenations, gates, functional
  calls, models that cannot be traced), the gradient of the chosen
  activations with the deconvnet's rule at every ReLU-family activation
  (:func:`~cnnvis_ext.vis.deconvnet_attribution`'s rule), after one forward
  pass per batch of images.

Many units of many images are projected in one batched call: every
(image, unit) pair is an entry of the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import graph, ops
from .._modules import StopForward, forward_until, get_layer, model_device_dtype
from ..graph import fold_batchnorm
from ..nn import ConvReLUPool2d, FoldedBatchNorm2d
from ..ops.common import pair
from ._common import check_float_images, check_input_channels, check_int, eval_mode
from .attribution import _DeconvReLU, _relu_backward

__all__ = ["deconvnet"]

_SUPPORTED = ("Conv2d, ReLU, MaxPool2d, BatchNorm2d (eval), ConvReLUPool2d, ConvReLU2d, "
              "Identity, Dropout (eval) and nn.Sequential nesting")


# ----------------------------------------------------------------------------- tracing

@dataclass
class _Conv:
    name: str
    weight: Tensor
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    in_size: Tuple[int, int]
    out_size: Tuple[int, int]


@dataclass
class _ReLU:
    name: str


@dataclass
class _Pool:
    name: str
    switches: Tensor  # uint8, (N_images, C, H_p, W_p)
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    in_size: Tuple[int, int]


def _conv_padding(conv: nn.Conv2d) -> Tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        tot = [d * (k - 1) for d, k in zip(pair(conv.dilation, "dilation"),
                                           pair(conv.kernel_size, "kernel_size"))]
        if any(t % 2 for t in tot):
            raise ValueError(f"deconvnet: {type(conv).__name__} with padding='same' and an even "
                             "effective kernel (asymmetric padding) is not supported")
        return (tot[0] // 2, tot[1] // 2)
    return pair(conv.padding, "size")


def _leaves(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, ConvReLUPool2d) or (len(m._modules) == 0 and n)]


_CHAIN_MODULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, ConvReLUPool2d, nn.Identity,
                  nn.Dropout, nn.Dropout2d)


def _is_module_chain(model: nn.Module, layer: str) -> bool:
    """Whether the dataflow from the input to ``layer`` is a chain of modules the switch
    formulation handles (each node one module of :data:`_CHAIN_MODULES` taking the output of
    the one before). False for residual adds (in place or not), concatenations, gates,
    functional calls, and for models that cannot be traced."""
    try:
        gm = graph.trace(model)
        node = graph.layer_node(gm, layer)
    except (graph.GraphTraceError, KeyError):
        return False
    modules = dict(gm.named_modules())
    while node.op != "placeholder":
        if node.op != "call_module" or len(node.all_input_nodes) != 1:
            return False
        m = modules[str(node.target)]
        if isinstance(m, ConvReLUPool2d) and (m.activation != "relu" or m.batchnorm_training()):
            return False
        if type(m) not in _CHAIN_MODULES and not isinstance(m, (ConvReLUPool2d, FoldedBatchNorm2d)):
            return False
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return False
        if isinstance(m, nn.MaxPool2d) and pair(m.dilation, "dilation") != (1, 1):
            return False
        below = node.all_input_nodes[0]
        if isinstance(m, nn.BatchNorm2d) and not (
                below.op == "call_module" and type(modules[str(below.target)]) is nn.Conv2d):
            return False  # folded into the convolution below it, or not at all
        node = below
    return True


def _trace(model: nn.Module, layer: str, x: Tensor):
    """Run ``model(x)`` up to ``layer`` recording the chain of modules below it.

    Returns ``(steps, activation)``: the primitive steps (_Conv/_ReLU/_Pool)
    from the input up, and the output of ``layer``.
    """
    target = get_layer(model, layer)
    records = []
    saved = []
    handles = []
    result = {}

    def leaf_hook(name):
        def hook(mod, inp, out):
            extra = None
            if isinstance(mod, ConvReLUPool2d) or isinstance(mod, nn.MaxPool2d):
                out, extra = out
            records.append((name, mod, inp[0] if inp else None, out, extra))
            return out
        return hook

    def target_hook(_mod, _inp, out):
        result["act"] = out
        raise StopForward()

    try:
        for name, mod in _leaves(model):
            if isinstance(mod, ConvReLUPool2d):
                saved.append((mod, "return_switches", mod.return_switches))
                mod.return_switches = True
            elif isinstance(mod, nn.MaxPool2d):
                saved.append((mod, "return_indices", mod.return_indices))
                mod.return_indices = True
            handles.append(mod.register_forward_hook(leaf_hook(name)))
        handles.append(target.register_forward_hook(target_hook))
        try:
            model(x)
        except StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
        for mod, attr, val in saved:
            setattr(mod, attr, val)
    if "act" not in result:
        raise RuntimeError(f"layer: {layer!r} produced no output during the forward pass")
    act = result["act"]
    if isinstance(act, (tuple, list)):
        act = act[0]

    steps: List[object] = []
    prev = x
    for name, mod, inp, out, extra in records:
        if inp is not prev:
            raise ValueError(
                f"deconvnet: module {name!r} ({type(mod).__name__}) does not take the output of "
                "the module before it; only chains of modules (nn.Sequential-like models) "
                "can be projected")
        prev = out
        if isinstance(mod, ConvReLUPool2d):
            steps.append(_Conv(name, mod.folded_weight_bias()[0], mod.stride, mod.padding, mod.dilation,
                               mod.groups, tuple(inp.shape[-2:]), _conv_size(inp, mod)))
            steps.append(_ReLU(name))
            if (mod.pool_kernel_size, mod.pool_stride, mod.pool_padding) != ((1, 1),) * 2 + ((0, 0),):
                steps.append(_Pool(name, extra, mod.pool_kernel_size, mod.pool_stride,
                                   mod.pool_padding, steps[-2].out_size))
        elif type(mod) is nn.Conv2d:
            if mod.padding_mode != "zeros":
                raise ValueError(f"deconvnet: module {name!r} (Conv2d) has padding_mode="
                                 f"{mod.padding_mode!r}; only 'zeros' is supported")
            steps.append(_Conv(name, mod.weight, pair(mod.stride, "size"), _conv_padding(mod),
                               pair(mod.dilation, "size"), mod.groups, tuple(inp.shape[-2:]),
                               tuple(out.shape[-2:])))
        elif isinstance(mod, nn.BatchNorm2d):
            if mod.training or not mod.track_running_stats:
                raise ValueError(f"deconvnet: module {name!r} (BatchNorm2d) must be in eval mode "
                                 "with running statistics to be folded into its convolution")
            if not steps or not isinstance(steps[-1], _Conv) or steps[-1].name.endswith("+bn"):
                raise ValueError(f"deconvnet: module {name!r} (BatchNorm2d) does not follow a "
                                 "convolution; only BatchNorm2d right after Conv2d is supported")
            c = steps[-1]
            c.weight = fold_batchnorm(c.weight, None, mod)[0]  # the projection uses no bias
            c.name = c.name + "+bn"
        elif isinstance(mod, nn.ReLU):
            steps.append(_ReLU(name))
        elif type(mod) is nn.MaxPool2d:
            if pair(mod.dilation, "size") != (1, 1):
                raise ValueError(f"deconvnet: module {name!r} (MaxPool2d) is dilated; not supported")
            k = pair(mod.kernel_size, "kernel_size")
            s = pair(mod.stride if mod.stride is not None else mod.kernel_size, "stride")
            p = pair(mod.padding, "size")
            sw = ops.indices_to_switches(extra, tuple(inp.shape[-2:]), k, s, p)
            steps.append(_Pool(name, sw, k, s, p, tuple(inp.shape[-2:])))
        elif isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout2d, FoldedBatchNorm2d)):
            if isinstance(mod, (nn.Dropout, nn.Dropout2d)) and mod.training:
                raise ValueError(f"deconvnet: module {name!r} ({type(mod).__name__}) is in "
                                 "training mode; call model.eval()")
        else:
            raise ValueError(f"deconvnet: module {name!r} ({type(mod).__name__}) is not supported; "
                             f"supported: {_SUPPORTED}")
    if prev is not act:
        raise ValueError(f"deconvnet: the output of layer {layer!r} is not the output of the "
                         "chain of modules below it")
    return steps, act


def _conv_size(inp: Tensor, mod) -> Tuple[int, int]:
    k = mod.weight.shape[-2:]
    return tuple((inp.shape[-2 + i] + 2 * mod.padding[i] - mod.dilation[i] * (k[i] - 1) - 1)
                 // mod.stride[i] + 1 for i in range(2))


# ----------------------------------------------------------------------------- projection

def _unpool(v: Tensor, pool: _Pool, sw: Tensor) -> Tensor:
    idx = ops.switches_to_indices(sw, pool.in_size, pool.kernel, pool.stride, pool.padding)
    n, c = v.shape[:2]
    u = v.new_zeros(n, c, pool.in_size[0] * pool.in_size[1])
    u.scatter_add_(2, idx.reshape(n, c, -1), v.reshape(n, c, -1))
    return u.view(n, c, *pool.in_size)


# A projection from one unit is nonzero only inside the unit's receptive
# field. _project therefore carries, for every batch entry, a window of the
# current map (rows [y0, y0 + h), cols [x0, x0 + w) of the full map; all
# entries share h and w, each has its own offset) and runs each deconvnet
# step on the windows only: the switches are cropped per entry, the step is
# computed without conv padding (so the window may overhang the map by the
# padding, where it is zero), and its result is re-windowed to the part that
# lies inside the map below. The windows follow the geometry (the bound of
# the receptive field), so no data-dependent work is needed after the start.


def _rewindow(v: Tensor, y0: Tensor, x0: Tensor, lo_y: Tensor, hi_y: Tensor, lo_x: Tensor,
              hi_x: Tensor, full: Tuple[int, int]):
    """Re-crop ``v`` (windows at ``(y0, x0)`` of a ``full`` map) to the rows ``[lo_y, hi_y)`` and
    columns ``[lo_x, hi_x)`` of each entry (inside the map), with one common window size.

    Returns ``(v', y0', x0')``; values of ``v'`` outside the old window are zero.
    """
    H, W = full
    h, w = v.shape[-2:]
    nh = max(1, int((hi_y - lo_y).max()))
    nw = max(1, int((hi_x - lo_x).max()))
    ny0 = torch.minimum(lo_y, torch.full_like(lo_y, H - nh))
    nx0 = torch.minimum(lo_x, torch.full_like(lo_x, W - nw))
    if nh == h and nw == w and torch.equal(ny0, y0) and torch.equal(nx0, x0):
        return v, y0, x0
    # One slice copy per entry (cheaper than advanced indexing with a mask).
    out = torch.empty((v.shape[0], v.shape[1], nh, nw), dtype=v.dtype, device=v.device,
                      memory_format=torch.channels_last).zero_()
    dy, dx = (ny0 - y0).tolist(), (nx0 - x0).tolist()
    for e in range(v.shape[0]):
        r0, r1 = max(0, -dy[e]), min(nh, h - dy[e])
        c0, c1 = max(0, -dx[e]), min(nw, w - dx[e])
        if r1 > r0 and c1 > c0:
            out[e, :, r0:r1, c0:c1] = v[e, :, r0 + dy[e]:r1 + dy[e], c0 + dx[e]:c1 + dx[e]]
    return out, ny0, nx0


def _valid(y0: Tensor, h: int, H: int) -> Tuple[Tensor, Tensor]:
    """The part ``[lo, hi)`` of windows ``[y0, y0 + h)`` that lies inside ``[0, H)``."""
    lo = y0.clamp(0, H)
    hi = (y0 + h).clamp(0, H)
    return lo, torch.maximum(hi, lo)


def _nonzero_box(v: Tensor):
    """Per entry: the bounding box ``(lo_y, hi_y, lo_x, hi_x)`` of the nonzeros of ``v``."""
    nz = v != 0
    rows = nz.any(dim=3).any(dim=1).cpu()  # (B, H)
    cols = nz.any(dim=2).any(dim=1).cpu()  # (B, W)

    def span(m):
        n = m.shape[1]
        idx = torch.arange(n)
        lo = torch.where(m, idx, n).min(dim=1).values
        hi = torch.where(m, idx + 1, 0).max(dim=1).values
        empty = ~m.any(dim=1)
        return torch.where(empty, 0, lo), torch.where(empty, 0, hi)

    return (*span(rows), *span(cols))


def _crop_step(v: Tensor, y0: Tensor, x0: Tensor, conv: _Conv, pool: Optional[_Pool],
               image_of_entry: Tensor, rectify: bool):
    """One deconvnet step on windows ``v`` at ``(y0, x0)`` of the pooled map.

    Returns the result's windows and their offsets in the conv input map.
    """
    hp, wp = v.shape[-2:]
    full_p = tuple(pool.switches.shape[-2:]) if pool is not None else conv.out_size
    w = conv.weight.to(v.dtype)
    if (hp, wp) == tuple(full_p):
        # The window is the whole map: the plain step (offsets are 0).
        sw = None if pool is None else pool.switches[image_of_entry]
        pk, ps, pp = (((1, 1), (1, 1), (0, 0)) if pool is None
                      else (pool.kernel, pool.stride, pool.padding))
        out = ops.unpool_conv_transpose(v, sw, w, conv.stride, conv.padding, conv.dilation,
                                        conv.groups, pk, ps, pp, conv.out_size, conv.in_size,
                                        rectify=rectify)
        return out, torch.zeros_like(y0), torch.zeros_like(x0)
    if pool is None:
        sw, pk, ps = None, (1, 1), (1, 1)
        uy0, ux0, hu, wu = y0, x0, hp, wp
    else:
        pk, ps, pp = pool.kernel, pool.stride, pool.padding
        sw = torch.stack([pool.switches[i, :, a:a + hp, b:b + wp] for i, a, b in
                          zip(image_of_entry.tolist(), y0.tolist(), x0.tolist())])
        # Windows of the crop start at their full-map origins: no pool padding.
        uy0, ux0 = y0 * ps[0] - pp[0], x0 * ps[1] - pp[1]
        hu, wu = (hp - 1) * ps[0] + pk[0], (wp - 1) * ps[1] + pk[1]
    k = conv.weight.shape[-2:]
    ih = (hu - 1) * conv.stride[0] + conv.dilation[0] * (k[0] - 1) + 1
    iw = (wu - 1) * conv.stride[1] + conv.dilation[1] * (k[1] - 1) + 1
    out = ops.unpool_conv_transpose(v, sw, w, conv.stride, 0, conv.dilation, conv.groups, pk, ps,
                                    0, (hu, wu), (ih, iw), rectify=rectify)
    return out, uy0 * conv.stride[0] - conv.padding[0], ux0 * conv.stride[1] - conv.padding[1]


def _project(steps: Sequence[object], start: Tensor, image_of_entry: Tensor,
             crop: bool = True, skip_dead: bool = True) -> Tensor:
    """Map ``start`` (activations at the top of ``steps``) down to the input.

    With ``crop`` every step runs only on the window of each entry that can be
    nonzero (see above); without, on whole maps. Both give the same values.
    """
    full = tuple(start.shape[-2:])
    zero = torch.zeros(start.shape[0], dtype=torch.long)
    y0 = x0 = zero
    v = start
    if crop:
        box = _nonzero_box(start)
        live = box[1] > box[0]
        if skip_dead and not bool(live.all()):
            # Entries that start from all zeros (a dead unit) project to zeros: skip them.
            idx = live.nonzero().squeeze(1) if bool(live.any()) else torch.zeros(1, dtype=torch.long)
            idx = idx.to(start.device)
            # (with none live, one entry is projected only for the output's shape)
            res = _project(steps, start[idx], image_of_entry[idx], crop, skip_dead=False)
            out = res.new_zeros((start.shape[0],) + tuple(res.shape[1:]))
            if bool(live.any()):
                out[idx] = res
            return out
        v, y0, x0 = _rewindow(v, y0, x0, *box, full)
    i = len(steps) - 1
    while i >= 0:
        # Gather the ReLU / pool steps above the next convolution.
        j, pool, rectify = i, None, False
        while j >= 0 and not isinstance(steps[j], _Conv):
            if isinstance(steps[j], _ReLU):
                rectify = True
            elif pool is None:
                pool = steps[j]
            else:
                break
            j -= 1
        if j >= 0 and isinstance(steps[j], _Conv):
            conv = steps[j]
            v, y0, x0 = _crop_step(v, y0, x0, conv, pool, image_of_entry, rectify)
            full = conv.in_size
            v, y0, x0 = _rewindow(v, y0, x0, *_valid(y0, v.shape[-2], full[0]),
                                  *_valid(x0, v.shape[-1], full[1]), full)
            i = j - 1
            continue
        # No convolution below: apply what was gathered directly, on whole maps.
        v, y0, x0 = _rewindow(v, y0, x0, zero, zero + full[0], zero, zero + full[1], full)
        if rectify:
            v = F.relu(v)
        if pool is not None:
            v = _unpool(v, pool, pool.switches[image_of_entry])
            full = pool.in_size
        i = j
    return _rewindow(v, y0, x0, zero, zero + full[0], zero, zero + full[1], full)[0]


def _select(act: Tensor, units: Tensor, keep) -> Tuple[Tensor, Tensor]:
    """Starting maps for every (image, unit) entry, image-major: (N*U, C, H, W)."""
    n, c, h, w = act.shape
    u = units.numel()
    ch = act[:, units]  # (N, U, H, W)
    if isinstance(keep, str):
        if keep == "max":
            flat = ch.reshape(n, u, h * w)
            pos = flat.argmax(dim=2, keepdim=True)
            sel = torch.zeros_like(flat).scatter_(2, pos, flat.gather(2, pos)).view(n, u, h, w)
        elif keep == "all":
            sel = ch
        else:
            raise ValueError(f"keep: expected 'max', 'all' or a boolean mask, got {keep!r}")
    elif isinstance(keep, Tensor):
        if keep.dtype != torch.bool:
            raise TypeError(f"keep: a mask must be a bool tensor, got {keep.dtype}")
        try:
            mask = torch.broadcast_to(keep.to(act.device), act.shape)
        except RuntimeError:
            raise ValueError(f"keep: mask of shape {tuple(keep.shape)} does not broadcast to the "
                             f"layer's activation shape {tuple(act.shape)}") from None
        sel = torch.where(mask[:, units], ch, torch.zeros((), dtype=ch.dtype, device=ch.device))
    else:
        raise TypeError(f"keep: expected 'max', 'all' or a bool tensor, got {type(keep).__name__}")
    start = act.new_zeros(n, u, c, h, w)
    start[:, torch.arange(u, device=act.device), units] = sel
    return start.view(n * u, c, h, w)


def _units(units, channels: int, device) -> Tensor:
    if units is None:
        return torch.arange(channels, device=device)
    if isinstance(units, int):
        units = [units]
    t = torch.as_tensor(units, device=device)
    if t.dtype == torch.bool or t.is_floating_point() or t.dim() != 1:
        raise TypeError("units: expected an int or a 1-D sequence of channel indices")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= channels):
        raise ValueError(f"units: channel indices must lie in [0, {channels}), got "
                         f"{t.tolist() if t.numel() < 20 else '...'}")
    return t.long()


@torch.no_grad()
def deconvnet(model: nn.Module, layer: str, images: Tensor, *,
              units: Optional[Union[int, Sequence[int], Tensor]] = None,
              keep: Union[str, Tensor] = "max", chunk_size: int = 64,
              crop: bool = True) -> Tensor:
    r"""Zeiler & Fergus deconvnet projections of units of ``layer`` to pixel space.

    Runs the forward pass once, keeps only the chosen activations at ``layer``,
    and projects them down with the deconvnet's rule (see the module
    docstring): unpool with the forward pass's switches, rectify, filter with
    the transposed weights, through whatever dataflow the model has. The
    model runs in eval mode (its flags and parameters' ``requires_grad`` are
    restored; BatchNorm statistics are never updated).

    Every (image, unit) pair is one batch entry of the projection, so all
    units of all images are projected together (in chunks of ``chunk_size``
    entries to bound memory), not in a Python loop per unit.

    Args:
        model: any CNN: chains of modules take the switch formulation, other
            dataflow (residual adds, concatenations, gates, functional calls)
            the gradient formulation. Activations for which the deconvnet has
            no rule (SiLU, Hardswish, GELU, ...) pass the signal unchanged,
            with a warning naming them.
        layer: name of the layer (as in ``model.named_modules()``).
        images: :math:`(N, C, H, W)` input batch.
        units: channel(s) of ``layer`` to project; all channels by default.
        keep: ``"max"``: each chosen channel's strongest activation only;
            ``"all"``: the whole channel; or a bool mask broadcastable to the
            layer's activation :math:`(N, C_l, H_l, W_l)`: exactly the
            activations of the chosen channels where it is True.
        chunk_size: number of (image, unit) entries projected together.
        crop: on chains, compute each step only on the window of each entry
            that can be nonzero (the bound of the unit's receptive field,
            followed layer by layer) instead of on whole maps; the values are
            the same (up to the order of floating-point sums), the cost is that
            of the receptive field, not of the image.

    Returns:
        :math:`(N \cdot U, C, H, W)` reconstructions, image-major: entry
        ``n * U + u`` is unit ``units[u]`` of image ``n`` (``U`` units).

    Example:
        >>> model = fuse(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1)))
        >>> deconvnet(model, "3", torch.randn(2, 3, 32, 32), units=[0, 5]).shape
        torch.Size([4, 3, 32, 32])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    check_float_images(images)
    check_input_channels(model, images)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    get_layer(model, layer)
    device, dtype = model_device_dtype(model)
    x = images.to(device=device, dtype=dtype)
    with eval_mode(model):
        if _is_module_chain(model, layer):
            return _deconvnet_chain(model, layer, x, units, keep, chunk_size, crop)
        return _deconvnet_gradient(model, layer, x, units, keep, chunk_size)


def _feature_map(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of ``layer`` for ``x`` (the forward stops there); it must be a 4-D map."""
    act = forward_until(model, x, [layer])[layer]
    if act.dim() != 4:
        raise ValueError(f"layer: {layer!r} gives a {act.dim()}-D output; a 4-D feature map is "
                         "needed")
    return act


def _keep_for(keep, n_img: int):
    """``keep`` sliced per image when it is a per-image mask, else as given."""
    by_image = isinstance(keep, Tensor) and keep.dim() == 4 and keep.shape[0] == n_img
    return (lambda i0, i1: keep[i0:i1]) if by_image else (lambda i0, i1: keep)


def _deconvnet_gradient(model, layer, x, units, keep, chunk_size) -> Tensor:
    """The gradient formulation: per chunk of images one forward pass, then one backward
    pass per unit with the deconvnet's rule at every ReLU-family activation."""
    n_img = x.shape[0]
    keep_of = _keep_for(keep, n_img)
    out = u = None
    for i0 in range(0, max(n_img, 1), chunk_size):
        i1 = min(n_img, i0 + chunk_size)
        xb = x[i0:i1].detach().requires_grad_(True)
        with torch.enable_grad(), _relu_backward(model, _DeconvReLU, "deconvnet"):
            act = _feature_map(model, xb, layer)
            if u is None:
                u = _units(units, act.shape[1], act.device)
                out = x.new_zeros(n_img * u.numel(), *x.shape[1:])
            starts = _select(act.detach(), u, keep_of(i0, i1)).view(i1 - i0, u.numel(), *act.shape[1:])
            rows = torch.arange(i0, i1, device=x.device) * u.numel()
            live = [j for j in range(u.numel()) if bool(starts[:, j].any())]
            for k, j in enumerate(live):
                (g,) = torch.autograd.grad(act, xb, starts[:, j], retain_graph=k < len(live) - 1)
                out[rows + j] = g
    return out


def _project_entries(model, layer, images, channels, locations, batch_size) -> Tensor:
    """The gradient formulation for entries that each have their own image: entry ``e``
    projects channel ``channels[e]`` at ``locations[e]`` (row, col) of ``images[e]``, in
    batches of ``batch_size`` entries, one forward and one backward pass per batch."""
    out = torch.empty_like(images)
    for e0 in range(0, images.shape[0], batch_size):
        e1 = min(images.shape[0], e0 + batch_size)
        xb = images[e0:e1].detach().requires_grad_(True)
        with torch.enable_grad(), _relu_backward(model, _DeconvReLU, "deconvnet"):
            a = forward_until(model, xb, [layer])[layer]
            ar = torch.arange(e1 - e0, device=a.device)
            ch, loc = channels[e0:e1].to(a.device), locations[e0:e1].to(a.device)
            start = torch.zeros_like(a)
            start[ar, ch, loc[:, 0], loc[:, 1]] = a.detach()[ar, ch, loc[:, 0], loc[:, 1]]
            (g,) = torch.autograd.grad(a, xb, start)
        out[e0:e1] = g
    return out


def _deconvnet_chain(model, layer, x, units, keep, chunk_size, crop) -> Tensor:
    """The switch formulation on a chain of modules (see the module docstring)."""
    device = x.device
    steps, act = _trace(model, layer, x)
    if act.dim() != 4:
        raise ValueError(f"layer: {layer!r} gives a {act.dim()}-D output; a 4-D feature map is needed")
    u = _units(units, act.shape[1], act.device)
    n_img = act.shape[0]
    entries = n_img * u.numel()
    out = torch.empty(entries, *x.shape[1:], dtype=x.dtype, device=x.device)
    keep_of = _keep_for(keep, n_img)
    per_chunk_images = max(1, chunk_size // max(1, u.numel()))
    # Chunk over images when many units, over units when many entries per image.
    if u.numel() <= chunk_size:
        for i0 in range(0, n_img, per_chunk_images):
            i1 = min(n_img, i0 + per_chunk_images)
            start = _select(act[i0:i1], u, keep_of(i0, i1))
            img = torch.arange(i0, i1, device=device).repeat_interleave(u.numel())
            out[i0 * u.numel():i1 * u.numel()] = _project(steps, start, img, crop)
    else:
        for n in range(n_img):
            k = keep_of(n, n + 1)
            order = (_order_by_window(steps, act[n], u, x.shape[-2:])
                     if crop and isinstance(keep, str) and keep == "max" else None)
            for j0 in range(0, u.numel(), chunk_size):
                if order is None:
                    sel = torch.arange(j0, min(u.numel(), j0 + chunk_size), device=device)
                else:
                    sel = order[j0:j0 + chunk_size].to(device)
                start = _select(act[n:n + 1], u[sel], k)
                img = torch.full((sel.numel(),), n, device=device, dtype=torch.long)
                out[n * u.numel() + sel] = _project(steps, start, img, crop)
    return out


def _order_by_window(steps, act: Tensor, units: Tensor, size) -> Tensor:
    """Units ordered by the (height, width) of their strongest activation's receptive field
    clipped to the image, so that a chunk of consecutive units shares a tight window."""
    w_l = act.shape[-1]
    pos = act[units].flatten(1).argmax(1).tolist()
    keys = []
    dead = (act[units].flatten(1).amax(1) == 0).tolist()  # zero projections, skipped
    for p, d in zip(pos, dead):
        t, l, b, r = _receptive_box(steps, p // w_l, p % w_l)
        keys.append((0, 0) if d else (min(b, size[0]) - max(t, 0), min(r, size[1]) - max(l, 0)))
    return torch.tensor(sorted(range(len(pos)), key=lambda j: keys[j]), dtype=torch.long)


def _receptive_box(steps, row: int, col: int):
    """(top, left, bottom, right) (exclusive) of the input region feeding (row, col)."""
    y0, y1, x0, x1 = row, row, col, col  # inclusive
    for s in reversed(steps):
        if isinstance(s, _Conv):
            kh = s.dilation[0] * (s.weight.shape[2] - 1)
            kw = s.dilation[1] * (s.weight.shape[3] - 1)
            y0, y1 = y0 * s.stride[0] - s.padding[0], y1 * s.stride[0] - s.padding[0] + kh
            x0, x1 = x0 * s.stride[1] - s.padding[1], x1 * s.stride[1] - s.padding[1] + kw
        elif isinstance(s, _Pool):
            y0, y1 = y0 * s.stride[0] - s.padding[0], y1 * s.stride[0] - s.padding[0] + s.kernel[0] - 1
            x0, x1 = x0 * s.stride[1] - s.padding[1], x1 * s.stride[1] - s.padding[1] + s.kernel[1] - 1
    return y0, x0, y1 + 1, x1 + 1
