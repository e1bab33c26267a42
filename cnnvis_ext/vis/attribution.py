"""Gradient-family attribution: saliency (with SmoothGrad), guided backprop and the
gradient form of the deconvnet (Grad-CAM and the CAM family: :mod:`.cam`; integrated
gradients and occlusion: :mod:`.perturbation`).

All functions take a batch of images and targets: ``target`` is an int (the
same class for every image), a ``(N,)`` tensor/sequence (one class per
image), a ``(N, T)`` one (``T`` classes per image; results gain a ``T`` dimension
after ``N``) or ``"all"`` (every class of the output). Saliency computes the ``T`` maps of
an image with one forward pass and one batched backward pass (:func:`target_grads`);
guided backprop and the deconvnet run the image once per target.

Guided backprop and the deconvnet change the backward pass of every
ReLU-family activation the forward pass runs: ``nn.ReLU`` and ``nn.ReLU6``
modules, functional calls (``F.relu``, ``torch.relu``, ``x.relu()``,
``F.relu6``, ``F.hardtanh(x, 0, ...)``, in place or not) anywhere in a custom
``forward``, and the ReLU inside the fused
:class:`~cnnvis_ext.nn.ConvReLUPool2d` / :class:`~cnnvis_ext.nn.ConvReLU2d`
modules. They are intercepted with a :class:`torch.overrides.TorchFunctionMode`,
so no tracing is needed. Element-wise activations for which the methods define
no rule (SiLU, Hardswish, GELU, ...) pass the gradient unchanged, with a
warning naming them.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..nn import ConvReLUPool2d
from ..seeding import make_generator, resolve_seed
from ._common import check_int, check_model, check_number, eval_mode, prepare_inputs
__all__ = ["saliency", "guided_backprop", "deconvnet_attribution"]


class _GuidedReLU(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward passes only the positive gradients, and only where
    the forward's derivative is 1 (``lo < x < hi``)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        # the mask, not x: an in-place activation overwrites x after this returns
        ctx.save_for_backward(x > lo if hi is None else (x > lo) & (x < hi))
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g.clamp(min=0) * inside.to(g.dtype), None, None


class _DeconvReLU(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward rectifies the gradient, ignoring the forward mask
    (Zeiler & Fergus)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0), None, None


def fused_forward(m: ConvReLUPool2d, x: Tensor) -> Tensor:
    """The fused module computed as conv -> relu (or relu6) -> maxpool with functional ops, its
    BatchNorm folded, so that the ReLU-family mode sees the activation."""
    w, b = m.folded_weight_bias()
    y = F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    y = F.relu6(y) if m.activation == "relu6" else F.relu(y)
    if tuple(m.pool_kernel_size) == (1, 1) and tuple(m.pool_stride) == (1, 1):
        return y
    return F.max_pool2d(y, m.pool_kernel_size, m.pool_stride, m.pool_padding, ceil_mode=m.ceil_mode)


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _relu_bounds(func, args, kwargs):
    """``(x, lo, hi, inplace)`` when ``func`` is a ReLU-family call, else None.

    The family: ``relu`` in every spelling (``F.relu``, ``torch.relu``, ``Tensor.relu``,
    their in-place forms; ``nn.ReLU`` calls ``F.relu``), ``relu6`` and ``hardtanh`` with a
    lower bound of 0 (``nn.ReLU6`` calls ``F.hardtanh(x, 0, 6)``).
    """
    if func in _RELU_FUNCS:
        inplace = func in _RELU_INPLACE or bool(_arg(args, kwargs, 1, "inplace", False))
        return args[0], 0.0, None, inplace
    if func is F.relu6:
        return args[0], 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh:
        lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
        if lo == 0.0:
            return (args[0], 0.0, float(_arg(args, kwargs, 2, "max_val", 1.0)),
                    bool(_arg(args, kwargs, 3, "inplace", False)))
    return None


_RELU_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}
_RELU_INPLACE = {F.relu_, torch.relu_, Tensor.relu_}
#: Element-wise activations for which guided backprop and the deconvnet define no rule.
_UNDEFINED_ACTIVATIONS = {F.silu: "SiLU", F.hardswish: "Hardswish", F.gelu: "GELU",
                          F.mish: "Mish", F.elu: "ELU", F.selu: "SELU", F.celu: "CELU",
                          F.leaky_relu: "LeakyReLU", F.softplus: "Softplus"}


class _ModifiedReLUMode(TorchFunctionMode):
    """Routes every ReLU-family call of a forward pass through ``fn`` (whatever module or
    functional call makes it) and records the activations that have no such rule."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.undefined = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hit = _relu_bounds(func, args, kwargs)
        if hit is not None and isinstance(hit[0], Tensor) and hit[0].is_floating_point():
            x, lo, hi, inplace = hit
            y = self.fn.apply(x, lo, hi)
            if inplace:  # keep the caller's in-place semantics; autograd goes through y
                return x.copy_(y)
            return y
        if func in _UNDEFINED_ACTIVATIONS:
            self.undefined.add(_UNDEFINED_ACTIVATIONS[func])
        return func(*args, **kwargs)


