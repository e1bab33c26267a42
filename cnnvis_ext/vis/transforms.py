"""Random per-image transforms applied at every step of activation maximization.

Each transform takes the batch and, for every block of images that belongs to
one objective, a :class:`torch.Generator` from which that block's random
parameters are drawn. The draws of one image therefore do not depend on the
other images of the batch: running objectives together or one by one gives
the same images for the same seed.

The random parameters are drawn on the host (CPU generators) so that a step
never waits on the device; the image data stays on the model's device.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Transform", "Pad", "Jitter", "RandomScale", "RandomRotate", "Compose",
           "StandardTransform", "standard_transforms"]


def _draw(gens: Sequence[torch.Generator], k: int, n_choices: int) -> Tensor:
    return torch.cat([torch.randint(n_choices, (k,), generator=g) for g in gens])


class Transform:
    """Base class: ``t(x, generators, per_generator) -> x``."""

    def __call__(self, x: Tensor, gens: Sequence[torch.Generator], k: int) -> Tensor:
        raise NotImplementedError


class Pad(Transform):
    """Pad every side by ``pad`` pixels (``mode``: 'constant' with ``value``, 'reflect', 'replicate')."""

    def __init__(self, pad: int, mode: str = "constant", value: float = 0.5):
        self.pad, self.mode, self.value = int(pad), mode, float(value)

    def __call__(self, x, gens, k):
        p = self.pad
        if p <= 0:
            return x
        if self.mode == "constant":
            return F.pad(x, (p, p, p, p), mode="constant", value=self.value)
        return F.pad(x, (p, p, p, p), mode=self.mode)

    def __repr__(self):
        return f"Pad({self.pad}, mode={self.mode!r})"


class Jitter(Transform):
    """Random crop of size ``(H - d, W - d)`` at a random offset in ``[0, d]`` per image."""

    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x, gens, k):
        d = self.d
        if d <= 0:
            return x
        n, c, h, w = x.shape
        oy = _draw(gens, k, d + 1)
        ox = _draw(gens, k, d + 1)
        hh, ww = h - d, w - d
        dev = x.device
        rows = (oy.to(dev)[:, None] + torch.arange(hh, device=dev)[None, :])  # (n, hh)
        cols = (ox.to(dev)[:, None] + torch.arange(ww, device=dev)[None, :])  # (n, ww)
        bi = torch.arange(n, device=dev)[:, None, None]
        # Gather (n, hh, ww, c) then back to NCHW.
        out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)

    def __repr__(self):
        return f"Jitter({self.d})"


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomScale(Transform):
    """Zoom each image about its centre by a factor drawn from ``scales`` (size kept)."""

    def __init__(self, scales: Sequence[float]):
        self.scales = torch.tensor([float(s) for s in scales], dtype=torch.float64)

    def __call__(self, x, gens, k):
        s = self.scales[_draw(gens, k, len(self.scales))]
        theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = 1.0 / s
        theta[:, 1, 1] = 1.0 / s
        return _affine(x, theta.to(x.device))

    def __repr__(self):
        return f"RandomScale({self.scales.tolist()})"


class RandomRotate(Transform):
    """Rotate each image about its centre by an angle (degrees) drawn from ``angles``."""

    def __init__(self, angles: Sequence[float]):
        self.angles = torch.tensor([float(a) for a in angles], dtype=torch.float64)

    def __call__(self, x, gens, k):
        a = self.angles[_draw(gens, k, len(self.angles))] * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        return _affine(x, theta.to(x.device))

    def __repr__(self):
        return f"RandomRotate({len(self.angles)} angles)"


class Compose(Transform):
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x, gens, k):
        for t in self.transforms:
            x = t(x, gens, k)
        return x

    def __repr__(self):
        return f"Compose({self.transforms})"


class StandardTransform(Transform):
    """Pad, jitter, random scale, random rotation and jitter again, in ONE resampling.

    Draws, per image, the same random parameters in the same order as
    ``Compose([Pad(pad), Jitter(jitter1), RandomScale(scales), RandomRotate(angles),
    Jitter(jitter2)])`` and composes them into a single affine map, so each
    step runs one ``grid_sample`` (and its backward) instead of two
    resamplings and two gathers. Points that fall outside the image take
    ``pad_value`` (the constant padding). The output is
    ``H + 2 * pad - jitter1 - jitter2`` pixels high (and as wide).
    """

    def __init__(self, pad: int = 12, jitter1: int = 8, scales: Sequence[float] = (1.0,),
                 angles: Sequence[float] = (0.0,), jitter2: int = 4, pad_value: float = 0.5):
        self.pad, self.j1, self.j2 = int(pad), int(jitter1), int(jitter2)
        self.scales = torch.tensor([float(v) for v in scales], dtype=torch.float64)
        self.angles = torch.tensor([float(v) for v in angles], dtype=torch.float64)
        self.pad_value = float(pad_value)

    def __call__(self, x, gens, k):
        n, c, h, w = x.shape
        p, j1, j2 = self.pad, self.j1, self.j2
        h1, w1 = h + 2 * p - j1, w + 2 * p - j1
        ho, wo = h1 - j2, w1 - j2
        # per-generator draw order of the composed transforms
        oy1 = _draw(gens, k, j1 + 1) if j1 > 0 else torch.zeros(n, dtype=torch.long)
        ox1 = _draw(gens, k, j1 + 1) if j1 > 0 else torch.zeros(n, dtype=torch.long)
        s = self.scales[_draw(gens, k, len(self.scales))]
        a = self.angles[_draw(gens, k, len(self.angles))] * (math.pi / 180.0)
        oy2 = _draw(gens, k, j2 + 1) if j2 > 0 else torch.zeros(n, dtype=torch.long)
        ox2 = _draw(gens, k, j2 + 1) if j2 > 0 else torch.zeros(n, dtype=torch.long)
        dev = x.device
        f64 = dict(device=dev, dtype=torch.float64)
        col = lambda t: t.to(**f64).reshape(n, 1, 1)  # noqa: E731
        # output pixel centres -> the (h1, w1) frame after the first jitter (normalized coords)
        qy = torch.arange(ho, **f64).reshape(1, ho, 1) + 0.5 + col(oy2)
        qx = torch.arange(wo, **f64).reshape(1, 1, wo) + 0.5 + col(ox2)
        ny, nx = 2 * qy / h1 - 1, 2 * qx / w1 - 1
        cos, sin = col(torch.cos(a)), col(torch.sin(a))
        # rotation (output -> its input), then the zoom: n_in = R n / s
        rx = (cos * nx - sin * ny) / col(s)
        ry = (sin * nx + cos * ny) / col(s)
        # back to pixels of the padded frame, then of the image, then normalized for grid_sample
        px = (rx + 1) * w1 / 2 + col(ox1) - p
        py = (ry + 1) * h1 / 2 + col(oy1) - p
        grid = torch.stack([2 * px / w - 1, 2 * py / h - 1], dim=-1).to(x.dtype)
        out = F.grid_sample(x - self.pad_value, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out + self.pad_value

    def __repr__(self):
        return (f"StandardTransform(pad={self.pad}, jitter1={self.j1}, {len(self.scales)} scales, "
                f"{len(self.angles)} angles, jitter2={self.j2})")


def standard_transforms(fused: bool = True) -> Transform:
    """Lucid's standard set: pad 12 (grey), jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4.

    ``fused=True`` (default) gives the single-resampling :class:`StandardTransform`;
    ``fused=False`` the equivalent :class:`Compose` of the separate transforms.
    """
    scales = [1 + (i - 5) / 50.0 for i in range(11)]
    angles = list(range(-10, 11)) + 5 * [0]
    if fused:
        return StandardTransform(12, 8, scales, angles, 4, 0.5)
    return Compose([
        Pad(12, mode="constant", value=0.5),
        Jitter(8),
        RandomScale(scales),
        RandomRotate(angles),
        Jitter(4),
    ])


def make_transforms(transforms) -> Optional[Transform]:
    if transforms is None or transforms == "none" or transforms is False:
        return None
    if transforms == "standard":
        return standard_transforms()
    if isinstance(transforms, Transform):
        return transforms
    if isinstance(transforms, (list, tuple)):
        for t in transforms:
            if not callable(t):
                raise TypeError(f"transforms: expected Transform objects, got {type(t).__name__}")
        return Compose(transforms)
    if callable(transforms):
        return transforms
    raise ValueError(f"transforms: expected None, 'standard', a Transform or a list of them, "
                     f"got {transforms!r}")
