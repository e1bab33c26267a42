"""Scale-out: visualize every unit and scan large datasets across processes with ``torch.distributed``.

Everything here works with and without an initialized process group: outside
one, ``get_rank() == 0``, ``get_world_size() == 1`` and the collectives are
no-ops, so the same code runs in one process or under ``torchrun``::

    torchrun --nproc_per_node=4 -m cnnvis_ext actmax --model ckpt.pt --layers conv1,conv2 \\
        --all-channels --out DIR

Pieces:

* rank helpers (:func:`get_rank`, :func:`get_world_size`, :func:`init_distributed`):
  Gloo on CPU, NCCL on CUDA, initialized from torchrun's environment;
* :func:`shard_indices`: a deterministic ``DistributedSampler``-style split
  (round-robin over blocks, no padding, no duplicates);
* :func:`offset_seed`: the seed that makes objective ``i`` of a chunk draw the
  random streams of objective ``offset + i`` of the whole job, so an image
  depends only on the seed and its objective, never on the chunking, the rank
  that computed it or the number of ranks;
* :func:`merge_topk` / :func:`distributed_top_activations`: per-unit top-k
  lists merged across ranks with collectives, ties broken by dataset index,
  identical to a single-process scan;
* :class:`JobDir` and :func:`run_units`: a resumable job folder (atomic writes:
  temporary name then ``os.replace``; a manifest of finished work units) and
  the loop that deals work units to ranks, gathers their results on rank 0,
  shows one progress bar for all ranks and turns an exception on any rank
  into an error on every rank (no rank is left waiting in a collective).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import traceback
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed", "get_rank", "get_world_size", "is_main_process", "launched_by_torchrun",
    "default_backend", "init_distributed", "distributed_session", "barrier", "shard_indices",
    "offset_seed", "layer_seed", "merge_topk_lists", "merge_topk", "distributed_top_activations",
    "DistributedJobError", "JobDir", "WorkUnit", "run_units", "atomic_write_bytes", "atomic_save",
]

#: Collective timeout (seconds) when this module initializes the process group;
#: override with ``CNNVIS_DIST_TIMEOUT``.
DEFAULT_TIMEOUT_S = 1800


# --------------------------------------------------------------------------- ranks

def is_distributed() -> bool:
    """Whether a default process group is initialized (torch.distributed available and set up)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group; 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes of the default group; 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) is set."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def default_backend(device: Union[str, torch.device, None] = None) -> str:
    """``"nccl"`` for CUDA devices when NCCL is available, else ``"gloo"``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _timeout() -> datetime.timedelta:
    try:
        s = float(os.environ.get("CNNVIS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        s = DEFAULT_TIMEOUT_S
    return datetime.timedelta(seconds=max(1.0, s))


def init_distributed(device: Union[str, torch.device, None] = None, *,
                     backend: Optional[str] = None) -> bool:
    """Initialize the default process group from torchrun's environment, if launched by it.

    Args:
        device: the device the job computes on; picks the backend (NCCL for CUDA,
            Gloo otherwise) and, for CUDA without an index, ``cuda:LOCAL_RANK``
            becomes the current device.
        backend: force a backend.

    Returns:
        True when this call initialized the group (the caller then owns it and
        should call ``dist.destroy_process_group()``, see :func:`distributed_session`);
        False when a group already existed or the process was not launched by torchrun.
    """
    if is_distributed() or not launched_by_torchrun() or not dist.is_available():
        return False
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(idx)
    dist.init_process_group(backend=backend or default_backend(dev), timeout=_timeout())
    return True


@contextmanager
def distributed_session(device: Union[str, torch.device, None] = None, *,
                        backend: Optional[str] = None):
    """Context manager: :func:`init_distributed` on entry, destroy the group on exit if it made it."""
    owned = init_distributed(device, backend=backend)
    ok = False
    try:
        yield get_world_size()
        ok = True
    finally:
        if owned and is_distributed():
            if ok:  # leave together: no rank tears down connections a peer still uses
                dist.barrier()
            dist.destroy_process_group()


def local_device(device: Union[str, torch.device]) -> torch.device:
    """``cuda`` without an index becomes this rank's GPU (``LOCAL_RANK``); others unchanged."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return dev


def barrier() -> None:
    """``dist.barrier()`` inside a process group, a no-op outside (times out after the group's timeout)."""
    if is_distributed():
        dist.barrier()


def _all_gather_object(obj) -> List[Any]:
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _gather_object(obj, dst: int = 0) -> Optional[List[Any]]:
    if not is_distributed():
        return [obj]
    out: Optional[List[Any]] = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def _broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _reduce_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- sharding and seeds

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


def _stream_mix():
    from .vis._common import _MIX

    return _MIX


