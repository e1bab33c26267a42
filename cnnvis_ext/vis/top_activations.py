"""Zeiler & Fergus's top-k grids: the images that most activate each unit, with projections.

:func:`top_activations` scans a dataset once, keeps each unit's ``k``
strongest activations, and projects them to pixel space with
:func:`~cnnvis_ext.vis.deconvnet`; under ``torch.distributed`` the scan is split
across ranks and merged to the result of a one-process scan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed as _dist
from .. import graph
from .._modules import get_layer, model_device_dtype
from ._common import check_model, eval_mode
from .deconvnet import (_feature_map, _is_module_chain, _project, _project_entries,
                        _receptive_box, _trace, _units)

__all__ = ["top_activations", "TopActivations"]


@dataclass
class TopActivations:
    """The data of Zeiler & Fergus's top-k grids, for ``U`` units and ``k`` images each.

    Attributes:
        units: (U,) channel indices of the layer.
        values: (U, k) strongest activation of the unit in each image, best first.
        indices: (U, k) dataset index of each image (ties: the lower index first).
        locations: (U, k, 2) (row, col) of the activation in the layer's map.
        boxes: (U, k, 4) receptive field in the input, (top, left, bottom, right), clipped.
        patches: (U, k, C, rh, rw) input patches under the receptive field (zero outside).
        projections: (U, k, C, H, W) deconvnet projections of each activation.
    """
    units: Tensor
    values: Tensor
    indices: Tensor
    locations: Tensor
    boxes: Tensor
    patches: Tensor
    projections: Optional[Tensor]


def _batches(dataset, batch_size: int):
    """Yield image batches from a Dataset (items: image or (image, ...)) or an iterable of batches."""
    if isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__"):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        total = len(loader)
    else:
        loader = dataset
        total = len(dataset) if hasattr(dataset, "__len__") else None
    def gen():
        for b in loader:
            if isinstance(b, (tuple, list)):
                b = b[0]
            if not isinstance(b, Tensor):
                raise TypeError(f"dataset: expected batches of image tensors, got {type(b).__name__}")
            yield b if b.dim() == 4 else b.unsqueeze(0)
    return gen(), total


@torch.no_grad()
def top_activations(model: nn.Module, layer: str, dataset, k: int = 9, *,
                    units: Optional[Union[int, Sequence[int], Tensor]] = None,
                    batch_size: int = 64, project: bool = True,
                    progress: bool = True, distributed: Optional[bool] = None) -> TopActivations:
    r"""The ``k`` images that most strongly activate each unit of ``layer``, with projections.

    Scans ``dataset`` once, keeping for every unit (channel) its ``k``
    strongest activations (the channel's spatial maximum in an image, its
    location and the image's index); ties are broken by the lower dataset
    index. Memory stays bounded by one batch plus the ``U * k`` kept images
    (for a map-style :class:`~torch.utils.data.Dataset` the kept images are
    re-read by index instead of stored). Then projects every kept activation
    to pixel space with :func:`deconvnet` (batched) and cuts the input patch
    under its receptive field: the data of Zeiler & Fergus's top-9 grids.

    Args:
        model: as for :func:`deconvnet`.
        layer: layer name.
        dataset: a map-style Dataset of images (or of ``(image, label)``), or
            any iterable of image batches ``(B, C, H, W)`` (or tuples whose
            first element is one).
        k: images per unit.
        units: channels to rank; all by default.
        batch_size: batch size of the scan (map-style datasets) and of the
            projections.
        project: compute the deconvnet projections.
        progress: show a tqdm progress bar.
        distributed: split the scan across the ranks of the default
            ``torch.distributed`` process group and merge the per-unit lists with
            collectives (every rank gets the result of a one-process scan; see
            :func:`cnnvis_ext.distributed.distributed_top_activations`).
            ``None`` (default): when a process group with several ranks is initialized.

    Returns:
        :class:`TopActivations`.
    """
    if distributed is None or distributed:
        if distributed or (_dist.is_distributed() and _dist.get_world_size() > 1):
            return _dist.distributed_top_activations(
                top_activations, model, layer, dataset, k, units=units, batch_size=batch_size,
                project=project, progress=progress)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    check_model(model)
    get_layer(model, layer)
    with eval_mode(model):
        return _top_activations(model, layer, dataset, k, units, batch_size, project, progress)


def _field(model: nn.Module, layer: str) -> Optional[graph.ReceptiveField]:
    """The layer's receptive field from the traced graph; None (the whole image) for a model
    that cannot be traced."""
    try:
        gm = graph.trace(model)
        return graph.receptive_field(gm, graph.layer_node(gm, layer))
    except (graph.GraphTraceError, KeyError):
        return None


def _top_activations(model, layer, dataset, k, units, batch_size, project, progress):
    chain = _is_module_chain(model, layer)
    field = None if chain else _field(model, layer)
    device, dtype = model_device_dtype(model)
    batches, total = _batches(dataset, batch_size)
    map_style = isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__")
    best_v = best_i = best_loc = None
    kept = {}  # dataset index -> image, for iterables only
    seen = 0
    u = None
    steps = None
    for batch in tqdm(batches, total=total, disable=not progress, desc=f"top_activations {layer}"):
        x = batch.to(device=device, dtype=dtype)
        if chain:
            steps, act = _trace(model, layer, x)
        else:
            act = _feature_map(model, x, layer)
        if u is None:
            u = _units(units, act.shape[1], act.device)
            best_v = act.new_full((u.numel(), 0), float("-inf"))
            best_i = torch.zeros(u.numel(), 0, dtype=torch.long, device=act.device)
            best_loc = torch.zeros(u.numel(), 0, dtype=torch.long, device=act.device)
        b, _, h, w = act.shape
        flat = act[:, u].flatten(2)                    # (B, U, HW)
        v, pos = flat.max(dim=2)                       # (B, U)
        idx = torch.arange(seen, seen + b, device=act.device)
        cv = torch.cat([best_v, v.t()], dim=1)
        ci = torch.cat([best_i, idx.expand(u.numel(), b)], dim=1)
        cl = torch.cat([best_loc, pos.t()], dim=1)
        # stable sort: earlier (lower) dataset indices come first among equals
        order = torch.sort(cv, dim=1, descending=True, stable=True).indices[:, :k]
        best_v, best_i, best_loc = cv.gather(1, order), ci.gather(1, order), cl.gather(1, order)
        if not map_style:
            for j in set(best_i.flatten().tolist()) - set(kept):
                if j >= seen:
                    kept[j] = batch[j - seen].clone()
            for j in set(kept) - set(best_i.flatten().tolist()):
                del kept[j]
        seen += b
    if u is None:
        raise ValueError("dataset: no images")
    kk = best_v.shape[1]
    hw = act.shape[-1]
    locs = torch.stack([best_loc // hw, best_loc % hw], dim=-1)
    flat_idx = best_i.flatten().tolist()
    imgs = torch.stack([
        (dataset[j][0] if isinstance(dataset[j], (tuple, list)) else dataset[j]) if map_style
        else kept[j] for j in flat_idx]).to(device=device, dtype=dtype)  # (U*k, C, H, W)
    H, W = imgs.shape[-2:]

    def receptive_box(r, c):  # (top, left, bottom, right), not clipped to the image
        if chain:
            return _receptive_box(steps, r, c)
        if field is None or field.whole:
            return 0, 0, H, W
        return (r * field.stride[0] + field.lo[0], c * field.stride[1] + field.lo[1],
                r * field.stride[0] + field.hi[0] + 1, c * field.stride[1] + field.hi[1] + 1)

    boxes, patches = [], []
    box0 = receptive_box(0, 0)
    rh, rw = box0[2] - box0[0], box0[3] - box0[1]
    for e, (r, c) in enumerate(locs.view(-1, 2).tolist()):
        t, l, b_, rr = receptive_box(r, c)
        patch = imgs.new_zeros(imgs.shape[1], rh, rw)
        ct, cl_, cb, cr = max(t, 0), max(l, 0), min(b_, H), min(rr, W)
        if cb > ct and cr > cl_:
            patch[:, ct - t:cb - t, cl_ - l:cr - l] = imgs[e, :, ct:cb, cl_:cr]
        patches.append(patch)
        boxes.append((ct, cl_, cb, cr))
    projections = None
    if project and not chain:
        projections = _project_entries(model, layer, imgs, u.repeat_interleave(kk),
                                       locs.view(-1, 2), batch_size)
        projections = projections.view(u.numel(), kk, *imgs.shape[1:])
    elif project:
        projections = torch.empty_like(imgs)
        chan = u.repeat_interleave(kk)
        for e0 in range(0, imgs.shape[0], batch_size):
            e1 = min(imgs.shape[0], e0 + batch_size)
            st, a = _trace(model, layer, imgs[e0:e1])
            start = torch.zeros_like(a)
            ar = torch.arange(e1 - e0, device=a.device)
            lc = locs.view(-1, 2)[e0:e1].to(a.device)
            start[ar, chan[e0:e1], lc[:, 0], lc[:, 1]] = a[ar, chan[e0:e1], lc[:, 0], lc[:, 1]]
            projections[e0:e1] = _project(st, start, ar)
        projections = projections.view(u.numel(), kk, *imgs.shape[1:])
    return TopActivations(units=u, values=best_v, indices=best_i, locations=locs,
                          boxes=torch.tensor(boxes, dtype=torch.long).view(u.numel(), kk, 4),
                          patches=torch.stack(patches).view(u.numel(), kk, imgs.shape[1], rh, rw),
                          projections=projections)
