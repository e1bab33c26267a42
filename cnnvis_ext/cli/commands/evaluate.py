"""``cnnvis evaluate``: how far to trust each attribution method on a model: every method by
every metric, as a Markdown and a CSV table, with the deletion and insertion curves as PNGs."""
from __future__ import annotations

from typing import Dict, List

import torch

from ... import metrics as M
from ...io import atomic_write_bytes
from ...report import plot_curves, save_png
from ..figures import explainer, out_dir
from ..jobs import say
from ..loading import load_images, model_context, model_device, needs_hooks

HELP = "evaluate attribution methods: deletion/insertion, AOPC, faithfulness, sanity checks"

#: metric name -> (column header, what a better method does)
METRICS = {
    "deletion": ("deletion AUC", "lower"),
    "insertion": ("insertion AUC", "higher"),
    "aopc": ("AOPC (region perturbation)", "higher"),
    "faithfulness": ("faithfulness correlation", "higher"),
    "sensitivity": ("max-sensitivity", "lower"),
    "mprt": ("Spearman after randomizing the top layer", "lower"),
    "randomlogit": ("SSIM to a random class's map", "lower"),
}


def _evaluate(name: str, model, x, t, explain, maps, args, n_classes: int) -> float:
    if name in ("deletion", "insertion"):
        raise AssertionError("computed with the curves")
    if name == "aopc":
        patch = max(1, x.shape[-1] // 8)
        while x.shape[-1] % patch or x.shape[-2] % patch:
            patch -= 1
        return float(M.region_perturbation(model, x, maps, t, patch_size=patch, regions=16,
                                           seed=args.seed).aopc.mean())
    if name == "faithfulness":
        size = max(1, x.shape[-1] * x.shape[-2] // 16)
        return float(M.faithfulness_correlation(model, x, maps, t, subset_size=size, runs=32,
                                                seed=args.seed).mean())
    if name == "sensitivity":
        return float(M.max_sensitivity(model, x, t, explain, samples=4, seed=args.seed).mean())
    if name == "mprt":
        res = M.model_randomization(model, x, t, explain, layers=M.randomization_order(model)[:1],
                                    seed=args.seed)
        return float(res.spearman[0].mean())
    if name == "randomlogit":
        return float(M.random_logit(model, x, t, explain, n_classes, seed=args.seed).mean())
    raise AssertionError(name)


def run(args) -> int:
    _, lm = model_context(args)
    model = lm.model
    needs_hooks(lm, "evaluate")
    images, _, _ = load_images(args, lm)
    dev = model_device(model)
    x = images.to(dev)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(-1)
    n_classes = logits.shape[-1]
    rows: Dict[str, Dict[str, float]] = {}
    dele: Dict[str, List[float]] = {}
    ins: Dict[str, List[float]] = {}
    for method in args.methods:
        explain = explainer(method, args.layer, "--methods")
        maps = explain(model, x, t).detach()
        row: Dict[str, float] = {}
        if {"deletion", "insertion"} & set(args.metrics):
            c = M.deletion_insertion(model, x, maps, t, steps=args.steps)
            row["deletion"], row["insertion"] = float(c.deletion_auc.mean()), float(c.insertion_auc.mean())
            dele[method] = c.deletion.mean(0).tolist()
            ins[method] = c.insertion.mean(0).tolist()
        for name in args.metrics:
            if name not in ("deletion", "insertion"):
                row[name] = _evaluate(name, model, x, t, explain, maps, args, n_classes)
        rows[method] = {k: v for k, v in row.items() if k in args.metrics}
        say(f"{method}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[method].items()))
    out = out_dir(args)
    cols = [m for m in METRICS if m in args.metrics]
    head = ["method"] + [f"{METRICS[c][0]} ({METRICS[c][1]} is better)" for c in cols]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    md += ["| " + " | ".join([m] + [f"{rows[m][c]:.4f}" for c in cols]) + " |" for m in rows]
    note = (f"\n{len(x)} images of {lm.name}, each explained for its predicted class; "
            f"curves with {args.steps} steps.\n")
    atomic_write_bytes(out / "evaluate.md", ("\n".join(md) + "\n" + note).encode())
    csv = [",".join(["method"] + cols)] + [",".join([m] + [f"{rows[m][c]:.6g}" for c in cols])
                                          for m in rows]
    atomic_write_bytes(out / "evaluate.csv", ("\n".join(csv) + "\n").encode())
    for name, series in (("deletion", dele), ("insertion", ins)):
        if series:
            save_png(plot_curves(series, title=f"{name}: target probability", xlabel="step",
                                 ylim=(0.0, 1.0)), out / f"evaluate_{name}.png")
    say(f"wrote {out / 'evaluate.md'} and evaluate.csv")
    return 0