_ACTIVATION_MODULES = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ELU, nn.SELU, nn.CELU,
                       nn.LeakyReLU, nn.Softplus)


@contextmanager
def _relu_backward(model: nn.Module, fn, method: str):
    """Inside the block, every ReLU-family activation of ``model``'s forward has ``fn``'s
    backward: calls of the ReLU family through :class:`_ModifiedReLUMode`, and the ReLU
    inside the fused :class:`~cnnvis_ext.nn.ConvReLUPool2d` modules by running them as
    conv -> relu -> pool. Activations without a rule pass the plain gradient, with one
    warning naming them."""
    patched = []
    mode = _ModifiedReLUMode(fn)
    try:
        for m in model.modules():
            if isinstance(m, ConvReLUPool2d):
                if m.return_switches:
                    raise ValueError("model: fused modules with return_switches=True are not supported")
                had = "forward" in m.__dict__
                old = m.__dict__.get("forward")
                m.forward = (lambda mod: (lambda x: fused_forward(mod, x)))(m)
                patched.append((m, had, old))
        with mode:
            yield
    finally:
        for m, had, old in patched:
            if had:
                m.forward = old
            else:
                del m.forward
    if mode.undefined:
        names = [n for n, m in model.named_modules() if isinstance(m, _ACTIVATION_MODULES)]
        where = (f"modules {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names
                 else "functional calls in the model's forward")
        warnings.warn(f"{method}: the model has {', '.join(sorted(mode.undefined))} activations "
                      f"({where}); {method} defines no rule for them, so the gradient passes "
                      "through them unchanged", stacklevel=4)


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


@contextmanager
def grad_mode(model: nn.Module, create_graph: bool):
    """Eval mode with gradients on for the block. Without ``create_graph`` the parameters are
    frozen too (:func:`eval_mode`: nobody reads their gradients); with it they keep
    ``requires_grad`` so that the maps stay differentiable with respect to them."""
    if not create_graph:
        with eval_mode(model), torch.enable_grad():
            yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, was in flags:
            m.training = was


