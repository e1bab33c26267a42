"""Image parameterizations for activation maximization.

A parameterization owns the leaf tensors the optimizer changes and turns them
into a batch of images in ``[0, 1]``. Two are provided:

* :class:`PixelParam` — plain pixels, stored centred on grey
  (``image = raw + 0.5``), kept in range by clamping after each step; this is
  the space the Yosinski et al. (2015) priors (decay, blur, clipping) act on.
* :class:`FourierParam` — the Fourier-space, colour-decorrelated
  parameterization with 1/f spectrum scaling popularized by Lucid (Olah et al.,
  2017): the image is ``sigmoid(decorrelate(irfft2(scale * spectrum)))``.

Both draw their initial noise image by image from per-objective generators,
so an image does not depend on which other images share its batch.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .learned import UpConvInverter

__all__ = ["ImageParam", "PixelParam", "FourierParam", "GeneratorParam", "IMAGENET_COLOR_CORRELATION"]

#: Square root of the colour covariance of ImageNet images (Lucid's constant), RGB.
IMAGENET_COLOR_CORRELATION = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))


#: RMS of FourierParam's spectrum scaling. Measured (64 steps, standard transforms, random-weight
#: residual_cnn, channels of block2): 32 lifts the reached objective from 0.79x to 0.95x of
#: the pixel parameterization's at 32 px and from 0.74x to 0.92x at 224 px
#: (benchmarks/bench_feature_vis.py).
FOURIER_GAIN = 32.0


def _noise(generators: Sequence[torch.Generator], per_gen: int, shape, sd: float, device, dtype):
    parts = [torch.randn((per_gen, *shape), generator=g, device=device, dtype=torch.float32)
             for g in generators]
    return (torch.cat(parts) * sd).to(dtype)


class ImageParam:
    """Base class: ``params()`` are the leaves to optimize, ``image()`` the images in [0, 1]."""

    pixel_space = False

    def params(self) -> List[Tensor]:
        raise NotImplementedError

    def image(self) -> Tensor:
        raise NotImplementedError


class PixelParam(ImageParam):
    """Plain pixels, centred: ``image = raw + 0.5`` with ``raw`` in ``[-0.5, 0.5]``.

    Args:
        n, channels, size: batch size, channels, ``(H, W)``.
        generators, per_generator: one generator per objective and how many
            images each one draws (``n = len(generators) * per_generator``).
        sd: standard deviation of the initial noise around grey.
    """

    pixel_space = True
    lo, hi = -0.5, 0.5

    def __init__(self, channels: int, size, generators, per_generator: int = 1, sd: float = 0.01,
                 device=None, dtype=torch.float32):
        h, w = size
        self.raw = _noise(generators, per_generator, (channels, h, w), sd, device, dtype)
        self.raw.clamp_(self.lo, self.hi).requires_grad_(True)

    def params(self) -> List[Tensor]:
        return [self.raw]

    def image(self) -> Tensor:
        return self.raw + 0.5


def _freqs(h: int, w: int, device) -> Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class FourierParam(ImageParam):
    """Fourier-space, colour-decorrelated image with 1/f scaling (Lucid-style).

    Args:
        n, channels, size, generators, per_generator: as :class:`PixelParam`.
        sd: standard deviation of the initial spectrum (Lucid: 0.01).
        decay_power: the spectrum is scaled by ``1 / max(f, 1/max(H, W)) ** decay_power``,
            then normalized to a root mean square of ``gain``.
        gain: the RMS of that scaling. Lucid leaves it unnormalized, so an Adam step moves
            a 224 px image several times more than a 32 px one, and small images barely
            converge; normalized, a step moves the image by the same amount at every size.
        decorrelate: map channels through a colour-correlation matrix (3
            channels: ImageNet's; other counts: identity unless ``color_correlation``).
        color_correlation: a ``(C, C)`` matrix to use instead.
    """

    def __init__(self, channels: int, size, generators, per_generator: int = 1, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, color_correlation=None,
                 gain: float = FOURIER_GAIN, device=None, dtype=torch.float32):
        h, w = size
        self.h, self.w, self.channels = h, w, channels
        freqs = _freqs(h, w, device)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power
        scale = scale * (float(gain) / scale.pow(2).mean().sqrt())
        self.scale = scale.to(dtype)[None, None, :, :, None]
        self.spectrum = _noise(generators, per_generator, (channels, h, w // 2 + 1, 2), sd,
                               device, dtype).requires_grad_(True)
        m = None
        if color_correlation is not None:
            m = torch.as_tensor(color_correlation, dtype=torch.float64)
            if m.shape != (channels, channels):
                raise ValueError(f"color_correlation: expected a ({channels}, {channels}) matrix, "
                                 f"got {tuple(m.shape)}")
        elif decorrelate and channels == 3:
            m = torch.tensor(IMAGENET_COLOR_CORRELATION, dtype=torch.float64)
        if m is not None:
            m = m / m.norm(dim=0).max()
            self.color = m.to(device=device, dtype=dtype)
        else:
            self.color = None

    def params(self) -> List[Tensor]:
        return [self.spectrum]

    def image(self) -> Tensor:
        spec = self.scale * self.spectrum
        compute = spec.float() if spec.dtype in (torch.float16, torch.bfloat16) else spec
        img = torch.fft.irfft2(torch.view_as_complex(compute.contiguous()), s=(self.h, self.w),
                               norm="ortho").to(self.spectrum.dtype)
        img = img / 4.0
        if self.color is not None:
            img = torch.nn.functional.conv2d(img, self.color[:, :, None, None])  # 1x1: colour mixing
        return torch.sigmoid(img)


def make_param(param, channels: int, size, generators, per_generator: int, device, dtype,
               decorrelate: bool = True, generator=None) -> ImageParam:
    if isinstance(param, ImageParam):
        return param
    if callable(param) and not isinstance(param, str):
        return param(channels, size, generators, per_generator, device, dtype)
    if param == "pixel":
        return PixelParam(channels, size, generators, per_generator, device=device, dtype=dtype)
    if param == "fourier":
        matrix = None if isinstance(decorrelate, bool) else decorrelate
        return FourierParam(channels, size, generators, per_generator, device=device, dtype=dtype,
                            decorrelate=bool(decorrelate) if matrix is None else False,
                            color_correlation=matrix)
    if param == "generator":
        return make_generator_param(generator, channels, size, generators, per_generator, device,
                                    dtype)
    raise ValueError(f"param: expected 'pixel', 'fourier', 'generator', an ImageParam or a "
                     f"factory, got {param!r}")


# ---------------------------------------------------------------------- generator prior

class GeneratorParam(ImageParam):
    r"""Generator-prior parameterization (Nguyen et al. 2016, DGN-AM): ``image = inverter(h)``.

    The leaf is a code ``h`` at the inverter's layer, one per image. It starts
    at the mean code of the real data plus ``init_sd`` standard deviations of
    noise (drawn from each objective's generator), and after every step
    :meth:`after_step` applies the L2 decay ``h *= 1 - decay`` and clips ``h``
    to the per-dimension range of real codes recorded by :func:`train_inverter`.

    Args:
        generator: a trained :class:`UpConvInverter`.
        generators, per_generator: one ``torch.Generator`` per objective and the
            number of images each one draws.
        decay: L2 decay of the code per step (0: none).
        clip: clip the code to ``[code_lo, code_hi]`` (Nguyen et al.: yes).
        init_sd: standard deviation of the initial noise, in units of the
            per-dimension code standard deviation.
        device, dtype: of the code.
    """

    pixel_space = False

    def __init__(self, generator: UpConvInverter, generators, per_generator: int = 1, *,
                 decay: float = 0.01, clip: bool = True, init_sd: float = 0.5,
                 device=None, dtype=torch.float32):
        if not isinstance(generator, UpConvInverter):
            raise TypeError(f"generator: expected an UpConvInverter (train_inverter / "
                            f"UpConvInverter.load), got {type(generator).__name__}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay!r}")
        # The loops differentiate with respect to the code only (autograd.grad on params()),
        # so the generator's weights never receive a .grad.
        self.generator = generator
        self.decay, self.clip = float(decay), bool(clip)
        gdev = generator.code_lo.device
        device = gdev if device is None else torch.device(device)
        self.lo = generator.code_lo.to(device=device, dtype=dtype)
        self.hi = generator.code_hi.to(device=device, dtype=dtype)
        mean = generator.code_mean.to(device=device, dtype=dtype)
        std = generator.code_std.to(device=device, dtype=dtype)
        noise = torch.cat([torch.randn((per_generator, *generator.code_shape), generator=g,
                                       device=g.device, dtype=torch.float32)
                           for g in generators]).to(device=device, dtype=dtype)
        h = mean + init_sd * std * noise
        if self.clip:
            h = torch.minimum(torch.maximum(h, self.lo), self.hi)
        self.code = h.requires_grad_(True)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self.generator.image_shape

    def params(self) -> List[Tensor]:
        return [self.code]

    def image(self) -> Tensor:
        return self.generator(self.code)

    @torch.no_grad()
    def after_step(self) -> None:
        """L2 decay of the code, then clipping to the range of real codes."""
        if self.decay:
            self.code.mul_(1.0 - self.decay)
        if self.clip:
            torch.minimum(torch.maximum(self.code, self.lo), self.hi, out=self.code)


def make_generator_param(generator, channels: int, size, generators, per_generator: int, device,
                         dtype) -> GeneratorParam:
    """``param="generator"`` of :func:`~cnnvis_ext.vis.activation_maximization`, with its checks."""
    if generator is None:
        raise ValueError("generator: param='generator' needs generator=<UpConvInverter> (from "
                         "train_inverter or UpConvInverter.load)")
    if not isinstance(generator, UpConvInverter):
        raise TypeError(f"generator: expected an UpConvInverter, got {type(generator).__name__}")
    c, h, w = generator.image_shape
    if channels != c:
        raise ValueError(f"generator: it makes {c}-channel images but the model takes {channels} "
                         "channels")
    if tuple(size) != (h, w):
        raise ValueError(f"size: the generator makes {h}x{w} images; got size {tuple(size)} "
                         "(leave size unset)")
    return GeneratorParam(generator, generators, per_generator, device=device, dtype=dtype)
