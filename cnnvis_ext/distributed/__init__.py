"""Scale-out: visualize every unit and scan large datasets across processes with ``torch.distributed``.

Everything here works with and without an initialized process group: outside
one, ``get_rank() == 0``, ``get_world_size() == 1`` and the collectives are
no-ops, so the same code runs in one process or under ``torchrun``::

    torchrun --nproc_per_node=4 -m cnnvis_ext actmax --model ckpt.pt --layers conv1,conv2 \\
        --all-channels --out DIR

* :mod:`~cnnvis_ext.distributed.comm`: ranks (Gloo on CPU, NCCL on CUDA,
  initialized from torchrun's environment), object collectives, and the
  failure flag that turns an exception on any rank into an error on every rank;
* :mod:`~cnnvis_ext.distributed.sharding`: deterministic splits of a dataset and
  per-unit top-k lists merged across ranks, identical to a one-process scan;
* :mod:`~cnnvis_ext.distributed.jobs`: a resumable job folder (atomic writes and
  a manifest of finished work units) and the loop that deals units to ranks;
* :func:`offset_seed` / :func:`layer_seed` (from :mod:`cnnvis_ext.seeding`): an
  image depends only on the seed and its objective, never on the chunking or
  the rank that computed it.
"""
from ..io import atomic_save, atomic_write_bytes
from ..seeding import layer_seed, offset_seed
from .comm import (DEFAULT_TIMEOUT_S, DistributedJobError, all_gather_object, barrier,
                   broadcast_object, default_backend, distributed_session, gather_object,
                   get_rank, get_world_size, init_distributed, is_distributed, is_main_process,
                   launched_by_torchrun, local_device, raise_if_any_failed)
from .jobs import JobDir, WorkUnit, run_units
from .sharding import distributed_top_activations, merge_topk, merge_topk_lists, shard_indices

__all__ = [
    "is_distributed", "get_rank", "get_world_size", "is_main_process", "launched_by_torchrun",
    "default_backend", "init_distributed", "distributed_session", "local_device", "barrier",
    "all_gather_object", "gather_object", "broadcast_object", "raise_if_any_failed",
    "shard_indices", "offset_seed", "layer_seed", "merge_topk_lists", "merge_topk",
    "distributed_top_activations", "DistributedJobError", "JobDir", "WorkUnit", "run_units",
    "atomic_write_bytes", "atomic_save", "DEFAULT_TIMEOUT_S",
]
