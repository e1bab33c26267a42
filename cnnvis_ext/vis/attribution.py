"""Gradient-family attribution: saliency (with SmoothGrad), guided backprop, the
gradient form of the deconvnet, and Grad-CAM.

All functions take a batch of images and targets: ``target`` is an int (the
same class for every image), a ``(N,)`` tensor/sequence (one class per
image) or a ``(N, T)`` one (``T`` classes per image, computed in one batch;
results gain a ``T`` dimension after ``N``).

Guided backprop and the deconvnet change the backward pass of every
``nn.ReLU`` module and of the ReLU inside the fused
:class:`~cnnvis_ext.nn.ConvReLUPool2d` / :class:`~cnnvis_ext.nn.ConvReLU2d`
modules; ReLUs called functionally inside a custom ``forward`` are invisible
to them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import ConvReLUPool2d
from .._modules import get_layer
from ..seeding import make_generator, resolve_seed
from ._common import check_model, eval_mode, prepare_inputs
__all__ = ["saliency", "guided_backprop", "deconvnet_attribution", "grad_cam"]


class _GuidedReLU(torch.autograd.Function):
    """relu forward; backward passes only positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx, x):
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g.clamp(min=0) * (out > 0).to(g.dtype)


class _DeconvReLU(torch.autograd.Function):
    """relu forward; backward rectifies the gradient, ignoring the forward mask (Zeiler & Fergus)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


def fused_forward(m: ConvReLUPool2d, x: Tensor, relu: Callable[[Tensor], Tensor] = F.relu) -> Tensor:
    """The fused module computed as conv -> relu -> maxpool with plain functional ops."""
    y = F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    y = relu(y)
    if tuple(m.pool_kernel_size) == (1, 1) and tuple(m.pool_stride) == (1, 1):
        return y
    return F.max_pool2d(y, m.pool_kernel_size, m.pool_stride, m.pool_padding, ceil_mode=m.ceil_mode)


@contextmanager
def _relu_backward(model: nn.Module, fn):
    """Replace the forward of every nn.ReLU / fused module so that its ReLU is ``fn.apply``."""
    patched = []
    try:
        for m in model.modules():
            if type(m) is nn.ReLU or isinstance(m, ConvReLUPool2d):
                if isinstance(m, ConvReLUPool2d) and m.return_switches:
                    raise ValueError("model: fused modules with return_switches=True are not supported")
                had = "forward" in m.__dict__
                old = m.__dict__.get("forward")
                if isinstance(m, ConvReLUPool2d):
                    m.forward = (lambda mod: (lambda x: fused_forward(mod, x, fn.apply)))(m)
                else:
                    m.forward = lambda x: fn.apply(x)
                patched.append((m, had, old))
        yield
    finally:
        for m, had, old in patched:
            if had:
                m.forward = old
            else:
                del m.forward


def _select(out, t_flat):
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = out.reshape(out.shape[0], -1)
    if t_flat.numel() and int(t_flat.max()) >= out.shape[1]:
        raise ValueError(f"target: class {int(t_flat.max())} is out of range for a model with "
                         f"{out.shape[1]} outputs")
    return out.gather(1, t_flat[:, None]).sum()


def _input_grad(model, x, t_flat) -> Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_select(model(x), t_flat), x)
    return g


def _unflatten(g: Tensor, t: Tensor, multi: bool) -> Tensor:
    return g.reshape(t.shape[0], t.shape[1], *g.shape[1:]) if multi else g


def saliency(model: nn.Module, images: Tensor, target, *, absolute: bool = True,
             smoothgrad_samples: int = 0, noise_level: float = 0.15, seed: Optional[int] = 0,
             batch_size: Optional[int] = None) -> Tensor:
    r"""Gradient of the target logits with respect to the input (Simonyan et al. 2014).

    Args:
        model: any classifier ``nn.Module`` (run in eval mode; flags restored).
        images: ``(N, C, H, W)`` input batch, as the model expects it.
        target: class per image: int, ``(N,)`` or ``(N, T)``.
        absolute: return ``|grad|`` (the saliency map before the channel max).
        smoothgrad_samples: if > 0, SmoothGrad (Smilkov et al. 2017): the mean
            over this many noisy copies of each image (``|grad|`` per sample
            when ``absolute``).
        noise_level: SmoothGrad noise standard deviation as a fraction of each
            image's value range (``max - min``).
        seed: seeds the SmoothGrad noise. Image ``i``'s noise is
            ``randn((samples, C, H, W))`` from its own generator, so it does not
            depend on the batch.
        batch_size: images per forward/backward pass (default: all).

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target)
    t_flat = t.reshape(-1)
    s = int(smoothgrad_samples)
    if s < 0:
        raise ValueError(f"smoothgrad_samples: expected >= 0, got {smoothgrad_samples}")
    if noise_level < 0:
        raise ValueError(f"noise_level: expected >= 0, got {noise_level}")
    bs = x.shape[0] if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    seed = resolve_seed(seed)
    outs = []
    with eval_mode(model), torch.enable_grad():
        for start in range(0, x.shape[0], max(bs, 1)):
            xb, tb = x[start:start + bs], t_flat[start:start + bs]
            if s == 0:
                g = _input_grad(model, xb, tb)
                outs.append(g.abs() if absolute else g)
                continue
            T = t.shape[1] if multi else 1
            noises = []
            for j in range(xb.shape[0]):
                gen = make_generator(seed, (start + j) // T, 2, x.device)
                noises.append(torch.randn((s, *xb.shape[1:]), generator=gen, device=x.device,
                                          dtype=torch.float32).to(x.dtype))
            noise = torch.stack(noises, 1)  # (s, n, C, H, W)
            span = (xb.flatten(1).amax(1) - xb.flatten(1).amin(1)).reshape(1, -1, *([1] * (xb.dim() - 1)))
            noisy = (xb.unsqueeze(0) + noise_level * span * noise).reshape(-1, *xb.shape[1:])
            g = _input_grad(model, noisy, tb.repeat(s))
            g = g.abs() if absolute else g
            outs.append(g.reshape(s, *xb.shape).mean(0))
    return _unflatten(torch.cat(outs), t, multi)


def _modified_relu_gradient(model: nn.Module, images: Tensor, target, relu_fn) -> Tensor:
    """The input gradient of the target logits with every ReLU's backward replaced by ``relu_fn``."""
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target)
    with eval_mode(model), torch.enable_grad(), _relu_backward(model, relu_fn):
        g = _input_grad(model, x, t.reshape(-1))
    return _unflatten(g, t, multi)


