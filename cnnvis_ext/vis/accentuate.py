"""Optimization that starts from real images: feature accentuation and caricatures.

* :func:`feature_accentuation` (Hamblin, Fel, Saha, Konkle & Alvarez 2024, "Feature
  Accentuation: Revealing 'What' Features Respond to in Natural Images"): start from an
  image ``x0`` and raise one objective while a penalty keeps the image near ``x0``::

      maximize   objective(T(x)) - lam * d(x, x0)

  where ``T`` are the package's random transforms (as in activation maximization) and ``d``
  is the mean squared distance in pixels or, with ``reg_layer``, between the activations of
  ``x`` and ``x0`` at that layer (the paper's preferred, feature-space form). As in the
  paper, the image is parameterized in Fourier space and initialized *from the image*
  (:func:`param_from_images` inverts the parameterization), so step 0 is ``x0`` itself. What
  the result adds to ``x0`` shows what in that image the unit responds to.
* :func:`caricature` (Lucid's ``caricature`` / ``feature_inversion`` recipe): exaggerate
  whatever a layer sees in an image, by maximizing ``dot * max(cos, 0.1) ** power`` between
  the layer's activations of the optimized image and those of the original (``dot``: their
  inner product over the whole map, ``cos``: their cosine similarity, floored at 0.1 as in
  Lucid's ``_dot_cossim``). The original goes through the same random transform as the
  optimized image at every step (Lucid stacks both into one batch), so the two maps stay
  aligned.

Both are batched like :func:`~cnnvis_ext.vis.activation_maximization`: image ``i`` draws its
transforms from generators seeded by ``(seed, i)``, and its loss is a term of its own, so its
result does not depend on ``batch_size`` or on the other images of the batch.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._modules import model_device_dtype
from ..seeding import make_generator, resolve_seed
from ._common import (check_images, check_input_channels, check_int, check_layers, check_model,
                      check_number, eval_mode, progress_bar, run_layers)
from .actmax import ActMaxResult, _needs_fixed_size, _values
from .objectives import Objective, as_objective
from .param import FourierParam, ImageParam, PixelParam, make_param
from .transforms import make_transforms

__all__ = ["feature_accentuation", "caricature", "AccentuationResult", "param_from_images",
           "INIT_CLIP"]

#: Images are clipped to ``[INIT_CLIP, 1 - INIT_CLIP]`` before the Fourier parameterization
#: (a sigmoid) is inverted, so that black and white pixels get a finite pre-image that the
#: optimization can still move.
INIT_CLIP = 0.01


class AccentuationResult(NamedTuple):
    """``images``: ``(N, C, H, W)`` in [0, 1] on the model's device; ``values``: ``(steps, N)``,
    the objective (without the penalty) at every step; ``distances``: ``(steps, N)``, the
    penalty's distance ``d(x, x0)`` at every step."""

    images: Tensor
    values: Tensor
    distances: Tensor


# ------------------------------------------------------------------ initialization from images

def _fourier_from(images: Tensor, p: FourierParam) -> None:
    """Set ``p.spectrum`` so that ``p.image()`` equals ``images`` (clipped by INIT_CLIP)."""
    y = torch.logit(images.double().clamp(INIT_CLIP, 1 - INIT_CLIP))
    if p.color is not None:  # image() mixes channels by ``color``: undo it per pixel
        n, c, h, w = y.shape
        y = torch.linalg.solve(p.color.double(), y.reshape(n, c, h * w)).reshape(n, c, h, w)
    spec = torch.view_as_real(torch.fft.rfft2(4.0 * y, norm="ortho"))  # image() divides by 4
    spec = spec / p.scale.double()
    p.spectrum = spec.to(p.spectrum.dtype).contiguous().requires_grad_(True)