def logits_2d(out) -> Tensor:
    """The model output as ``(N, K)`` (the first element of a tuple output)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1)


def target_grads(out, inputs, t: Tensor, create_graph: bool = False):
    """Gradients of the target logits with respect to each tensor of ``inputs``.

    ``t`` is ``(N,)``: one gradient per input, shaped like it. ``t`` is ``(N, T)``: the
    ``T`` gradients of every row in one batched backward pass
    (``autograd.grad(..., is_grads_batched=True)`` with ``(T, N, K)`` one-hot output
    gradients), returned as ``(N, T, ...)``; the forward pass that made ``out`` is shared.
    """
    out = logits_2d(out)
    if t.numel() and int(t.max()) >= out.shape[1]:
        raise ValueError(f"target: class {int(t.max())} is out of range for a model with "
                         f"{out.shape[1]} outputs")
    if t.dim() == 1:
        return torch.autograd.grad(out.gather(1, t[:, None]).sum(), inputs,
                                   create_graph=create_graph)
    T = t.shape[1]
    if T == 1:
        gs = torch.autograd.grad(out.gather(1, t).sum(), inputs, create_graph=create_graph)
        return tuple(g.unsqueeze(1) for g in gs)
    onehot = torch.zeros((T, *out.shape), dtype=out.dtype, device=out.device)
    onehot.scatter_(2, t.t().unsqueeze(2), 1.0)
    gs = torch.autograd.grad(out, inputs, grad_outputs=onehot, is_grads_batched=True,
                             create_graph=create_graph)
    return tuple(g.transpose(0, 1) for g in gs)


def _unflatten(g: Tensor, t: Tensor, multi: bool) -> Tensor:
    return g.reshape(t.shape[0], t.shape[1], *g.shape[1:]) if multi else g


def saliency(model: nn.Module, images: Tensor, target, *, absolute: bool = True,
             smoothgrad_samples: int = 0, noise_level: float = 0.15, seed: Optional[int] = 0,
             batch_size: Optional[int] = None, create_graph: bool = False) -> Tensor:
    r"""Gradient of the target logits with respect to the input (Simonyan et al. 2014).

    Args:
        model: any classifier ``nn.Module`` (run in eval mode; flags restored).
        images: ``(N, C, H, W)`` input batch, as the model expects it.
        target: class per image: int, ``(N,)``, ``(N, T)`` or ``"all"``; the ``T`` maps of
            an image come from one forward and one batched backward pass.
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
        create_graph: keep the graph of the backward pass, so that the maps can be
            differentiated (with respect to the model's parameters, e.g. for a training
            loss on explanations); the parameters are then not frozen.

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    s = check_int("smoothgrad_samples", smoothgrad_samples, 0)
    noise_level = check_number("noise_level", noise_level, minimum=0.0)
    bs = x.shape[0] if batch_size is None else check_int("batch_size", batch_size, 1)
    seed = resolve_seed(seed)
    outs = []
    with grad_mode(model, create_graph):
        for start in range(0, x.shape[0], max(bs, 1)):
            xb, tb = x[start:start + bs], t[start:start + bs]
            if s == 0:
                xb = xb.detach().requires_grad_(True)
                (g,) = target_grads(model(xb), (xb,), tb, create_graph)
                outs.append(g.abs() if absolute else g)
                continue
            noises = []
            for j in range(xb.shape[0]):
                gen = make_generator(seed, start + j, 2, x.device)
                noises.append(torch.randn((s, *xb.shape[1:]), generator=gen, device=x.device,
                                          dtype=torch.float32).to(x.dtype))
            noise = torch.stack(noises, 1)  # (s, n, C, H, W)
            span = (xb.flatten(1).amax(1) - xb.flatten(1).amin(1)).reshape(1, -1, *([1] * (xb.dim() - 1)))
            noisy = (xb.unsqueeze(0) + noise_level * span * noise).reshape(-1, *xb.shape[1:])
            noisy = noisy.detach().requires_grad_(True)
            # row k * n + j is image j's k-th sample
            tr = tb.repeat(s) if tb.dim() == 1 else tb.repeat(s, 1)
            (g,) = target_grads(model(noisy), (noisy,), tr, create_graph)
            g = g.abs() if absolute else g
            outs.append(g.reshape(s, xb.shape[0], *g.shape[1:]).mean(0))
    return torch.cat(outs)


def _modified_relu_gradient(model: nn.Module, images: Tensor, target, relu_fn, method: str
                            ) -> Tensor:
    """The input gradient of the target logits with every ReLU's backward replaced by ``relu_fn``."""
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    with eval_mode(model), torch.enable_grad(), _relu_backward(model, relu_fn, method):
        xx = x.detach().requires_grad_(True)
        # (N, T) targets: one forward, one batched backward through the modified ReLUs
        (g,) = target_grads(model(xx), (xx,), t)
    return g


def guided_backprop(model: nn.Module, images: Tensor, target) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015).

    The gradient of the target logits with every ReLU's backward replaced by
    ``grad_in = grad_out * (x > 0) * (grad_out > 0)``.

    Args:
        model, images, target: as :func:`saliency` (the T maps of an image from one forward
            and one batched backward pass).

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    return _modified_relu_gradient(model, images, target, _GuidedReLU, "guided_backprop")


def deconvnet_attribution(model: nn.Module, images: Tensor, target) -> Tensor:
    """The deconvnet of Zeiler & Fergus (2014) in its gradient form.

    Backward pass with every ReLU's backward replaced by ``relu(grad_out)``
    (rectify, ignoring the forward mask); max pooling routes through the
    forward pass's switches and convolutions through their transposed
    kernels, as autograd does anyway.

    Args:
        model, images, target: as :func:`saliency` (the T maps of an image from one forward
            and one batched backward pass).

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    return _modified_relu_gradient(model, images, target, _DeconvReLU,
                                   "deconvnet_attribution")