def guided_backprop(model: nn.Module, images: Tensor, target) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015).

    The gradient of the target logits with every ReLU's backward replaced by
    ``grad_in = grad_out * (x > 0) * (grad_out > 0)``.

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    return _modified_relu_gradient(model, images, target, _GuidedReLU)


def deconvnet_attribution(model: nn.Module, images: Tensor, target) -> Tensor:
    """The deconvnet of Zeiler & Fergus (2014) in its gradient form.

    Backward pass with every ReLU's backward replaced by ``relu(grad_out)``
    (rectify, ignoring the forward mask); max pooling routes through the
    forward pass's switches and convolutions through their transposed
    kernels, as autograd does anyway.

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    return _modified_relu_gradient(model, images, target, _DeconvReLU)


def grad_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
             upsample: bool = True, normalize: bool = False) -> Tensor:
    r"""Grad-CAM (Selvaraju et al. 2017) at ``layer``.

    ``cam = relu(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of
    ``d logit_target / d A_k`` and ``A`` the output of ``layer``.

    Args:
        model, images, target: as :func:`saliency`.
        layer: a name from ``model.named_modules()`` with a 4-D output.
        relu: apply the final ReLU.
        upsample: bilinearly resize the map to the input's ``(H, W)``.
        normalize: divide each map by its maximum (maps that are all 0 stay 0).

    Returns:
        ``(N, H, W)`` (or ``(N, T, H, W)``) on the model's device.
    """
    check_model(model)
    mod = get_layer(model, layer)
    x, t, multi = prepare_inputs(model, images, target)
    store = {}

    def hook(_m, _i, out):
        a = out[0] if isinstance(out, (tuple, list)) else out
        store["a"] = a
        # Hand a copy downstream so that in-place ops after the layer cannot alter A.
        return a.clone() if not isinstance(out, (tuple, list)) else out

    with eval_mode(model), torch.enable_grad():
        h = mod.register_forward_hook(hook)
        try:
            xx = x.detach().requires_grad_(True)
            sel = _select(model(xx), t.reshape(-1))
        finally:
            h.remove()
        if "a" not in store:
            raise RuntimeError(f"layer: {layer!r} produced no output during the forward pass")
        a = store["a"]
        if a.dim() != 4:
            raise ValueError(f"layer: Grad-CAM needs a 4-D (N, C, H, W) output, {layer!r} gives "
                             f"shape {tuple(a.shape)}")
        (da,) = torch.autograd.grad(sel, a)
    w = da.mean((2, 3), keepdim=True)
    cam = (w * a.detach()).sum(1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    if upsample:
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[:, 0]
    if normalize:
        mx = cam.flatten(1).abs().amax(1).clamp_min(torch.finfo(cam.dtype).tiny)
        cam = cam / mx.reshape(-1, 1, 1)
    return _unflatten(cam, t, multi)
