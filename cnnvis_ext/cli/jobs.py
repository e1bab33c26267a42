"""The glue between the commands and :mod:`cnnvis_ext.distributed`'s resumable jobs: what
makes two runs the same job, how work is cut into units, and who speaks under torchrun."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import Tensor

from ..distributed import get_rank, is_main_process
from .loading import LoadedModel

__all__ = ["JOB_CHUNK", "say", "is_main", "digest", "file_stamp", "job_spec", "channel_runs",
           "split_names"]

#: Channels per work unit of ``actmax`` in job mode (the unit dealt to a rank).
JOB_CHUNK = 16


def say(msg: str) -> None:
    """Print ``msg`` on rank 0 only: one voice under torchrun."""
    if get_rank() == 0:
        print(msg, flush=True)


def is_main() -> bool:
    """Whether this process writes the shared outputs (rank 0, or the only process)."""
    return is_main_process()


def digest(t: Tensor) -> str:
    """A short hash of a tensor's bytes (the input images of a job)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def file_stamp(p):
    """``[resolved path, size, mtime]`` of a file (a job spec entry), or ``p`` itself."""
    try:
        st = Path(p).stat()
        return [str(Path(p).resolve()), st.st_size, int(st.st_mtime)]
    except (OSError, TypeError):
        return p


def job_spec(args, lm: LoadedModel) -> Dict[str, Any]:
    """What makes two runs of a resumable subcommand the same job (model, weights, seed, ...)."""
    return dict(command=args.command, model=file_stamp(args.model),
                weights=file_stamp(args.weights), input_size=lm.input_size, seed=args.seed)


def channel_runs(chans: Sequence[int], chunk: int) -> List[List[int]]:
    """Consecutive channels in pieces of at most ``chunk`` (a piece's seeds are one offset)."""
    runs: List[List[int]] = []
    for c in chans:
        if runs and c == runs[-1][-1] + 1 and len(runs[-1]) < chunk:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def split_names(values: Optional[Sequence[str]]) -> List[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]`` (layer lists may use commas or spaces)."""
    return [n for v in (values or []) for n in v.split(",") if n]
