"""MACO (Fel et al., NeurIPS 2023): feature visualization by optimizing only the Fourier phase.

The image is ``sigmoid(recorrelate(standardize(irfft2(|S| * exp(i * standardize(phase))))))``:
the magnitude ``|S|`` is fixed (the spectrum of natural images), only the phase is optimized,
so every image keeps natural-image statistics whatever the objective. Beside each image MACO
accumulates a *transparency* map, ``sum over steps of |d objective / d image|``: where the
optimization actually pushed, which the paper shows as the image's alpha channel.

The magnitude comes from the caller's images (:func:`image_spectrum`, computed once, saved with
``torch.save`` and passed back as a tensor or a path), from the digits bundled with the package
(:func:`digits_spectrum`) or, by default, a ``1/f`` power law (:func:`power_law_spectrum`).
Nothing is downloaded. Every function works for any number of channels.

Batched across objectives like :func:`~cnnvis_ext.vis.activation_maximization` (``param="maco"``
there, or :func:`~cnnvis_ext.vis.maco_fv` for the transparency maps too).
"""
from __future__ import annotations

import os
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .param import IMAGENET_COLOR_CORRELATION, ImageParam, _freqs

__all__ = ["MacoParam", "MacoResult", "image_spectrum", "power_law_spectrum",
           "digits_spectrum", "color_correlation"]

SpectrumLike = Union[None, str, os.PathLike, Tensor]


def _standardize(t: Tensor, dims: Tuple[int, ...]) -> Tensor:
    return (t - t.mean(dims, keepdim=True)) / (t.std(dims, keepdim=True) + 1e-4)


def power_law_spectrum(channels: int, size, decay_power: float = 1.0) -> Tensor:
    """The magnitude ``1 / max(f, 1 / max(H, W)) ** decay_power`` for every channel:
    ``(channels, H, W // 2 + 1)``, the ``1/f`` statistics of natural images (no data needed)."""
    h, w = _pair_size(size)
    f = _freqs(h, w, None)
    mag = 1.0 / torch.clamp(f, min=1.0 / max(h, w)) ** float(decay_power)
    return mag.expand(int(channels), -1, -1).contiguous()


def _pair_size(size) -> Tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise ValueError(f"size: expected a positive int or (H, W), got {size!r}")
    return h, w


def _batches(images) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        yield images
        return
    for item in images:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor):
            raise TypeError(f"images: expected tensors (or (image, label) pairs), got "
                            f"{type(x).__name__}")
        yield x if x.dim() == 4 else x.unsqueeze(0)


def image_spectrum(images, size=None) -> Tensor:
    """The mean Fourier magnitude of images, per channel: MACO's magnitude template.

    Each image is standardized (zero mean, unit variance), transformed with ``rfft2``
    (orthonormal) and the magnitudes are averaged, one pass over the data.

    Args:
        images: ``(N, C, H, W)`` tensor, or an iterable (a dataset, a DataLoader) of images
            ``(C, H, W)`` / batches ``(B, C, H, W)`` / ``(image, label)`` pairs.
        size: resize the images to this ``(H, W)`` first (default: their own size, which
            must then be the same for all).

    Returns:
        ``(C, H, W // 2 + 1)`` float32 on the CPU; save it with ``torch.save`` and pass it
        (or its path) as ``spectrum``.
    """
    total, count = None, 0
    for x in _batches(images):
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"images: expected floating-point (N, C, H, W) images, got "
                             f"{tuple(x.shape)} {x.dtype}")
        x = x.detach().float()
        if size is not None:
            x = F.interpolate(x, size=_pair_size(size), mode="bilinear", align_corners=False,
                              antialias=True)
        mag = torch.fft.rfft2(_standardize(x, (1, 2, 3)), norm="ortho").abs().sum(0)
        if total is not None and mag.shape != total.shape:
            raise ValueError(f"images: sizes differ ({tuple(x.shape[1:])}); pass size=")
        total = mag if total is None else total + mag
        count += x.shape[0]
    if not count:
        raise ValueError("images: no image given")
    return (total / count).cpu()


def digits_spectrum(size=None) -> Tensor:
    """The spectrum of the 1,797 handwritten digits (8x8, one channel) bundled with the package
    (``assets/digits.npz``), resized to ``size`` (default 8x8) before the transform."""
    import numpy as np

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "digits.npz")
    with np.load(path) as d:
        x = torch.from_numpy(d["images"].astype("float32") / 16.0)[:, None]  # values 0..16
    return image_spectrum(x, size=size)


def color_correlation(images, eps: float = 1e-8) -> Tensor:
    """The square root of the channel covariance of images, ``(C, C)``: the matrix the
    Fourier and MACO parameterizations mix channels with (Lucid's ``color_correlation_svd_sqrt``
    uses ImageNet's, which is wrong for other data and other channel counts).

    Args:
        images: as :func:`image_spectrum`.

    Returns:
        ``U sqrt(S)`` of the covariance ``U S U^T`` of the pixels' channel vectors, float32.
    """
    s, ss, n = None, None, 0
    for x in _batches(images):
        v = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
        s = v.sum(1) if s is None else s + v.sum(1)
        ss = v @ v.T if ss is None else ss + v @ v.T
        n += v.shape[1]
    if not n:
        raise ValueError("images: no image given")
    mean = s / n
    cov = ss / n - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp_min(eps).sqrt()).float()


