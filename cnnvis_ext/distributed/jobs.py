"""Resumable jobs: a job folder with a manifest of finished work units, and the loop that
deals the units to the ranks and writes their results on rank 0 as they finish."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..io import atomic_write_bytes
from .comm import broadcast_object, gather_object, get_rank, get_world_size, raise_if_any_failed

__all__ = ["JobDir", "WorkUnit", "run_units"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        self.redo: List[Tuple[str, str, str]] = []   # (unit, file, what is wrong) from load()
        self.swept: List[str] = []                    # temporary files load() removed

    def load(self) -> Dict[str, Any]:
        """Read the manifest (rank 0): the finished units of this spec, ``{}`` otherwise.

        A unit counts as finished only if every one of its files is there with the size
        and SHA-256 the manifest recorded; the others are listed in :attr:`redo` (key,
        file, what is wrong) and computed again. Temporary files left by a run killed
        between writing and renaming (``.<name>.<random>.tmp``) are removed first.
        """
        self.done, self.redo = {}, []
        self.swept = self._sweep_temporaries()
        if self.path.is_file():
            try:
                m = json.loads(self.path.read_text())
            except (OSError, ValueError):
                m = {}
            if m.get("digest") == self.digest:
                for key, unit in m.get("done", {}).items():
                    bad = self._check_files(unit)
                    if bad is None:
                        self.done[key] = unit
                    else:
                        self.redo.append((key,) + bad)
                self.resumed = bool(self.done)
            else:
                self.restarted = True
        return self.done

    def _sweep_temporaries(self) -> List[str]:
        if not self.root.is_dir():
            return []
        swept = []
        for f in self.root.rglob(".*"):
            if f.is_file() and (f.name.endswith(".tmp") or f.name.startswith(".tmp-")):
                try:
                    f.unlink()
                    swept.append(str(f.relative_to(self.root)))
                except OSError:
                    pass
        return swept

    def _check_files(self, unit: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """None if every file of ``unit`` matches its record, else ``(file, what is wrong)``."""
        files = unit.get("files", [])
        sums = unit.get("sha256", {})
        for f in files:
            p = self.root / f
            if not p.is_file():
                return f, "missing"
            if f in sums:
                size, digest = sums[f]
                if p.stat().st_size != size:
                    return f, f"{p.stat().st_size} bytes instead of {size}"
                if _sha256(p) != digest:
                    return f, "content differs from the one recorded"
        return None

    def _write(self, complete: bool = False) -> None:
        m = {"version": 1, "job": self.name, "digest": self.digest, "spec": self.spec,
             "complete": complete, "done": self.done}
        atomic_write_bytes(self.path, json.dumps(m, indent=1, sort_keys=True).encode())

    def mark_done(self, key: str, files: Sequence[Union[str, os.PathLike]] = (), **info) -> None:
        """Record a finished unit (after its ``files``, relative to ``root`` or absolute, are written)."""
        rel = [str(Path(f).resolve().relative_to(self.root.resolve())) if Path(f).is_absolute()
               else str(f) for f in files]
        sums = {f: [(self.root / f).stat().st_size, _sha256(self.root / f)] for f in rel}
        self.done[key] = dict(files=rel, sha256=sums, **info)
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
    raise_if_any_failed(err0, "reading the manifest")
    done_keys = set(broadcast_object(sorted(done), src=0))
    pending = [u for u in units if u.key not in done_keys]
    if log is not None and rank == 0:
        if job is not None and job.restarted:
            log(f"{job.path.name}: written by a different job; starting over")
        if job is not None:
            for key, f, why in job.redo:
                log(f"unit {key!r}: its file {f} does not match the manifest ({why}); redoing it")
            if job.swept:
                log(f"removed {len(job.swept)} temporary file(s) left by an interrupted run")
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
            raise_if_any_failed(err, f"in round {r}")
            results = gather_object(result, dst=0)
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
        raise_if_any_failed(write_err, "writing outputs")
    finally:
        if bar is not None:
            bar.close()
    return done if rank == 0 else {}