def param_from_images(images: Tensor, param: str = "fourier", *, decorrelate=True
                      ) -> Callable[..., ImageParam]:
    """A parameterization factory for :func:`~cnnvis_ext.vis.activation_maximization` whose
    images start as ``images`` instead of noise.

    ``activation_maximization(model, objs, param=param_from_images(x), size=x.shape[-2:])``
    starts objective ``i`` from ``x[i]``. The factory keeps count of the images it has handed
    out, so with ``batch_size`` the chunks get ``x[0:b]``, ``x[b:2b]``, ... in order; build a
    new factory for every call.

    Args:
        images: ``(N, C, H, W)`` in [0, 1], one per objective.
        param: ``"fourier"`` (:class:`~cnnvis_ext.vis.param.FourierParam` whose spectrum is the
            inverse of the image, clipped to ``[INIT_CLIP, 1 - INIT_CLIP]``) or ``"pixel"``
            (:class:`~cnnvis_ext.vis.param.PixelParam`, exact).
        decorrelate: as in ``activation_maximization`` (``"fourier"`` only): ``True``,
            ``False`` or a ``(C, C)`` colour matrix.

    Returns:
        A factory ``(channels, size, generators, per_generator, device, dtype) -> ImageParam``.
    """
    images = check_images(images)
    if images.dim() != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
    if param not in ("fourier", "pixel"):
        raise ValueError(f"param: expected 'fourier' or 'pixel', got {param!r}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images: expected values in [0, 1] (the parameterizations' range; "
                         "pass the model's normalization as normalize=)")
    used = [0]

    def factory(channels, size, generators, per_generator, device, dtype):
        n = len(generators) * per_generator
        start = used[0]
        if start + n > images.shape[0]:
            raise ValueError(f"images: {images.shape[0]} images for at least {start + n} "
                             "objectives")
        x = images[start:start + n].to(device=device, dtype=dtype)
        if x.shape[1:] != (channels, *tuple(size)):
            raise ValueError(f"images: expected ({channels}, {size[0]}, {size[1]}) images, got "
                             f"{tuple(x.shape[1:])}")
        used[0] += n
        if param == "pixel":
            p = PixelParam(channels, size, generators, per_generator, device=device, dtype=dtype)
            p.raw = (x - 0.5).clamp(p.lo, p.hi).detach().requires_grad_(True)
            return p
        matrix = None if isinstance(decorrelate, bool) else decorrelate
        p = FourierParam(channels, size, generators, per_generator, device=device, dtype=dtype,
                         decorrelate=bool(decorrelate) if matrix is None else False,
                         color_correlation=matrix)
        _fourier_from(x, p)
        return p

    return factory


# ------------------------------------------------------------------ the shared loop

def _pairs(objectives, images: Tensor) -> Tuple[List[Objective], Tensor]:
    """One objective per image: equal counts, or one of either broadcast to the other."""
    objs = ([as_objective(objectives)] if isinstance(objectives, (Objective, str))
            else [as_objective(o) for o in objectives])
    if not objs:
        raise ValueError("objectives: expected at least one objective")
    n = images.shape[0]
    if len(objs) == 1 and n > 1:
        objs = objs * n
    elif n == 1 and len(objs) > 1:
        images = images.expand(len(objs), *images.shape[1:])
    elif len(objs) != n:
        raise ValueError(f"objectives: expected one objective per image ({n}), or one objective "
                         f"for all images, or one image for all objectives; got {len(objs)}")
    return objs, images


def _start_images(model, images, name: str = "images") -> Tensor:
    images = check_images(images)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"{name}: expected (N, C, H, W) or (C, H, W), got shape "
                         f"{tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image")
    check_input_channels(model, images, name)
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name}: expected values in [0, 1] (pass the model's normalization as "
                         "normalize=(mean, std))")
    device, dtype = model_device_dtype(model)
    return images.to(device=device, dtype=dtype)


