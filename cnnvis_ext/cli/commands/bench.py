"""``cnnvis bench``: run the benchmark scripts (``benchmarks/bench_*.py``), print their tables."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import CLIError
from ..jobs import say

HELP = "run the benchmark scripts and print their tables"

#: The source tree's root (the benchmarks ship with it, not with the wheel).
_SOURCE_ROOT = Path(__file__).resolve().parents[3]


def _bench_dir(args) -> Path:
    cands = ([Path(args.bench_dir)] if args.bench_dir
             else [_SOURCE_ROOT / "benchmarks", Path.cwd() / "benchmarks"])
    for c in cands:
        if c.is_dir():
            return c
    raise CLIError(f"no benchmarks folder found (looked in {', '.join(str(c) for c in cands)}); "
                   "the scripts ship with the source tree: run from a checkout or pass --bench-dir")


def run(args) -> int:
    bdir = _bench_dir(args)
    scripts = sorted(bdir.glob("bench_*.py"))
    if args.only:
        wanted = set(args.only)
        scripts = [s for s in scripts if s.stem in wanted or s.stem[len("bench_"):] in wanted]
        if not scripts:
            avail = ", ".join(s.stem for s in sorted(bdir.glob("bench_*.py"))) or "none"
            raise CLIError(f"--only: no benchmark named {', '.join(args.only)} "
                           f"(available: {avail})")
    if not scripts:
        raise CLIError(f"no bench_*.py scripts in {str(bdir)!r}")
    env = dict(os.environ)
    if args.device != "auto":
        env["CNNVIS_DEVICE"] = args.device
    failed = []
    for s in scripts:
        cmd = [sys.executable, str(s)] + (["--quick"] if args.quick else [])
        say(f"## {s.stem}  ({' '.join(cmd[1:])})\n")
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        say(f"\n({s.stem}: exit {rc}, {time.perf_counter() - t0:.1f}s)\n")
        if rc:
            failed.append(s.stem)
    if failed:
        raise CLIError(f"benchmark(s) failed: {', '.join(failed)}")
    return 0
