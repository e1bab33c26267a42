"""The HTML report of ``cnnvis demo`` and the small pictures it needs, drawn with Pillow.

:class:`Report` collects sections of captioned figures and writes a
self-contained ``index.html`` that links PNG files next to it.
:func:`plot_curves` draws a training curve, :func:`plot_confusion` a
confusion matrix and :func:`plot_table` a table of numbers, without matplotlib. Every file is written atomically: tensors
through :func:`cnnvis_ext.vis.save_image`, Pillow images and the page through
:mod:`cnnvis_ext.io`.
"""
from __future__ import annotations

import datetime
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .io import atomic_write, atomic_write_bytes
from .vis import save_image, to_uint8

__all__ = ["Report", "Figure", "Section", "save_png", "to_pil", "plot_curves", "plot_confusion",
           "plot_table", "label_grid"]

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- images

def to_pil(image):
    """A PIL image of a ``(C, H, W)`` / ``(H, W)`` tensor in ``[0, 1]`` (C = 1, 3 or 4), a uint8
    array or a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Tensor):
        arr = to_uint8(image).numpy()
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def save_png(image, path: PathLike, *, scale: int = 1) -> Path:
    """Save ``image`` (see :func:`to_pil`) as a PNG, atomically; ``scale`` enlarges it (nearest)."""
    from PIL import Image

    path = Path(path)
    if isinstance(image, Tensor):
        t = image.detach().float().cpu()
        if t.dim() not in (2, 3):
            raise ValueError(f"image: expected (C, H, W) or (H, W), got shape {tuple(t.shape)}")
        if scale > 1:
            t3 = t[None, None] if t.dim() == 2 else t[None]
            t = F.interpolate(t3, scale_factor=scale, mode="nearest")[0]
        save_image(t, path)
        return path
    im = to_pil(image)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def label_grid(images: Tensor, labels: Sequence[str], *, ncol: Optional[int] = None,
               scale: int = 2, pad: int = 4, label_height: int = 14):
    """Tile ``(N, C, H, W)`` images in [0, 1] with a text label under each: a PIL image.

    Used where every tile needs its own caption (predicted classes, top-9
    image indices); plain grids come from :func:`cnnvis_ext.vis.make_grid`.
    """
    from PIL import Image, ImageDraw

    n = len(images)
    if n != len(labels):
        raise ValueError(f"labels: expected {n} labels, got {len(labels)}")
    ncol = ncol or max(1, int(np.ceil(np.sqrt(n))))
    nrow = max(1, int(np.ceil(n / ncol)))
    h, w = images.shape[-2] * scale, images.shape[-1] * scale
    cell_w, cell_h = w + pad, h + label_height + pad
    canvas = Image.new("RGB", (ncol * cell_w + pad, nrow * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for i in range(n):
        r, c = divmod(i, ncol)
        tile = to_pil(images[i]).convert("RGB").resize((w, h), Image.NEAREST)
        x0, y0 = pad + c * cell_w, pad + r * cell_h
        canvas.paste(tile, (x0, y0))
        draw.text((x0, y0 + h + 1), str(labels[i])[: max(1, w // 6)], fill="black", font=font)
    return canvas


# --------------------------------------------------------------------------- charts

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
#: more series than _PALETTE has colours: _PALETTE then ten more distinct ones
_PALETTE_MANY = _PALETTE + ["#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8",
                            "#ff9896", "#98df8a", "#c5b0d5", "#8c8c00"]


def plot_curves(series: Dict[str, Sequence[float]], *, title: str = "", xlabel: str = "epoch",
                ylim: Optional[Tuple[float, float]] = None, size: Tuple[int, int] = (560, 340),
                legend: str = "top"):
    """A line chart of one or more series against 1..N, drawn with Pillow: a PIL image.

    Args:
        series: ``{legend: values}``; values that are NaN are skipped.
        title: text above the plot.
        xlabel: label of the x axis.
        ylim: y range (default: the data's range, padded).
        size: image size in pixels (``legend="right"`` adds the legend's column to the width).
        legend: ``"top"`` (one row above the plot, for a few series) or ``"right"`` (one line
            per series beside the plot, for many; up to 16 distinct colours).
    """
    from PIL import Image, ImageDraw

    if legend not in ("top", "right"):
        raise ValueError(f"legend: expected 'top' or 'right', got {legend!r}")
    side = legend == "right"
    W, H = size
    left, right, top, bottom = 54, 16, 28, 40
    if side:
        H = max(H, top + 16 * len(series) + 8)
        right += 150
        W += 150
        size = (W, H)
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    font = _font(12)
    vals = [float(v) for s in series.values() for v in s if np.isfinite(v)]
    n = max((len(s) for s in series.values()), default=0)
    if ylim is None:
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        padv = 0.05 * (hi - lo)
        ylim = (lo - padv, hi + padv)
    y0, y1 = ylim
    pw, ph = W - left - right, H - top - bottom

    def px(i, v):
        x = left + (pw * (i - 1) / max(n - 1, 1) if n > 1 else pw / 2)
        y = top + ph * (1 - (v - y0) / (y1 - y0))
        return x, y

    d.rectangle([left, top, left + pw, top + ph], outline="black")
    for k in range(5):  # y grid and ticks
        v = y0 + (y1 - y0) * k / 4
        _, y = px(1, v)
        d.line([left, y, left + pw, y], fill="#dddddd")
        d.text((4, y - 6), f"{v:.2f}" if abs(y1 - y0) < 100 else f"{v:.3g}", fill="black",
               font=font)
    ticks = sorted(set(np.linspace(1, max(n, 1), min(max(n, 1), 8)).round().astype(int).tolist()))
    for i in ticks:
        x, _ = px(i, y0)
        d.line([x, top + ph, x, top + ph + 4], fill="black")
        d.text((x - 4, top + ph + 6), str(i), fill="black", font=font)
    d.text((left + pw // 2 - 3 * len(xlabel), H - 16), xlabel, fill="black", font=font)
    if title:
        room = pw if side else pw - 130 * len(series)
        d.text((left, 8), title[: max(1, room // 7)], fill="black", font=font)
    palette = _PALETTE_MANY if len(series) > len(_PALETTE) else _PALETTE
    for j, (name, s) in enumerate(series.items()):
        color = palette[j % len(palette)]
        pts = [px(i + 1, float(v)) for i, v in enumerate(s) if np.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2, joint="curve")
        for x, y in pts:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        if side:  # legend: one line per series right of the plot
            lx, ly = left + pw + 12, top + 16 * j
        else:  # legend: one row above the plot
            lx, ly = left + pw - 130 * (len(series) - j), 8
        d.line([lx, ly + 6, lx + 18, ly + 6], fill=color, width=3)
        d.text((lx + 24, ly), name[:16] if not side else name[:20], fill="black", font=font)
    return im


def plot_table(header: Sequence[str], rows: Sequence[Sequence[object]], *, title: str = "",
               best: Optional[Sequence[Optional[str]]] = None):
    """A table of numbers drawn with Pillow (the report has images, not HTML tables): a PIL image.

    Args:
        header: the column titles.
        rows: one sequence per row, as many cells as ``header``; floats are shown with 3 decimals,
            everything else as ``str``.
        title: text above the table.
        best: per column ``"lower"``, ``"higher"`` or ``None``: the best value of a numeric
            column is shaded.
    """
    from PIL import Image, ImageDraw

    font = _font(12)
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    if any(len(r) != len(header) for r in cells):
        raise ValueError(f"rows: expected {len(header)} cells per row")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [int(max([probe.textlength(str(h), font=font)]
                      + [probe.textlength(r[c], font=font) for r in cells])) + 16
              for c, h in enumerate(header)]
    line, top = 20, 28 if title else 6
    W = max(sum(widths) + 12, int(probe.textlength(title, font=font)) + 12 if title else 0)
    H = top + line * (len(cells) + 1) + 8
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    if title:
        d.text((6, 8), title, fill="black", font=font)
    shade = set()
    for c, rule in enumerate(best or []):
        vals = [(float(r[c]), i) for i, r in enumerate(rows)
                if isinstance(r[c], (int, float)) and np.isfinite(float(r[c]))]
        if rule in ("lower", "higher") and vals:
            v = (min if rule == "lower" else max)(vals)[0]
            shade |= {(i, c) for x, i in vals if x == v}
    d.rectangle([6, top, 6 + sum(widths), top + line], fill="#eeeeee")
    for r, row in enumerate([list(map(str, header))] + cells):
        x, y = 6, top + r * line
        for c, txt in enumerate(row):
            if r and (r - 1, c) in shade:
                d.rectangle([x, y, x + widths[c], y + line], fill="#cfe8cf")
            d.text((x + 8, y + 4), txt, fill="black", font=font)
            x += widths[c]
        d.line([6, y + line, 6 + sum(widths), y + line], fill="#bbbbbb")
    return im


def plot_confusion(matrix: Tensor, classes: Sequence[str], *, title: str = "", cell: int = 36):
    """A confusion matrix (rows: true class, columns: predicted) as a shaded table: a PIL image."""
    from PIL import Image, ImageDraw

    m = torch.as_tensor(matrix).long().cpu()
    k = m.shape[0]
    if m.shape != (k, k) or len(classes) != k:
        raise ValueError(f"matrix: expected ({len(classes)}, {len(classes)}) counts, "
                         f"got {tuple(m.shape)}")
    label_w = min(120, 12 + 7 * max((len(str(c)) for c in classes), default=1))
    left, top = label_w + 20, 46
    W, H = left + k * cell + 10, top + k * cell + 30
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    font = _font(11)
    row_sum = m.sum(1, keepdim=True).clamp(min=1).float()
    frac = (m.float() / row_sum).numpy()
    for r in range(k):
        for c in range(k):
            f = float(frac[r, c])
            shade = (int(255 - 200 * f), int(255 - 130 * f), 255) if r == c else \
                (255, int(255 - 200 * f), int(255 - 200 * f))
            x, y = left + c * cell, top + r * cell
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline="#bbbbbb")
            txt = str(int(m[r, c]))
            d.text((x + cell // 2 - 3 * len(txt), y + cell // 2 - 6), txt,
                   fill="black" if f < 0.6 else "white", font=font)
        d.text((6, top + r * cell + cell // 2 - 6), str(classes[r])[:16], fill="black", font=font)
    for c in range(k):
        d.text((left + c * cell + 4, top - 14), str(classes[c])[:5], fill="black", font=font)
    d.text((left, 6), title or "confusion matrix", fill="black", font=font)
    d.text((left, 20), "rows: true class, columns: predicted", fill="#555555", font=font)
    acc = float(m.diag().sum()) / max(1, int(m.sum()))
    d.text((left, H - 20), f"accuracy {acc:.2%} ({int(m.diag().sum())}/{int(m.sum())})",
           fill="black", font=font)
    return im


# --------------------------------------------------------------------------- HTML

@dataclass
class Figure:
    """One image of the report: ``src`` is relative to the report's folder."""

    src: str
    caption: str
    alt: str = ""


@dataclass
class Section:
    """A titled group of figures, with an optional paragraph of text and notes."""

    title: str
    text: str = ""
    figures: List[Figure] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    skipped: Optional[str] = None


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #666; } .skipped { color: #a33; font-style: italic; }
figure { display: inline-block; vertical-align: top; margin: 0.5em 1em 1em 0; max-width: 100%; }
figure img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.9em; color: #444; max-width: 560px; }
nav a { margin-right: 1em; } table.kv td { padding: 0 1em 0 0; }
"""


class Report:
    """An HTML page of captioned figures, written next to its images.

    Example:
        >>> rep = Report("out", title="cnnvis demo")
        >>> sec = rep.section("Kernels", "The 16 first-layer filters.")
        >>> rep.add_image(sec, grid, "kernels.png", "conv1 kernels, one tile per filter")
        >>> rep.write()  # out/index.html
    """

    def __init__(self, out_dir: PathLike, title: str = "cnnvis report", intro: str = "") -> None:
        self.out_dir = Path(out_dir)
        self.title = title
        self.intro = intro
        self.facts: Dict[str, str] = {}
        self.sections: List[Section] = []

    def section(self, title: str, text: str = "") -> Section:
        sec = Section(title, text)
        self.sections.append(sec)
        return sec

    def add_image(self, section: Section, image, relpath: str, caption: str, *,
                  scale: int = 1) -> Path:
        """Save ``image`` (tensor or PIL) as ``out_dir/relpath`` (PNG) and add it to ``section``."""
        path = save_png(image, self.out_dir / relpath, scale=scale)
        section.figures.append(Figure(relpath, caption, alt=caption))
        return path

    def add_file(self, section: Section, relpath: str, caption: str) -> None:
        """Add an image already written at ``out_dir/relpath``."""
        if not (self.out_dir / relpath).is_file():
            raise FileNotFoundError(f"relpath: no image at {str(self.out_dir / relpath)!r}")
        section.figures.append(Figure(relpath, caption, alt=caption))

    def skip(self, section: Section, reason: str) -> None:
        """Mark ``section`` as not produced, saying why (shown in the page)."""
        section.skipped = reason

    def render(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head>",
                 "<body>", f"<h1>{e(self.title)}</h1>"]
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        parts.append(f'<p class="meta">Written by cnnvis_ext on {e(stamp)}.</p>')
        if self.intro:
            parts.append(f"<p>{e(self.intro)}</p>")
        if self.facts:
            parts.append('<table class="kv">')
            parts += [f"<tr><td><b>{e(k)}</b></td><td>{e(v)}</td></tr>"
                      for k, v in self.facts.items()]
            parts.append("</table>")
        parts.append("<nav>" + "".join(f'<a href="#s{i}">{e(s.title)}</a>'
                                       for i, s in enumerate(self.sections)) + "</nav>")
        for i, sec in enumerate(self.sections):
            parts.append(f'<section id="s{i}"><h2>{e(sec.title)}</h2>')
            if sec.text:
                parts.append(f"<p>{e(sec.text)}</p>")
            if sec.skipped:
                parts.append(f'<p class="skipped">Not shown: {e(sec.skipped)}</p>')
            for fig in sec.figures:
                src = "/".join(e(p) for p in Path(fig.src).parts)
                parts.append(f'<figure><a href="{src}"><img src="{src}" alt="{e(fig.alt)}"></a>'
                             f'<figcaption>{e(fig.caption)}</figcaption>'
                             "</figure>")
            for note in sec.notes:
                parts.append(f'<p class="meta">{e(note)}</p>')
            parts.append("</section>")
        parts += ["</body>", "</html>", ""]
        return "\n".join(parts)

    def write(self, name: str = "index.html") -> Path:
        """Write the page atomically as ``out_dir/name``; returns its path."""
        return atomic_write_bytes(self.out_dir / name, self.render().encode("utf-8"))