class _Run:
    """The checked settings every loop of this module shares."""

    def __init__(self, model, x0, *, steps, lr, param, transforms, seed, batch_size,
                 progress, normalize, decorrelate, keep_size):
        self.model, self.x0 = model, x0
        self.steps = check_int("steps", steps, 0)
        self.lr = check_number("lr", lr, positive=True)
        if param not in ("fourier", "pixel"):
            raise ValueError(f"param: expected 'fourier' or 'pixel', got {param!r}")
        self.param, self.decorrelate = param, decorrelate
        self.seed = resolve_seed(seed)
        n = x0.shape[0]
        self.bs = n if batch_size is None else check_int("batch_size", batch_size, 1)
        self.progress = progress
        self.device, self.dtype = x0.device, x0.dtype
        self.tfm = make_transforms(transforms)
        c, h, w = x0.shape[1:]
        if self.tfm is not None and keep_size is None:
            keep_size = _needs_fixed_size(model, self.tfm, c, h, w, self.device, self.dtype)
        self.keep_size = bool(keep_size)
        self.norm = None
        if normalize is not None:
            try:
                mean, std = (torch.as_tensor(v, device=self.device, dtype=self.dtype)
                             .reshape(1, -1, 1, 1) for v in normalize)
            except (TypeError, ValueError):
                raise ValueError(f"normalize: expected (mean, std), got {normalize!r}") from None
            self.norm = (mean, std)

    def normalized(self, x: Tensor) -> Tensor:
        return x if self.norm is None else (x - self.norm[0]) / self.norm[1]

    def view(self, img: Tensor, gens) -> Tensor:
        """What the model sees of ``img``: transformed (per image, from ``gens``), resized back
        when the model needs its size, normalized."""
        x = self.tfm(img, gens, 1) if self.tfm is not None else img
        if self.keep_size and x.shape[-2:] != img.shape[-2:]:
            x = F.interpolate(x, size=img.shape[-2:], mode="bilinear", align_corners=False)
        return self.normalized(x)

    def make_param(self, init: Optional[Tensor], dev_gens) -> ImageParam:
        c, h, w = self.x0.shape[1:]
        if init is None:  # noise, as activation_maximization draws it
            return make_param(self.param, c, (h, w), dev_gens, 1, self.device, self.dtype,
                              self.decorrelate)
        return param_from_images(init, self.param, decorrelate=self.decorrelate)(
            c, (h, w), dev_gens, 1, self.device, self.dtype)

    def optimize(self, init: Optional[Tensor], step_fn, desc: str):
        """Adam on every chunk; ``step_fn(s, e, img, host_gens) -> (total, value, distance)``.
        Returns the images and the stacked values and distances, ``(steps, N)`` each."""
        n = self.x0.shape[0]
        images, values, dists = [], [], []
        with eval_mode(self.model), torch.enable_grad():
            for s in range(0, n, self.bs):
                e = min(n, s + self.bs)
                dev_gens = [make_generator(self.seed, i, 0, self.device) for i in range(s, e)]
                host_gens = [make_generator(self.seed, i, 1, "cpu") for i in range(s, e)]
                p = self.make_param(None if init is None else init[s:e], dev_gens)
                leaves = p.params()
                opt = torch.optim.Adam(leaves, lr=self.lr)
                vs, ds = [], []
                for _ in progress_bar(range(self.steps), self.steps, self.progress,
                                      f"{desc} {s}-{e - 1}"):
                    img = p.image()
                    total, v, d = step_fn(s, e, img, host_gens)
                    grads = torch.autograd.grad(total.sum(), leaves)
                    vs.append(v.detach())
                    ds.append(d.detach() if d is not None else torch.zeros_like(v.detach()))
                    with torch.no_grad():
                        for leaf, g in zip(leaves, grads):
                            leaf.grad = -g
                        opt.step()
                        for leaf in leaves:
                            leaf.grad = None
                        if getattr(p, "pixel_space", False):  # clamp, as actmax does
                            ops.regularize_(p.raw, grads[0], lr=0.0, lo=p.lo, hi=p.hi)
                with torch.no_grad():
                    images.append(p.image().clamp(0, 1).detach())
                empty = torch.zeros(0, e - s, device=self.device, dtype=self.dtype)
                values.append(torch.stack(vs) if vs else empty)
                dists.append(torch.stack(ds) if ds else empty)
        return torch.cat(images), torch.cat(values, 1), torch.cat(dists, 1)