def _load_spectrum(spectrum: SpectrumLike, channels: int, size) -> Tensor:
    h, w = _pair_size(size)
    if spectrum is None or (isinstance(spectrum, str) and spectrum == "power"):
        return power_law_spectrum(channels, (h, w))
    if isinstance(spectrum, str) and spectrum == "digits":
        spectrum = digits_spectrum()
    elif isinstance(spectrum, (str, os.PathLike)):
        spectrum = torch.load(os.fspath(spectrum), map_location="cpu", weights_only=True)
    if not isinstance(spectrum, Tensor) or spectrum.dim() != 3:
        raise ValueError("spectrum: expected None/'power', 'digits', a (C, H, W//2+1) tensor or "
                         f"the path of one, got {spectrum!r:.80}")
    if spectrum.shape[0] not in (1, channels):
        raise ValueError(f"spectrum: has {spectrum.shape[0]} channels, the images {channels}")
    mag = spectrum.float().expand(channels, -1, -1)
    if tuple(mag.shape[1:]) != (h, w // 2 + 1):  # resized as a magnitude image (MACO's way)
        mag = F.interpolate(mag[None], size=(h, w // 2 + 1), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return mag.clamp_min(0)


class MacoParam(ImageParam):
    """The MACO parameterization: a phase per image under a fixed magnitude.

    Args:
        channels, size, generators, per_generator: as :class:`~cnnvis_ext.vis.PixelParam`.
        spectrum: the magnitude (see the module docstring); resized to ``size``.
        color: a ``(C, C)`` channel-mixing matrix (:func:`color_correlation` of the data, or
            ``IMAGENET_COLOR_CORRELATION``), or ``None`` for none. Its columns are scaled so that the largest has norm 1.
        sd: standard deviation of the initial (random) phase.
    """

    pixel_space = False

    def __init__(self, channels: int, size, generators, per_generator: int = 1,
                 spectrum: SpectrumLike = None, color: Optional[Tensor] = None, sd: float = 1.0,
                 device=None, dtype=torch.float32):
        h, w = _pair_size(size)
        self.h, self.w = h, w
        self.magnitude = _load_spectrum(spectrum, channels, (h, w)).to(device=device, dtype=dtype)
        parts = [torch.randn((per_generator, channels, h, w // 2 + 1), generator=g,
                             device=g.device, dtype=torch.float32) for g in generators]
        self.phase = (torch.cat(parts) * sd).to(device=device, dtype=dtype).requires_grad_(True)
        if color is not None:
            m = torch.as_tensor(color, dtype=torch.float64)
            if m.shape != (channels, channels):
                raise ValueError(f"color: expected a ({channels}, {channels}) matrix, got "
                                 f"{tuple(m.shape)}")
            color = (m / m.norm(dim=0).max()).to(device=device, dtype=dtype)
        self.color = color
        self.transparency = torch.zeros(self.phase.shape[0], channels, h, w, device=device,
                                        dtype=dtype)

    def params(self) -> List[Tensor]:
        return [self.phase]

    def image(self) -> Tensor:
        phase = _standardize(self.phase, (1, 2, 3))
        spec = torch.polar(self.magnitude.expand_as(phase).float(), phase.float())
        img = torch.fft.irfft2(spec, s=(self.h, self.w)).to(self.phase.dtype)
        img = _standardize(img, (1, 2, 3))
        if self.color is not None:
            img = torch.einsum("nchw,dc->ndhw", img, self.color)
        return torch.sigmoid(img)

    @staticmethod
    def factory(spectrum: SpectrumLike = None, color: Union[bool, Tensor] = True,
                made: Optional[List["MacoParam"]] = None):
        """A ``param=`` factory for :func:`~cnnvis_ext.vis.activation_maximization` that makes
        MacoParams with this spectrum and colour matrix (``True``: ImageNet's for 3 channels,
        none for other counts; ``False``: none; or a matrix), appending them to ``made``."""

        def make(channels, size, generators, per_generator, device, dtype):
            m = color
            if isinstance(color, bool):
                m = IMAGENET_COLOR_CORRELATION if (color and channels == 3) else None
            p = MacoParam(channels, size, generators, per_generator, spectrum=spectrum, color=m,
                          device=device, dtype=dtype)
            if made is not None:
                made.append(p)
            return p

        return make

    def accumulate(self, image_grad: Tensor) -> None:
        """Adds ``|d objective / d image|`` of one step to the transparency maps."""
        self.transparency += image_grad.detach().abs()


class MacoResult(NamedTuple):
    """``images`` ``(N * k, C, H, W)`` in [0, 1]; ``values`` ``(steps, N)``; ``transparency``
    ``(N * k, C, H, W)``: the accumulated ``|gradient|`` at every pixel (where the optimization
    pushed), not normalized."""

    images: Tensor
    values: Tensor
    transparency: Tensor
