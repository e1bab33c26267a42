"""Splitting work across ranks and merging per-unit top-k lists.

* :func:`shard_indices`: a deterministic ``DistributedSampler``-style split
  (round-robin over blocks, no padding, no duplicates);
* :func:`merge_topk` / :func:`distributed_top_activations`: per-unit top-k
  lists merged across ranks with collectives, ties broken by dataset index,
  identical to a single-process scan.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .comm import all_gather_object, get_rank, get_world_size, raise_if_any_failed

__all__ = ["shard_indices", "merge_topk_lists", "merge_topk", "distributed_top_activations"]


def shard_indices(n: int, rank: Optional[int] = None, world_size: Optional[int] = None, *,
                  block: int = 1) -> List[int]:
    """The items of ``range(n)`` that ``rank`` processes: blocks of ``block`` items dealt round-robin.

    Like :class:`torch.utils.data.DistributedSampler` with ``shuffle=False`` but
    without padding (no item is processed twice, which would corrupt top-k
    lists) and with whole blocks: with ``block = batch_size`` every rank sees
    exactly the batches a single process would see, so per-item results are
    bit-identical to a single-process run. The union over ranks is ``range(n)``.

    Args:
        n: number of items.
        rank, world_size: default: this process's.
        block: items per block (>= 1).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block: expected a positive int, got {block!r}")
    world = get_world_size() if world_size is None else int(world_size)
    r = get_rank() if rank is None else int(rank)
    if world < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size!r}")
    if not 0 <= r < world:
        raise ValueError(f"rank: expected 0..{world - 1}, got {rank!r}")
    out: List[int] = []
    for b0 in range(r * block, n, world * block):
        out.extend(range(b0, min(b0 + block, n)))
    return out


def merge_topk_lists(values: Sequence[Tensor], indices: Sequence[Tensor], k: int
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merge per-unit top-k lists: best value first, ties by the lower index.

    Args:
        values: one ``(U, m_r)`` tensor per list (``m_r`` may differ, may be 0).
        indices: matching ``(U, m_r)`` integer indices (e.g. dataset indices; unique).
        k: entries to keep per unit.

    Returns:
        ``(values, indices, source, column)``, each ``(U, min(k, sum m_r))``:
        the merged lists and, for each entry, the list it came from and its
        column there.
    """
    if len(values) != len(indices) or not values:
        raise ValueError("values, indices: expected the same non-zero number of lists")
    v = torch.cat([t.detach().cpu() for t in values], dim=1)
    i = torch.cat([t.detach().cpu().long() for t in indices], dim=1)
    src = torch.cat([torch.full(t.shape, r, dtype=torch.long) for r, t in enumerate(values)], dim=1)
    col = torch.cat([torch.arange(t.shape[1]).expand(t.shape[0], -1) for t in values], dim=1)
    # lexicographic: index ascending, then a stable sort by value descending
    o1 = torch.sort(i, dim=1, stable=True).indices
    o2 = torch.sort(v.gather(1, o1), dim=1, descending=True, stable=True).indices
    order = o1.gather(1, o2)[:, :k]
    return v.gather(1, order), i.gather(1, order), src.gather(1, order), col.gather(1, order)


def merge_topk(values: Tensor, indices: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Collective merge of this rank's per-unit top-k lists with every other rank's.

    Every rank passes its ``(U, m)`` values and global indices and gets the same
    merged ``(values, indices, source_rank, column)`` (see :func:`merge_topk_lists`),
    equal to the lists one process scanning everything would keep. Outside a
    process group it just sorts the one list.
    """
    parts = all_gather_object((values.detach().cpu(), indices.detach().cpu()))
    return merge_topk_lists([p[0] for p in parts], [p[1] for p in parts], k)


class _Shard(torch.utils.data.Dataset):
    def __init__(self, dataset, idx: List[int]):
        self.dataset, self.idx = dataset, idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, j):
        return self.dataset[self.idx[j]]


def _iter_shard(dataset, block_owner: Callable[[int], bool], global_index: List[int]):
    """Yield the batches of an iterable this rank owns; record their items' global indices."""
    seen = 0
    for b, batch in enumerate(dataset):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        n = x.shape[0] if isinstance(x, Tensor) and x.dim() == 4 else 1
        if block_owner(b):
            global_index.extend(range(seen, seen + n))
            yield batch
        seen += n