# ------------------------------------------------------------------ feature accentuation

def feature_accentuation(
    model: nn.Module,
    objectives,
    images: Tensor,
    *,
    lam: float = 10.0,
    reg_layer: Optional[str] = None,
    steps: int = 128,
    lr: float = 0.05,
    param: str = "fourier",
    transforms="standard",
    seed: Optional[int] = 0,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
    normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
    decorrelate=True,
    keep_size: Optional[bool] = None,
) -> AccentuationResult:
    r"""Feature accentuation (Hamblin et al. 2024): push an objective from a real image.

    Maximizes ``objective(T(x)) - lam * d(x, x0)`` with Adam, starting at ``x = x0`` (see the
    module docstring); ``d`` is ``mean((x - x0)^2)`` over the pixels, or with ``reg_layer``
    ``mean((f(x) - f(x0))^2)`` over that layer's activations ``f`` of the untransformed
    images. With ``lam=0`` it is plain activation maximization started from the image.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images (eval mode during the call).
        objectives: an objective or spec string (``"features.10:3"``), or a list: one per
            image, one for all images, or (with one image) one image for all objectives.
        images: ``(N, C, H, W)`` (or one ``(C, H, W)``) starting images in [0, 1].
        lam: the penalty's weight (>= 0), in units of the objective per unit of ``d``.
        reg_layer: measure ``d`` at this layer's activations instead of pixels.
        steps: Adam steps (>= 0). lr: Adam's step size.
        param: ``"fourier"`` (the paper's; Lucid's decorrelated Fourier image inverted at
            ``x0``) or ``"pixel"``.
        transforms: ``"standard"`` (Lucid's pad/jitter/scale/rotate), ``None`` or a list of
            :mod:`~cnnvis_ext.vis.transforms`; random per image, applied to the objective's
            input only.
        seed: image ``i`` draws its transforms from generators seeded by ``(seed, i)``.
        batch_size: images per batch (default: all); the results do not depend on it.
        progress: a tqdm bar (``None``: only for long runs on a terminal).
        normalize: ``(mean, std)`` applied to [0, 1] images before the model.
        decorrelate: the Fourier parameterization's colour matrix: ``True``, ``False`` or
            ``(C, C)``.
        keep_size: resize transformed images back to the input size (``None``: when the
            model cannot take the enlarged images, as activation_maximization).

    Returns:
        :class:`AccentuationResult` ``(images, values, distances)``: the accentuated images
        ``(N, C, H, W)`` in [0, 1], and the objective and ``d`` at every step ``(steps, N)``.

    Example:
        >>> res = feature_accentuation(model, "features.10:3", photos, lam=20.0)
    """
    check_model(model)
    x0 = _start_images(model, images)
    objs, x0 = _pairs(objectives, x0)
    lam = check_number("lam", lam, minimum=0.0)
    if reg_layer is not None and not isinstance(reg_layer, str):
        raise TypeError(f"reg_layer: expected a layer name, got {type(reg_layer).__name__}")
    check_layers(model, {l for o in objs for l in o.layers} | ({reg_layer} if reg_layer else set()))
    if not any(o.layers for o in objs):
        raise ValueError("objectives: no objective reads a layer")
    run = _Run(model, x0, steps=steps, lr=lr, param=param, transforms=transforms, seed=seed,
               batch_size=batch_size, progress=progress, normalize=normalize,
               decorrelate=decorrelate, keep_size=keep_size)
    layers = list(dict.fromkeys(l for o in objs for l in o.layers))
    ref = {}
    if reg_layer is not None:
        with eval_mode(model), torch.no_grad():
            ref_all = []
            for s in range(0, x0.shape[0], run.bs):
                ref_all.append(run_layers(model, run.normalized(x0[s:s + run.bs]),
                                          [reg_layer])[reg_layer])
            ref["f0"] = torch.cat(ref_all)

    def step(s, e, img, host_gens):
        x = run.view(img, host_gens)
        v = _values(objs[s:e], run_layers(model, x, layers), 1)
        if reg_layer is None:
            d = (img - x0[s:e]).pow(2).flatten(1).mean(1)
        else:
            f = run_layers(model, run.normalized(img), [reg_layer])[reg_layer]
            d = (f - ref["f0"][s:e]).pow(2).flatten(1).mean(1)
        return (v - lam * d if lam else v), v, d

    imgs, values, dists = run.optimize(x0, step, "accentuate")
    return AccentuationResult(imgs, values, dists)