def offset_seed(seed: int, offset: int) -> int:
    """The seed under which objective ``i`` of a call draws what objective ``offset + i`` would
    draw under ``seed``.

    The visualization loops seed objective (or image) ``i`` from ``(seed, i)``
    (:func:`cnnvis_ext.vis._common.stream_seed`). Rendering objectives
    ``offset .. offset + n - 1`` of a job in a separate call with
    ``seed=offset_seed(seed, offset)`` gives each of them the random streams it
    has in the whole job, so its image does not depend on how the job was cut
    into chunks or dealt to ranks.
    """
    from .vis._common import stream_seed

    m0, m1, _ = _stream_mix()
    s = (int(seed) + int(offset) * m1 * pow(m0, -1, 1 << 64)) % (1 << 64)
    # guard against a change of the seeding formula: this must hold for every stream
    for stream in (0, 1, 3):
        if stream_seed(s, 0, stream) != stream_seed(seed, offset, stream):
            raise RuntimeError("offset_seed: cnnvis_ext.vis._common.stream_seed changed; "
                               "update cnnvis_ext.distributed.offset_seed")
    return s


def layer_seed(seed: int, layer: str) -> int:
    """A seed for the objectives of ``layer``, mixed from ``seed`` and the layer's name."""
    from .vis._common import stream_seed

    return stream_seed(int(seed), zlib.crc32(layer.encode()), 7)


