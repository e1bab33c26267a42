"""Ranks and collectives that work with and without a process group.

Outside an initialized ``torch.distributed`` group, ``get_rank() == 0``,
``get_world_size() == 1`` and every collective here is a no-op, so the same
code runs in one process or under ``torchrun``. :func:`raise_if_any_failed`
turns an exception on one rank into an error on every rank, so no rank is left
waiting in a collective.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from typing import Any, List, Optional, Union

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed", "get_rank", "get_world_size", "is_main_process", "launched_by_torchrun",
    "default_backend", "init_distributed", "distributed_session", "local_device", "barrier",
    "all_gather_object", "gather_object", "broadcast_object", "DistributedJobError",
    "raise_if_any_failed", "DEFAULT_TIMEOUT_S",
]

#: Collective timeout (seconds) when this module initializes the process group;
#: override with ``CNNVIS_DIST_TIMEOUT``.
DEFAULT_TIMEOUT_S = 1800


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


def all_gather_object(obj) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a process group)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj, dst: int = 0) -> Optional[List[Any]]:
    """Every rank's ``obj`` on rank ``dst`` (``None`` elsewhere; ``[obj]`` outside a group)."""
    if not is_distributed():
        return [obj]
    out: Optional[List[Any]] = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself outside a group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- failures

class DistributedJobError(RuntimeError):
    """Raised on the ranks of a job whose other rank failed (that rank raises its own error)."""


def raise_if_any_failed(err: Optional[BaseException], what: str = "") -> None:
    """Collective: every rank learns whether any rank failed; the failed rank re-raises its
    error, the others raise :class:`DistributedJobError` naming it. No rank keeps waiting."""
    if not is_distributed():
        if err is not None:
            raise err
        return
    msg = "" if err is None else f"{type(err).__name__}: {err}"
    flags = all_gather_object(msg)
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(flags) if m]
    if bad:
        r, m = bad[0]
        raise DistributedJobError(f"rank {r} failed{(' ' + what) if what else ''}: {m}")