# ------------------------------------------------------------------ caricature

def _dot_cossim(a: Tensor, b: Tensor, power: float) -> Tensor:
    """Lucid's ``_dot_cossim`` per image: ``dot * max(cos, 0.1) ** power``."""
    a, b = a.flatten(1), b.flatten(1)
    dot = (a * b).sum(1)
    if not power:
        return dot
    cos = dot / (a.norm(dim=1) + 1e-4) / (b.norm(dim=1) + 1e-4)
    return dot * cos.clamp_min(0.1).pow(power)


def caricature(
    model: nn.Module,
    layer: str,
    images: Tensor,
    *,
    power: float = 1.0,
    init: str = "noise",
    steps: int = 256,
    lr: float = 0.05,
    param: str = "fourier",
    transforms="standard",
    seed: Optional[int] = 0,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
    normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
    decorrelate=True,
    keep_size: Optional[bool] = None,
) -> ActMaxResult:
    r"""Caricatures (Lucid): exaggerate what ``layer`` sees in each image.

    Maximizes ``dot(f(T(x)), f(T(x0))) * max(cos, 0.1) ** power`` (see the module docstring),
    where ``f`` is ``layer``'s activation and ``T`` the same random transform for the
    optimized image and its original at every step, so that their maps stay aligned. The
    dot product grows with the activations' norm, the cosine keeps their direction: the
    result shows more of what the layer already sees, not something else.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images (eval mode during the call).
        layer: the layer whose activations are compared (a ``named_modules`` name).
        images: ``(N, C, H, W)`` (or one ``(C, H, W)``) originals in [0, 1].
        power: the cosine's exponent (>= 0; 0: the plain dot product).
        init: ``"noise"`` (Lucid: a fresh image, so the caricature shows only what the layer
            keeps) or ``"image"`` (start from the original).
        steps, lr, param, transforms, seed, batch_size, progress, normalize, decorrelate,
            keep_size: as :func:`feature_accentuation`.

    Returns:
        :class:`~cnnvis_ext.vis.ActMaxResult` ``(images, values)``: ``(N, C, H, W)`` in
        [0, 1], and the objective ``(steps, N)`` at every step.

    Example:
        >>> res = caricature(model, "features.10", photos, power=1.0, steps=512)
    """
    check_model(model)
    x0 = _start_images(model, images)
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a layer name, got {type(layer).__name__}")
    check_layers(model, [layer])
    power = check_number("power", power, minimum=0.0)
    if init not in ("noise", "image"):
        raise ValueError(f"init: expected 'noise' or 'image', got {init!r}")
    run = _Run(model, x0, steps=steps, lr=lr, param=param, transforms=transforms, seed=seed,
               batch_size=batch_size, progress=progress, normalize=normalize,
               decorrelate=decorrelate, keep_size=keep_size)

    def step(s, e, img, host_gens):
        states = [g.get_state() for g in host_gens]
        x = run.view(img, host_gens)
        twins = []  # the same draws for the originals: generators in the states used above
        for st in states:
            g = torch.Generator()
            g.set_state(st)
            twins.append(g)
        with torch.no_grad():
            a0 = run_layers(model, run.view(x0[s:e], twins), [layer])[layer]
        a = run_layers(model, x, [layer])[layer]
        v = _dot_cossim(a, a0, power)
        return v, v, None

    imgs, values, _ = run.optimize(x0 if init == "image" else None, step, "caricature")
    return ActMaxResult(imgs, values)
