#!/usr/bin/env python
"""Benchmark of the activation-maximization loop of cnnvis_ext.vis.

Network: VGG-11 (torchvision's layout, written out below: ``features`` with
config [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], ``avgpool``,
``classifier``) with random weights. Objective: channel 0 of ``features.10``
(the pooled output of the second 256-channel conv). 128 px images, pixel
parameterization, gradient ascent with L2 decay 1e-4 and a Gaussian blur
(sigma 1) every 4 steps (Yosinski et al. 2015, Table 1, row 3), no transforms.

(i) one channel, milliseconds per step:
    ours              ``vis.activation_maximization`` on ``cnnvis_ext.fuse(vgg)`` (fused
                      conv+relu+pool op): the forward stops at the objective's layer, only the
                      objective's channel of the last conv is computed, no weight gradients, one
                      fused ``regularize_`` prior step; also on the unfused model and without
                      channel pruning
    eager full        plain PyTorch loop: full forward (hook on features.10), loss.backward(),
                      then decay / blur / clamp as separate ops
    eager stop        the same loop with the forward cut at features.10 (``vgg.features[:11]``)
    compiled stop     torch.compile of the eager-stop step (with ``--compile``)
    lucent 128 / 224  torch-lucent ``render_vis`` with its defaults (Fourier param, standard
                      transforms, Adam) at ``fixed_image_size=128`` and with its default
                      upsampling to 224 px; compared with ours under the Lucid-like defaults
                      (Fourier param, standard transforms, Adam) on the same 128 px images
(ii) 64 channels of features.10: one batch of 64 images against 64 sequential single-channel
    runs, reported per image-step; and the Lucid-style loop on one batch of 64 against
    torch-lucent (one image per run) per image-step.

Also printed: the memory autograd saves for backward in one step (parameters excluded).

Usage:  python benchmarks/bench_vis_loops.py [--quick] [--device cpu|cuda] [--threads N] [--compile]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types

import torch
from torch import nn

import cnnvis_ext
from cnnvis_ext import vis
from cnnvis_ext.ops.reference import gaussian_blur as plain_gaussian_blur

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
LAYER, CHANNEL, SIZE = "features.10", 0, 128
LR, DECAY, SIGMA, EVERY = 0.05, 1e-4, 1.0, 4


class VGG(nn.Module):
    """torchvision's VGG layout (features / avgpool / classifier), random weights."""

    def __init__(self, cfg=VGG11, num_classes=1000):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timing(float):
    """A median in ms that also carries ``.min``, the fastest run (the least disturbed by other
    load on a shared machine)."""

    def __new__(cls, median, fastest):
        t = super().__new__(cls, median)
        t.min = fastest
        return t


