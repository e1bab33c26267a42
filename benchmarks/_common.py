"""Shared timing and table helpers for the benchmark scripts (not a test module)."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device="cpu", warmup: int = 3, reps: int = 10,
              min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * reps:
            break
    return statistics.median(times)


def interleaved_median_ms(fns: Dict[str, Callable[[], object]], device="cpu", warmup: int = 3,
                          reps: int = 10) -> Dict[str, float]:
    """Median wall time (ms) of each ``fns[name]()``, timed round-robin.

    Every round runs each function once, so load that drifts during the
    benchmark (a shared machine) hits every variant alike and the ratios
    between them stay meaningful.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine_line(device="cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        what = torch.cuda.get_device_name(dev)
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__}, device {dev.type} ({what})"


def fmt(v: Optional[float]) -> str:
    return "absent" if v is None else f"{v:.2f}"


def ratio(base: Optional[float], ours: Optional[float]) -> str:
    if base is None or ours is None or ours == 0:
        return "-"
    return f"{base / ours:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def zoo_model(name: str, **kwargs):
    """``torchvision.models.<name>(weights=None, **kwargs)``, seeded, with random BatchNorm
    running statistics (so a folded BatchNorm is not the identity), in eval mode."""
    import warnings

    import torchvision
    from torch import nn

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = getattr(torchvision.models, name)(weights=None, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
    return m.eval()
