"""Feature inversion (Mahendran & Vedaldi, "Understanding Deep Image
Representations by Inverting Them", CVPR 2015).

Finds ``x`` minimizing

    ||phi(x) - phi0||^2 / ||phi0||^2 + lambda_alpha R_alpha(x) + lambda_tv R_TV(x)

with the paper's normalization: the image is written ``x = B u`` where ``B``
is the image's scale (its average pixel norm), ``R_alpha = sum |u|^alpha / (H W)``
and ``R_TV = TV_beta(u / V') / (H W)`` with ``V' = 1 / 6.5`` (the paper's
``V = B / 6.5``), so the weights do not depend on the range of the input.
Optimized by gradient descent with momentum and step drops of the learning
rate. Batched over images and layers: ``N`` images and ``L`` layers give
``N * L`` reconstructions in one batch.
"""
from __future__ import annotations

import zlib
from typing import List, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .._modules import model_device_dtype
from .. import ops
from ..seeding import make_generator, resolve_seed
from ._common import (check_float_images, check_input_channels, check_int, check_layers, check_model,
                      check_number, eval_mode, progress_bar, run_layers)
__all__ = ["InversionResult", "invert"]


class InversionResult(NamedTuple):
    """``images``: ``(N, L, C, H, W)`` reconstructions in the model's input space
    (``(N, C, H, W)`` when ``layer`` is one name); ``errors``: ``(steps, N, L)`` (or
    ``(steps, N)``) normalized reconstruction error ``||phi(x) - phi0||^2 / ||phi0||^2``
    at every step."""

    images: Tensor
    errors: Tensor


def invert(model: nn.Module, layer: Union[str, Sequence[str]], image: Tensor, *,
           steps: int = 200, lr: float = 0.05, momentum: float = 0.9,
           lr_drops: Sequence[float] = (0.5, 0.75), lr_drop_factor: float = 0.1,
           alpha: float = 6.0, beta: float = 2.0, lambda_alpha: float = 1e-5,
           lambda_tv: float = 0.05, init_std: float = 1e-3, seed: Optional[int] = 0,
           progress: Optional[bool] = None) -> InversionResult:
    r"""Reconstruct images from their representation at ``layer``.

    Args:
        model: any ``nn.Module`` (eval mode during the call; flags restored).
        layer: a layer name or a list of names (``named_modules()`` names).
        image: ``(C, H, W)`` or ``(N, C, H, W)`` in the model's input space.
        steps: iterations (paper: a few hundred).
        lr: initial learning rate, for the normalized objective.
        momentum: momentum of the gradient descent (paper: 0.9).
        lr_drops: fractions of ``steps`` at which the learning rate is
            multiplied by ``lr_drop_factor``.
        alpha, beta: exponents of the alpha-norm and TV priors (paper: 6 and 2).
        lambda_alpha, lambda_tv: prior weights on the normalized terms. The
            paper uses larger TV weights for deeper layers (about 0.5 for the
            first conv layers, 5 for the middle ones, 50 for the last ones).
        init_std: standard deviation of the initial noise (in units of ``B``).
        seed: reproducibility; the reconstruction of image ``i`` at a layer
            draws its noise from a generator seeded by ``(seed, i, layer name)``,
            so it does not depend on the other layers of the batch.
        progress: tqdm bar (``None``: only for long runs on a terminal).

    Returns:
        :class:`InversionResult` ``(images, errors)``.
    """
    check_model(model)
    single = isinstance(layer, str)
    layers: List[str] = [layer] if single else list(layer)
    if not layers:
        raise ValueError("layer: expected at least one layer name")
    check_layers(model, layers)
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a Tensor, got {type(image).__name__}")
    one = image.dim() == 3
    if one:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"image: expected (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    check_float_images(image, "image")
    steps = check_int("steps", steps, 0)
    lr, alpha, beta = (check_number(n, v, positive=True) for n, v in
                       (("lr", lr), ("alpha", alpha), ("beta", beta)))
    lambda_alpha, lambda_tv, init_std = (check_number(n, v, minimum=0.0) for n, v in
                                         (("lambda_alpha", lambda_alpha), ("lambda_tv", lambda_tv),
                                          ("init_std", init_std)))
    if not 0 <= check_number("momentum", momentum) < 1:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    check_input_channels(model, image, "image")
    seed = resolve_seed(seed)
    device, dtype = model_device_dtype(model)
    x0 = image.to(device=device, dtype=dtype)
    n, c, h, w = x0.shape
    L = len(layers)
    hw = float(h * w)

    with eval_mode(model):
        with torch.no_grad():
            phi0 = {k: v.detach() for k, v in run_layers(model, x0, layers).items()}
            scale = x0.norm(dim=1).flatten(1).mean(1).clamp_min(torch.finfo(dtype).tiny)  # B per image
        # reconstruction b = i * L + l inverts image i at layers[l]
        B = scale.repeat_interleave(L).reshape(-1, 1, 1, 1)
        noise = [torch.randn((c, h, w), generator=make_generator(seed, i, 3 + zlib.crc32(name.encode()),
                                                                  device),
                             device=device, dtype=torch.float32)
                 for i in range(n) for name in layers]
        u = (torch.stack(noise).to(dtype) * init_std).requires_grad_(True) if n else \
            torch.zeros(0, c, h, w, device=device, dtype=dtype, requires_grad=True)
        targets = [phi0[name].repeat_interleave(1, 0) for name in layers]
        denom = [t.flatten(1).pow(2).sum(1).clamp_min(torch.finfo(dtype).tiny) for t in targets]
        opt = torch.optim.SGD([u], lr=lr, momentum=momentum)
        milestones = sorted({int(round(f * steps)) for f in lr_drops if 0 < f < 1})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=lr_drop_factor)
        errors = []
        for step in progress_bar(range(steps), steps, progress, "invert"):
            with torch.enable_grad():
                x = B * u
                acts = run_layers(model, x, layers)
                err = x.new_zeros(n, L)
                cols = []
                for li, name in enumerate(layers):
                    a = acts[name][li::L]
                    cols.append((a - targets[li]).flatten(1).pow(2).sum(1) / denom[li])
                err = torch.stack(cols, 1) if cols else err  # (n, L)
                # The objective times H*W: the same minimizer, with per-pixel gradients
                # whose size does not depend on the image size.
                total = err.sum() * hw
                if lambda_alpha:
                    total = total + lambda_alpha * u.abs().pow(alpha).sum()
                if lambda_tv:
                    total = total + lambda_tv * (6.5 ** beta) * ops.total_variation(u, beta=beta)
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"invert: the objective became non-finite at step {step} (of {steps}); "
                        "the image or the model's activations overflowed. Lower lr or check the "
                        "model on this input")
                opt.zero_grad(set_to_none=True)
                total.backward(inputs=[u])
                # Scale-free steps: each reconstruction's gradient is divided by its RMS, so a
                # step moves its pixels by about lr (in units of the image scale B) whatever the
                # network's gain; the objective's normalization alone does not bound that gain.
                g = u.grad
                rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(torch.finfo(dtype).tiny)
                g.div_(rms.reshape(-1, 1, 1, 1))
            opt.step()
            sched.step()
            errors.append(err.detach())
        with torch.no_grad():
            rec = (B * u).detach().reshape(n, L, c, h, w)
    errs = torch.stack(errors) if errors else torch.zeros(0, n, L, device=device, dtype=dtype)
    if single:
        rec, errs = rec[:, 0], errs[..., 0]
    if one:
        rec, errs = rec[0], errs[:, 0]
    return InversionResult(rec, errs)