# --------------------------------------------------------------------------- top-k merge

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
    parts = _all_gather_object((values.detach().cpu(), indices.detach().cpu()))
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
    """
    from .deconv import TopActivations

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
    _raise_if_any_failed(err)
    g = torch.tensor(gidx, dtype=torch.long)
    if res is not None:
        vals, gi = res.values.cpu(), g[res.indices.cpu()]
        meta = (res.units.cpu(), vals, gi, res.locations.cpu())
    else:
        meta = None
    metas = _all_gather_object(meta)
    have = [m for m in metas if m is not None]
    if not have:
        raise ValueError("dataset: no images")
    units_t = have[0][0]
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
    parts = _all_gather_object(payload)
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
    return TopActivations(units=units_t.to(dev), values=v.to(dev), indices=i.to(dev),
                          locations=loc.to(dev), boxes=box.to(dev), patches=pat.to(dev),
                          projections=None if proj is None else proj.to(dev))


# --------------------------------------------------------------------------- failures

class DistributedJobError(RuntimeError):
    """Raised on the ranks of a job whose other rank failed (that rank raises its own error)."""


def _raise_if_any_failed(err: Optional[BaseException], what: str = "") -> None:
    """Collective: every rank learns whether any rank failed; the failed rank re-raises its
    error, the others raise :class:`DistributedJobError` naming it. No rank keeps waiting."""
    if not is_distributed():
        if err is not None:
            raise err
        return
    msg = "" if err is None else f"{type(err).__name__}: {err}"
    flags = _all_gather_object(msg)
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(flags) if m]
    if bad:
        r, m = bad[0]
        raise DistributedJobError(f"rank {r} failed{(' ' + what) if what else ''}: {m}")


# --------------------------------------------------------------------------- job folder

def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary name in the same folder and ``os.replace``:
    a reader (or a resumed job) never sees a partial file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_save(obj, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj, path)`` atomically (see :func:`atomic_write_bytes`)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _spec_digest(spec: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class JobDir:
    """A resumable job's folder: outputs plus ``<name>.manifest.json`` listing finished work units.

    The manifest holds the job's spec (its arguments); a run with the same spec
    skips the units it lists, a run with another spec starts over. Only rank 0
    reads and writes it (see :func:`run_units`); every write is atomic, and a
    unit enters the manifest only after its files are written.

    Args:
        root: the output folder.
        name: the job's name (the manifest is ``root/<name>.manifest.json``).
        spec: JSON-serializable description of the job (what makes two runs the same job).
    """

    def __init__(self, root: Union[str, os.PathLike], name: str, spec: Dict[str, Any]):
        self.root = Path(root)
        self.name = name
        self.spec = json.loads(json.dumps(spec, sort_keys=True, default=str))
        self.digest = _spec_digest(spec)
        self.path = self.root / f"{name}.manifest.json"
        self.done: Dict[str, Any] = {}
        self.resumed = False
        self.restarted = False

    def load(self) -> Dict[str, Any]:
        """Read the manifest (rank 0): the finished units of this spec, ``{}`` otherwise."""
        self.done = {}
        if self.path.is_file():
            try:
                m = json.loads(self.path.read_text())
            except (OSError, ValueError):
                m = {}
            if m.get("digest") == self.digest:
                self.done = {k: v for k, v in m.get("done", {}).items()
                             if all((self.root / f).is_file() for f in v.get("files", []))}
                self.resumed = bool(self.done)
            else:
                self.restarted = True
        return self.done

    def _write(self, complete: bool = False) -> None:
        m = {"version": 1, "job": self.name, "digest": self.digest, "spec": self.spec,
             "complete": complete, "done": self.done}
        atomic_write_bytes(self.path, json.dumps(m, indent=1, sort_keys=True).encode())

    def mark_done(self, key: str, files: Sequence[Union[str, os.PathLike]] = (), **info) -> None:
        """Record a finished unit (after its ``files``, relative to ``root`` or absolute, are written)."""
        rel = [str(Path(f).resolve().relative_to(self.root.resolve())) if Path(f).is_absolute()
               else str(f) for f in files]
        self.done[key] = dict(files=rel, **info)
        self._write()

    def mark_complete(self) -> None:
        self._write(complete=True)


@dataclass
class WorkUnit:
    """One piece of a job: ``key`` (unique, stable across runs), ``size`` (objectives it
    counts for on the progress bar) and ``data`` (what the compute function needs)."""

    key: str
    size: int = 1
    data: Any = None


def run_units(units: Sequence[WorkUnit], compute: Callable[[WorkUnit], Any],
              write: Callable[[WorkUnit, Any], Sequence[Union[str, os.PathLike]]],
              job: Optional[JobDir] = None, *, progress: bool = True, desc: str = "units",
              log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Deal ``units`` to the ranks, compute them, and write them on rank 0 as they finish.

    Rounds of ``world_size`` units: in round ``r`` rank ``q`` computes pending unit
    ``r * world_size + q`` with ``compute(unit)`` (its result must pickle), then
    rank 0 gathers the round's results and calls ``write(unit, result)`` (which
    returns the files it wrote) and records the unit in ``job``'s manifest. The
    units already in the manifest are skipped, so a killed job restarted with
    the same spec loses at most the round in flight.

    Every round ends with a collective check: if ``compute`` raised on a rank
    (or ``write`` on rank 0), that rank re-raises its exception and every other
    rank raises :class:`DistributedJobError` naming it, so the job exits
    non-zero instead of hanging. One tqdm bar on rank 0 counts every rank's
    finished objectives (``unit.size``).

    Returns:
        the manifest's finished units (rank 0; ``{}`` on other ranks).
    """
    rank, world = get_rank(), get_world_size()
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError("units: keys must be unique")
    done: Dict[str, Any] = {}
    if job is not None and rank == 0:
        try:
            done = job.load()
        except Exception as e:  # pragma: no cover - reported below
            done, err0 = {}, e
        else:
            err0 = None
    else:
        err0 = None
    _raise_if_any_failed(err0, "reading the manifest")
    done_keys = set(_broadcast_object(sorted(done), src=0))
    pending = [u for u in units if u.key not in done_keys]
    if log is not None and rank == 0:
        if job is not None and job.restarted:
            log(f"{job.path.name}: written by a different job; starting over")
        if done_keys:
            log(f"resuming: {len(done_keys)} of {len(units)} units already written, "
                f"{len(pending)} to go")
    bar = None
    if rank == 0 and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(u.size for u in units), initial=sum(u.size for u in units
                                                                  if u.key in done_keys),
                   desc=desc + (f" ({world} ranks)" if world > 1 else ""), file=sys.stderr,
                   dynamic_ncols=True)
    write_err: Optional[BaseException] = None
    rounds = (len(pending) + world - 1) // world
    try:
        for r in range(rounds):
            j = r * world + rank
            unit = pending[j] if j < len(pending) else None
            result, err = None, write_err
            if unit is not None and err is None:
                try:
                    result = compute(unit)
                except Exception as e:
                    err = e
                    print(f"[rank {rank}] error in work unit {unit.key!r}:\n"
                          + "".join(traceback.format_exception(type(e), e, e.__traceback__)),
                          file=sys.stderr, flush=True)
            _raise_if_any_failed(err, f"in round {r}")
            results = _gather_object(result, dst=0)
            if rank == 0:
                n = 0
                for q, res in enumerate(results):
                    jq = r * world + q
                    if jq >= len(pending):
                        continue
                    u = pending[jq]
                    try:
                        files = write(u, res)
                        if job is not None:
                            job.mark_done(u.key, files or ())
                            done[u.key] = job.done[u.key]
                        n += u.size
                    except Exception as e:  # reported at the next collective check
                        write_err = e
                        print(f"[rank 0] error writing work unit {u.key!r}:\n"
                              + "".join(traceback.format_exception(type(e), e, e.__traceback__)),
                              file=sys.stderr, flush=True)
                        break
                if bar is not None:
                    bar.update(n)
        _raise_if_any_failed(write_err, "writing outputs")
    finally:
        if bar is not None:
            bar.close()
    return done if rank == 0 else {}