def distributed_top_activations(top_activations_fn, model, layer, dataset, k: int = 9, *,
                                units=None, batch_size: int = 64, project: bool = True,
                                progress: bool = True):
    """:func:`cnnvis_ext.top_activations` split across the ranks of the default group.

    Each rank scans its share of the batches (batch ``b`` goes to rank
    ``b % world_size``, so batches are those of a one-process scan) with the
    one-process ``top_activations_fn``, its per-unit lists are merged with
    collectives (ties: lower dataset index first), and the patches and
    projections of the winners are sent by the ranks that computed them. Every
    rank returns the same result, identical to a one-process scan of the
    values, indices, locations, boxes and patches (projections are computed
    in different batches, equal up to float rounding).

    ``top_activations_fn`` is called as ``top_activations_fn(model, layer,
    shard, k, units=, batch_size=, project=, progress=, distributed=False)``
    and returns a dataclass with the fields ``units, values, indices,
    locations, boxes, patches, projections`` (as
    :class:`cnnvis_ext.vis.TopActivations`); the merged result is of the same
    class.
    """
    rank, world = get_rank(), get_world_size()
    map_style = isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__")
    gidx: List[int]
    if map_style:
        gidx = shard_indices(len(dataset), rank, world, block=batch_size)
        local = _Shard(dataset, gidx)
        empty = len(gidx) == 0
    else:
        gidx = []
        local = list(_iter_shard(dataset, lambda b: b % world == rank, gidx))
        empty = len(local) == 0
    res, err = None, None
    if not empty:
        try:
            res = top_activations_fn(model, layer, local, k, units=units, batch_size=batch_size,
                                     project=project, progress=progress and rank == 0,
                                     distributed=False)
        except Exception as e:  # reported on every rank below
            err = e
    raise_if_any_failed(err)
    g = torch.tensor(gidx, dtype=torch.long)
    if res is not None:
        vals, gi = res.values.cpu(), g[res.indices.cpu()]
        meta = (res.units.cpu(), vals, gi, res.locations.cpu(), type(res))
    else:
        meta = None
    metas = all_gather_object(meta)
    have = [m for m in metas if m is not None]
    if not have:
        raise ValueError("dataset: no images")
    units_t, result_type = have[0][0], have[0][4]
    U = units_t.numel()
    vals_l = [m[1] if m is not None else torch.zeros(U, 0) for m in metas]
    idx_l = [m[2] if m is not None else torch.zeros(U, 0, dtype=torch.long) for m in metas]
    v, i, src, col = merge_topk_lists(vals_l, idx_l, k)
    kk = v.shape[1]
    # winners' locations / boxes / patches / projections come from the rank that holds them
    mine = (src == rank).nonzero().tolist()
    payload = None
    if res is not None:
        payload = {(u, j): (res.locations[u, col[u, j]].cpu(), res.boxes[u, col[u, j]].cpu(),
                            res.patches[u, col[u, j]].cpu(),
                            None if res.projections is None else res.projections[u, col[u, j]].cpu())
                   for u, j in mine}
    parts = all_gather_object(payload)
    entry = {}
    for p in parts:
        if p:
            entry.update(p)
    loc = torch.stack([entry[(u, j)][0] for u in range(U) for j in range(kk)]).view(U, kk, 2)
    box = torch.stack([entry[(u, j)][1] for u in range(U) for j in range(kk)]).view(U, kk, 4)
    pat = torch.stack([entry[(u, j)][2] for u in range(U) for j in range(kk)])
    pat = pat.view(U, kk, *pat.shape[1:])
    proj = None
    if project:
        proj = torch.stack([entry[(u, j)][3] for u in range(U) for j in range(kk)])
        proj = proj.view(U, kk, *proj.shape[1:])
    dev = next(iter(model.parameters()), torch.empty(0)).device
    return result_type(units=units_t.to(dev), values=v.to(dev), indices=i.to(dev),
                          locations=loc.to(dev), boxes=box.to(dev), patches=pat.to(dev),
                          projections=None if proj is None else proj.to(dev))