def per_step_ms(runs, steps, device, reps, per=1):
    """Median ms per step of each ``run(steps)`` in ``runs`` (a dict), divided by ``per``.

    The runs are timed round-robin (one of each per round, after a warm-up of
    each) so that a change in the machine's load hits every variant alike.
    """
    for run in runs.values():
        run(max(1, steps // 4))
    sync(device)
    times = {k: [] for k in runs}
    for _ in range(reps):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run(steps)
            sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3 / steps / per)
    return {k: Timing(statistics.median(v), min(v)) for k, v in times.items()}


def saved_mb(fn, params):
    """MB of tensors autograd saves for backward while ``fn()`` runs (parameters excluded)."""
    skip = {p.data_ptr() for p in params}
    seen = {}

    def pack(t):
        if t.data_ptr() not in skip and t.device.type != "meta":
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2 ** 20


# -- the plain eager loops (baselines) --------------------------------------------------------

def eager_loop(forward, device, dtype, compiled=False):
    def step(x, i):
        act = forward(x + 0.5)
        loss = act[:, CHANNEL].mean()
        (g,) = torch.autograd.grad(loss, x) if compiled else (None,)
        return g, loss

    def run(steps):
        gen = torch.Generator(device=device).manual_seed(0)
        x = (torch.randn(1, 3, SIZE, SIZE, generator=gen, device=device, dtype=dtype) * 0.01)
        x.requires_grad_(True)
        for i in range(steps):
            act = forward(x + 0.5)
            loss = act[:, CHANNEL].mean()
            x.grad = None
            loss.backward()  # what a plain loop does: weight gradients included
            with torch.no_grad():
                x += LR * x.grad
                x *= 1 - DECAY
                if (i + 1) % EVERY == 0:
                    x.copy_(plain_gaussian_blur(x, SIGMA))
                x.clamp_(-0.5, 0.5)
    return run


def hooked_full_forward(model):
    store = {}
    model.get_submodule(LAYER).register_forward_hook(lambda m, i, o: store.__setitem__("a", o.clone()))

    def fwd(x):
        model(x)
        return store["a"]
    return fwd


def lucent_runner(model, device, fixed):
    try:
        try:
            import torchvision  # noqa: F401
            stub = ""
        except Exception:  # torchvision absent or broken: lucent only needs Normalize from it
            class Normalize(nn.Module):
                def __init__(self, mean, std):
                    super().__init__()
                    self.mean, self.std = torch.tensor(mean), torch.tensor(std)

                def forward(self, x):
                    return (x - self.mean.to(x).reshape(-1, 1, 1)) / self.std.to(x).reshape(-1, 1, 1)
            tv = types.ModuleType("torchvision")
            tv.transforms = types.ModuleType("torchvision.transforms")
            tv.transforms.Normalize = Normalize
            sys.modules.setdefault("torchvision", tv)
            sys.modules.setdefault("torchvision.transforms", tv.transforms)
            stub = " (torchvision.transforms.Normalize stubbed)"
        try:
            import IPython.display  # noqa: F401
        except Exception:  # only used by lucent to show images in notebooks (show_image=False here)
            ip = types.ModuleType("IPython")
            ip.display = types.ModuleType("IPython.display")
            ip.display.display = ip.display.HTML = lambda *a, **k: None
            sys.modules.setdefault("IPython", ip)
            sys.modules.setdefault("IPython.display", ip.display)
            stub += " (IPython.display stubbed)"
        import kornia
        for name in ("get_rotation_matrix2d", "warp_affine"):  # moved in kornia >= 0.7
            if not hasattr(kornia, name):
                setattr(kornia, name, getattr(kornia.geometry.transform, name))
                stub += f" (kornia.{name} aliased)"
        from lucent.optvis import render
    except Exception as e:  # noqa: BLE001
        return None, f"absent ({type(e).__name__}: {e})"

    def run(steps):
        render.render_vis(model, f"{LAYER.replace('.', '_')}:{CHANNEL}", thresholds=(steps,),
                          show_image=False, progress=False, fixed_image_size=fixed)
    return run, "torch-lucent " + getattr(sys.modules.get("lucent"), "__version__", "") + stub


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-size run: few steps and repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the eager loop")
    ap.add_argument("--channels", type=int, default=64, help="channels for the batched comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), torch.float32
    steps, reps = (4, 3) if args.quick else (16, 5)
    n_seq = 4 if args.quick else 8  # sequential runs timed; the per-image-step cost is what counts

    torch.manual_seed(0)
    vgg = VGG().to(device).eval()
    fused = cnnvis_ext.fuse(copy.deepcopy(vgg))
    params = list(vgg.parameters()) + list(fused.parameters())
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# bench_vis_loops: torch {torch.__version__}, {what}; VGG-11 random weights, {SIZE} px, "
          f"objective {LAYER}:{CHANNEL}, {steps} steps x {reps} runs (median ms per step)\n")

    regs = vis.Regularizers(decay=DECAY, blur_sigma=SIGMA, blur_every=EVERY)
    yos = dict(size=SIZE, lr=LR, optimizer="sgd", param="pixel", transforms=None, regularizers=regs)

    def ours(steps_, channels=(CHANNEL,), model=fused, **kw):
        objs = [vis.channel(LAYER, c) for c in channels]
        return vis.activation_maximization(model, objs, steps=steps_, **{**yos, **kw})

    full = eager_loop(hooked_full_forward(vgg), device, dtype)
    stop_fwd = vgg.features[:11]
    stop = eager_loop(stop_fwd, device, dtype)

    def one_eager_step(fwd):
        x = torch.zeros(1, 3, SIZE, SIZE, device=device, requires_grad=True)
        fwd(x + 0.5)[:, CHANNEL].mean().backward()

    variants = {
        "ours": lambda s: ours(s),
        "asis": lambda s: ours(s, model=vgg),
        "noprune": lambda s: ours(s, prune=False),
        "full": full,
        "stop": stop,
    }
    compiled_note = "torch.compile, stop at layer (run with --compile)"
    if args.compile:
        try:
            variants["compiled"] = eager_loop(torch.compile(stop_fwd), device, dtype)
            compiled_note = "torch.compile, stop at layer"
        except Exception as e:  # noqa: BLE001
            compiled_note = f"torch.compile failed ({type(e).__name__})"
    try:
        t = per_step_ms(variants, steps, device, reps)
    except Exception as e:  # noqa: BLE001  (a compile failure at first call)
        variants.pop("compiled", None)
        compiled_note = f"torch.compile failed ({type(e).__name__})"
        t = per_step_ms(variants, steps, device, reps)
    rows = [
        ("(i) 1 channel, Yosinski-style loop", "ours (on cnnvis_ext.fuse(model))", t["ours"], saved_mb(lambda: ours(1), params), None),
        ("", "ours on the model as is (unfused)", t["asis"], saved_mb(lambda: ours(1, model=vgg), params), t["ours"]),
        ("", "ours without channel pruning", t["noprune"], saved_mb(lambda: ours(1, prune=False), params), t["ours"]),
        ("", "eager full network", t["full"],
         saved_mb(lambda: one_eager_step(hooked_full_forward(copy.deepcopy(vgg))), params + list(vgg.parameters())),
         t["ours"]),
        ("", "eager stop at layer", t["stop"], saved_mb(lambda: one_eager_step(stop_fwd), params), t["ours"]),
        ("", compiled_note, t.get("compiled"), None, t["ours"]),
    ]

    # Lucid-like settings: ours against torch-lucent
    lucid = dict(size=SIZE, param="fourier", transforms="standard", optimizer="adam", lr=0.05,
                 normalize=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    lv = {"ours": lambda s: vis.activation_maximization(fused, [vis.channel(LAYER, CHANNEL)], steps=s, **lucid)}
    notes = {}
    for fixed, label in ((SIZE, "lucent render_vis, fixed_image_size=128"), (None, "lucent render_vis, default (224 px)")):
        run, desc = lucent_runner(copy.deepcopy(vgg), device, fixed)
        notes[label] = desc
        if run is not None:
            lv[label] = run
    try:
        tl = per_step_ms(lv, steps, device, reps)
    except Exception as e:  # noqa: BLE001
        notes = {k: f"failed ({type(e).__name__}: {e})" for k in notes}
        lv = {"ours": lv["ours"]}
        tl = per_step_ms(lv, steps, device, reps)
    rows.append(("(i) 1 channel, Lucid-style loop", "ours (Fourier, standard transforms, Adam)", tl["ours"], None, None))
    for label, desc in notes.items():
        rows.append(("", label if label in tl else f"{label}: {desc}", tl.get(label), None, tl["ours"]))
    if any(label in tl for label in notes):
        print(f"lucent: {next(iter(notes.values()))}\n")

    # (ii) batched channels against sequential single-channel runs
    chans = list(range(args.channels))

    def seq(s):
        for c in range(n_seq):
            ours(s, channels=(c,))
    tb = per_step_ms({"batch": lambda s: ours(s, channels=chans)}, max(2, steps // 2), device,
                     max(1, reps - 2), per=len(chans))
    ts = per_step_ms({"seq": seq}, max(2, steps // 2), device, max(1, reps - 2), per=n_seq)
    per_img_batch, t_seq = tb["batch"], ts["seq"]
    rows.append((f"(ii) {len(chans)} channels, per image-step", f"ours, one batch of {len(chans)}", per_img_batch,
                 saved_mb(lambda: ours(1, channels=chans), params), None))
    rows.append(("", f"ours, sequential single-channel runs (timed {n_seq})", t_seq, None, per_img_batch))
    tlb = per_step_ms({"lb": lambda s: vis.activation_maximization(
        fused, [vis.channel(LAYER, c) for c in chans], steps=s, **lucid)}, max(2, steps // 2), device,
        max(1, reps - 2), per=len(chans))["lb"]
    rows.append(("", f"ours Lucid-style, one batch of {len(chans)}", tlb, None, None))
    lab = "lucent render_vis, fixed_image_size=128"
    rows.append(("", f"{lab} (from (i))" if lab in tl else f"{lab}: absent", tl.get(lab), None, tlb))

    hdr = ["case", "variant", "median ms/step", "min ms/step", "saved for backward (MB)",
           "ratio (this / ours)", "ratio of mins"]
    out = []
    for case, variant, t, mb, ref in rows:
        tmin = getattr(t, "min", None)
        rmin = getattr(ref, "min", None)
        out.append([case, variant, "absent" if t is None else f"{t:.2f}",
                    "-" if tmin is None else f"{tmin:.2f}",
                    "-" if mb is None else f"{mb:.1f}",
                    "-" if (t is None or ref is None) else f"{t / ref:.2f}x",
                    "-" if (tmin is None or rmin is None) else f"{tmin / rmin:.2f}x"])
    widths = [max(len(h), *(len(r[i]) for r in out)) for i, h in enumerate(hdr)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(fmt(hdr))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in out:
        print(fmt(r))
    print(f"\nbatched throughput: {t_seq / per_img_batch:.2f}x the sequential runs "
          f"({1e3 / per_img_batch:.1f} vs {1e3 / t_seq:.1f} image-steps/s)")


if __name__ == "__main__":
    main()
