"""Scale-out throughput: activation maximization of every channel of one layer, 1 vs N ranks.

Runs the real command line, ``cnnvis actmax --layers L --all-channels`` in one process and
under ``torchrun --nproc_per_node=N`` (Gloo on CPU, NCCL on GPUs), each into a fresh
folder, and prints objectives (channels) per second. Wall times include process start,
model construction and rank 0's writes, as a user sees them; the "startup" row (a
1-step run of a single channel) shows that fixed part. On CPU each torchrun rank gets
``OMP_NUM_THREADS=1``; the one-process run is timed with 1 thread (same work per
core as one rank) and with all cores.

    python benchmarks/bench_scale.py --quick
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, env, cwd) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"bench_scale: command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-size run")
    ap.add_argument("--device", default=os.environ.get("CNNVIS_DEVICE", "auto"))
    ap.add_argument("--nproc", type=int, help="ranks of the scaled run (default: 2 on CPU, "
                    "the GPU count on CUDA)")
    ap.add_argument("--reps", type=int, help="runs per configuration (median)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    nproc = args.nproc or (max(1, torch.cuda.device_count()) if cuda else 2)
    reps = args.reps or (1 if args.quick else 3)
    layer, steps, size, chunk = ("conv2", 64, 32, 8) if args.quick else ("conv3", 64, 32, 16)
    cores = os.cpu_count() or 1
    base = [sys.executable, "-m", "cnnvis_ext", "actmax", "--device", device, "--quiet",
            "--model", "cnnvis_ext.models:cifar_cnn", "--layers", layer, "--all-channels",
            "--steps", str(steps), "--size", str(size), "--batch-size", str(chunk)]
    n_obj = {"conv1": 16, "conv2": 32, "conv3": 64}[layer]

    def env(threads):
        e = dict(os.environ)
        e["OMP_NUM_THREADS"] = str(threads)
        return e

    def timed(cmd, threads, launch=None):
        times = []
        for _ in range(reps):
            with tempfile.TemporaryDirectory() as d:
                full = (launch or []) + (cmd[1:] if launch else cmd) + ["--out", d]
                times.append(run(full, env(threads), d))
        return statistics.median(times)

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}"]
    startup_cmd = base[:base.index("--all-channels")] + ["--units", "0", "--steps", "1",
                                                        "--size", str(size)]
    rows = []
    t_start = timed(startup_cmd, 1)
    rows.append(("startup (1 channel, 1 step), 1 process", 1, t_start, None))
    t1 = timed(base, 1)
    rows.append((f"1 process, 1 thread", 1, t1, n_obj / t1))
    if not cuda and cores > 1:
        tn = timed(base, cores)
        rows.append((f"1 process, {cores} threads", 1, tn, n_obj / tn))
    tr = timed(base, 1, launch=torchrun)
    rows.append((f"torchrun {nproc} ranks x 1 thread", nproc, tr, n_obj / tr))

    dev_name = torch.cuda.get_device_name() if cuda else f"CPU, {cores} cores"
    print(f"\nactmax of all {n_obj} channels of cifar_cnn {layer}, {steps} steps, {size}x{size}, "
          f"{chunk} channels per work unit; {dev_name}; median of {reps}; torch {torch.__version__}\n")
    print("| configuration | ranks | wall s | channels/s | per rank | speed-up vs 1 thread |")
    print("|---|---|---|---|---|---|")
    for name, ranks, t, thr in rows:
        if thr is None:
            print(f"| {name} | {ranks} | {t:.2f} | - | - | - |")
        else:
            print(f"| {name} | {ranks} | {t:.2f} | {thr:.2f} | {thr / ranks:.2f} | {t1 / t:.2f}x |")
    if t1 > t_start and tr > t_start:
        print(f"\nwithout the fixed startup ({t_start:.1f}s): 1 thread {t1 - t_start:.2f}s, "
              f"{nproc} ranks {tr - t_start:.2f}s, speed-up {(t1 - t_start) / (tr - t_start):.2f}x")
    else:
        print(f"\nstartup ({t_start:.1f}s) dominates: use a larger run (drop --quick)")


if __name__ == "__main__":
    main()
