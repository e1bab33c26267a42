"""The class activation map (CAM) family at any layer of any CNN.

Gradient CAMs (one forward pass; the backward pass stops at the layer):
:func:`grad_cam`, :func:`grad_cam_pp` (Grad-CAM++), :func:`xgrad_cam`, :func:`layer_cam`,
:func:`hires_cam`. Forward-only CAMs: :func:`score_cam` and :func:`ablation_cam` (one forward
pass per channel, batched within ``batch_size``), :func:`eigen_cam` (no target).
:func:`guided_grad_cam` multiplies guided backprop by the upsampled Grad-CAM.

Every function takes ``(model, layer, images, target)``: ``layer`` is a name from
``model.named_modules()`` whose output is ``(N, C, h, w)``; ``target`` is an int, ``(N,)``,
``(N, T)`` or ``"all"``. The maps are ``(N, H, W)`` (``(N, T, H, W)`` for ``(N, T)``
targets), bilinearly upsampled to the input (``align_corners=False``, what
``cv2.resize`` does) unless ``upsample=False``. Gradient CAMs compute all ``T`` maps with
one forward pass and one batched backward pass; Score-CAM and Ablation-CAM read all ``T``
target scores from the same per-channel forward passes.

Normalization: the maps are the papers' (after the final ReLU) with no rescaling unless
``normalize=True`` (divide each by its maximum). pytorch-grad-cam returns each map min-max
scaled to [0, 1] (``(cam - min) / (max + 1e-7)``, before its resize); apply that to
``upsample=False`` maps to compare.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._modules import get_layer
from ._common import check_int, check_model, eval_mode, prepare_inputs
from .attribution import grad_mode, guided_backprop, logits_2d, target_grads

__all__ = ["grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "score_cam",
           "ablation_cam", "eigen_cam", "guided_grad_cam", "CAM_METHODS"]


def _capture(model: nn.Module, layer: str, x: Tensor, *, leaf: bool, method: str):
    """Run ``model(x)`` and capture the output ``A`` of ``layer``: ``(A, logits)``.

    ``leaf``: ``A`` becomes a leaf that requires grad (the forward pass records no graph
    before the layer, so a backward pass from the logits stops there); otherwise ``A``
    keeps whatever graph it has. Modules after the layer get a copy of ``A``, so in-place
    ops there (``ReLU(inplace=True)``) cannot alter it.
    """
    mod = get_layer(model, layer)
    store = {}

    def hook(_m, _i, out):
        a = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(a, Tensor) or a.dim() != 4:
            store["bad"] = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
            return None
        if leaf:
            a = a.detach().requires_grad_(True)
        store["a"] = a
        return type(out)((a.clone(), *out[1:])) if isinstance(out, (tuple, list)) else a.clone()

    h = mod.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        h.remove()
    if "bad" in store:
        raise ValueError(f"layer: {method} needs a 4-D (N, C, H, W) output, {layer!r} gives "
                         f"shape {store['bad']}")
    if "a" not in store:
        raise RuntimeError(f"layer: {layer!r} produced no output during the forward pass")
    return store["a"], out


def _finish(cam: Tensor, size, multi: bool, relu: bool, upsample: bool, normalize: bool) -> Tensor:
    """``(N, T, h, w)`` raw maps -> the final ReLU, the resize, the scaling; T squeezed
    for single targets."""
    n, T = cam.shape[:2]
    if relu:
        cam = cam.clamp(min=0)
    if upsample:
        cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    if normalize:
        mx = cam.flatten(2).abs().amax(2).clamp_min(torch.finfo(cam.dtype).tiny)
        cam = cam / mx[:, :, None, None]
    return cam if multi else cam[:, 0]


def _gradient_cam(model, layer, images, target, combine, method, *, relu, upsample, normalize,
                  create_graph) -> Tensor:
    """Shared body of the gradient CAMs: ``combine(A (N, 1, C, h, w), G (N, T, C, h, w))``
    gives the raw ``(N, T, h, w)`` maps."""
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    with grad_mode(model, create_graph):
        a, out = _capture(model, layer, x, leaf=not create_graph, method=method)
        (g,) = target_grads(out, (a,), t if multi else t[:, None], create_graph)
    if not create_graph:
        a = a.detach()
    cam = combine(a.unsqueeze(1), g)
    return _finish(cam, x.shape[-2:], multi, relu, upsample, normalize)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0 (with finite gradients on both branches)."""
    nz = den != 0
    return torch.where(nz, num / torch.where(nz, den, torch.ones_like(den)), torch.zeros_like(num))


_DOC_ARGS = """
    Args:
        model: any CNN ``nn.Module`` (run in eval mode; flags restored).
        layer: a name from ``model.named_modules()`` with a 4-D ``(N, C, h, w)`` output.
        images: ``(N, C, H, W)`` input batch, as the model expects it.
        target: class per image: int, ``(N,)``, ``(N, T)`` or ``"all"``.
        relu: apply the final ReLU.
        upsample: bilinearly resize the map to the input's ``(H, W)``.
        normalize: divide each map by its maximum (maps that are all 0 stay 0).
        create_graph: return maps that can be backpropagated into (with respect to the
            model's parameters and the input); the parameters are then not frozen.

    Returns:
        ``(N, H, W)`` (or ``(N, T, H, W)``) on the model's device.
"""


def grad_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
             upsample: bool = True, normalize: bool = False, create_graph: bool = False) -> Tensor:
    return _gradient_cam(model, layer, images, target,
                         lambda a, g: (g.mean((3, 4), keepdim=True) * a).sum(2), "Grad-CAM",
                         relu=relu, upsample=upsample, normalize=normalize,
                         create_graph=create_graph)


grad_cam.__doc__ = r"""Grad-CAM (Selvaraju et al. 2017) at ``layer``.

    ``cam = relu(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of
    ``d logit_target / d A_k`` and ``A`` the output of ``layer`` (captum's LayerGradCam).
""" + _DOC_ARGS


def _grad_cam_pp_combine(a: Tensor, g: Tensor) -> Tensor:
    g2 = g * g
    alpha = _safe_div(g2, 2 * g2 + a.sum((3, 4), keepdim=True) * g2 * g)
    w = (alpha * g.clamp(min=0)).sum((3, 4), keepdim=True)
    return (w * a).sum(2)


def grad_cam_pp(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
                upsample: bool = True, normalize: bool = False,
                create_graph: bool = False) -> Tensor:
    return _gradient_cam(model, layer, images, target, _grad_cam_pp_combine, "Grad-CAM++",
                         relu=relu, upsample=upsample, normalize=normalize,
                         create_graph=create_graph)


grad_cam_pp.__doc__ = r"""Grad-CAM++ (Chattopadhay et al. 2018) at ``layer``.

    ``w_k = sum_ij alpha_kij relu(g_kij)`` with ``g = d logit / d A`` and
    ``alpha = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` (the paper's eq. 19 with the
    exponential's positive per-image factor ``exp(S)`` left out, as the authors' code and
    pytorch-grad-cam do); ``alpha = 0`` where the denominator is 0. pytorch-grad-cam adds
    ``1e-6`` to every denominator, which the paper does not: where ``g`` is small that
    changes the weights.
""" + _DOC_ARGS


def _xgrad_cam_combine(a: Tensor, g: Tensor) -> Tensor:
    w = _safe_div(g * a, a.sum((3, 4), keepdim=True)).sum((3, 4), keepdim=True)
    return (w * a).sum(2)


def xgrad_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
              upsample: bool = True, normalize: bool = False, create_graph: bool = False) -> Tensor:
    return _gradient_cam(model, layer, images, target, _xgrad_cam_combine, "XGrad-CAM",
                         relu=relu, upsample=upsample, normalize=normalize,
                         create_graph=create_graph)


xgrad_cam.__doc__ = r"""XGrad-CAM (Fu et al. 2020) at ``layer``.

    ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij`` (0 for channels whose sum is 0; the
    paper divides exactly, pytorch-grad-cam adds ``1e-7`` to the sum).
""" + _DOC_ARGS


def layer_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
              upsample: bool = True, normalize: bool = False, create_graph: bool = False) -> Tensor:
    return _gradient_cam(model, layer, images, target,
                         lambda a, g: (g.clamp(min=0) * a).sum(2), "LayerCAM",
                         relu=relu, upsample=upsample, normalize=normalize,
                         create_graph=create_graph)


layer_cam.__doc__ = r"""LayerCAM (Jiang et al. 2021) at ``layer``.

    ``cam = relu(sum_k relu(g_k) * A_k)``, the gradient weighting each position.
""" + _DOC_ARGS


def hires_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
              upsample: bool = True, normalize: bool = False, create_graph: bool = False) -> Tensor:
    return _gradient_cam(model, layer, images, target, lambda a, g: (g * a).sum(2), "HiResCAM",
                         relu=relu, upsample=upsample, normalize=normalize,
                         create_graph=create_graph)


hires_cam.__doc__ = r"""HiResCAM (Draelos & Carin 2020) at ``layer``.

    ``cam = sum_k g_k * A_k`` element-wise (with ``relu``, as pytorch-grad-cam always
    applies; ``relu=False`` gives the paper's signed map).
""" + _DOC_ARGS


def _check_batch(batch_size, default: int) -> int:
    return default if batch_size is None else check_int("batch_size", batch_size, 1)


def score_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
              upsample: bool = True, normalize: bool = False,
              batch_size: Optional[int] = None) -> Tensor:
    r"""Score-CAM (Wang et al. 2020) at ``layer``.

    Every channel ``A_k`` of an image, bilinearly upsampled to the input and min-max scaled
    to [0, 1], masks the image; the channel's weight is the softmax probability of the
    target class on the masked image (the paper and its authors' code); the map is
    ``relu(sum_k w_k A_k)``. pytorch-grad-cam instead takes a softmax over the channels of
    the target logits; with its target set to the log-probability its weights are ours
    divided by their sum over the channels (the same maps after its min-max scaling).
    The masks are upsampled with ``align_corners=True`` as pytorch-grad-cam does (the paper
    does not say). Channels that are constant give an all-zero mask, so the zero image is
    run once for all of them.

    Args:
        model, layer, images, target, relu, upsample, normalize: as :func:`grad_cam`.
        batch_size: masked images per forward pass (default 64).

    Returns:
        ``(N, H, W)`` (or ``(N, T, H, W)``) on the model's device.
    """
    check_model(model)
    bs = _check_batch(batch_size, 64)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    tt = t if multi else t[:, None]
    n, T = tt.shape
    with eval_mode(model), torch.no_grad():
        a, out = _capture(model, layer, x, leaf=False, method="Score-CAM")
        k_out = logits_2d(out).shape[1]
        if int(tt.max()) >= k_out:
            raise ValueError(f"target: class {int(tt.max())} is out of range for a model with "
                             f"{k_out} outputs")
        c = a.shape[1]
        flat = a.reshape(n * c, 1, *a.shape[2:])
        lo, hi = flat.amin((2, 3)).reshape(-1), flat.amax((2, 3)).reshape(-1)
        rows = torch.nonzero(hi > lo).reshape(-1)  # constant channels: zero mask
        probs = torch.empty(n * c, k_out, dtype=a.dtype, device=a.device)
        if rows.numel() < n * c:
            zero = torch.zeros_like(x[:1])
            probs[hi <= lo] = logits_2d(model(zero)).softmax(1)[0]
        for start in range(0, rows.numel(), bs):
            r = rows[start:start + bs]
            m = F.interpolate(flat[r], size=x.shape[-2:], mode="bilinear", align_corners=True)
            # Norm(Up(A_k)): the extremes of the upsampled map, not of A_k
            mlo, mhi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
            m = (m - mlo) / (mhi - mlo)
            probs[r] = logits_2d(model(x[r // c] * m)).softmax(1)
        w = probs.reshape(n, c, k_out).gather(2, tt[:, None, :].expand(n, c, T))  # (n, c, T)
        cam = torch.einsum("nct,nchw->nthw", w, a)
    return _finish(cam, x.shape[-2:], multi, relu, upsample, normalize)


def _ablated_scores(model: nn.Module, mod: nn.Module, x1: Tensor, a1: Tensor, channels: Tensor,
                    check: Optional[Tensor]) -> Optional[Tensor]:
    """Logits ``(len(channels), K)`` of one image with each of ``channels`` of the layer's
    output ``a1`` (``(1, C, h, w)``) set to 0, one row each, in one forward pass.

    The layer's output is replaced by the stack of ablated copies while everything before
    the layer runs on the single image (broadcast into the stack by skip connections). A
    model that cannot mix batch sizes so (``torch.cat`` of a skip connection, say) returns
    None; so does a mismatch of the unablated row appended when ``check`` (the plain
    logits) is given.
    """
    b = channels.numel()
    stack = a1.expand(b + (check is not None), *a1.shape[1:]).clone()
    stack[torch.arange(b, device=a1.device), channels] = 0

    def hook(_m, _i, out):
        return type(out)((stack, *out[1:])) if isinstance(out, (tuple, list)) else stack

    h = mod.register_forward_hook(hook)
    try:
        out = logits_2d(model(x1))
    except RuntimeError:
        return None
    finally:
        h.remove()
    if out.shape[0] != stack.shape[0]:
        return None
    if check is not None:
        if not torch.allclose(out[-1], check, rtol=1e-4, atol=1e-5 * float(check.abs().max())):
            return None
        out = out[:-1]
    return out


def ablation_cam(model: nn.Module, layer: str, images: Tensor, target, *, relu: bool = True,
                 upsample: bool = True, normalize: bool = False,
                 batch_size: Optional[int] = None) -> Tensor:
    r"""Ablation-CAM (Desai & Ramaswamy 2020) at ``layer``.

    ``w_k = (y - y_k) / y`` with ``y`` the target logit and ``y_k`` the logit with channel
    ``k`` of the layer's output set to 0; the map is ``relu(sum_k w_k A_k)``. The network
    before the layer runs once per image: the ablated copies are stacked only from the
    layer on (where a model cannot mix those batch sizes, e.g. a ``torch.cat`` of an
    earlier tensor after the layer, the image is repeated instead, as pytorch-grad-cam
    always does). pytorch-grad-cam zeroes the channel only when the layer's minimum is 0 and
    otherwise sets it to ``min - 1e7``, which the paper does not; on layers that end in a
    ReLU the two agree.

    Args:
        model, layer, images, target, relu, upsample, normalize: as :func:`grad_cam`.
        batch_size: ablated channels per forward pass (default 128).

    Returns:
        ``(N, H, W)`` (or ``(N, T, H, W)``) on the model's device.
    """
    check_model(model)
    bs = _check_batch(batch_size, 128)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    tt = t if multi else t[:, None]
    n = tt.shape[0]
    mod = get_layer(model, layer)
    with eval_mode(model), torch.no_grad():
        a, out = _capture(model, layer, x, leaf=False, method="Ablation-CAM")
        out = logits_2d(out)
        if int(tt.max()) >= out.shape[1]:
            raise ValueError(f"target: class {int(tt.max())} is out of range for a model with "
                             f"{out.shape[1]} outputs")
        c = a.shape[1]
        ablated = torch.empty(n, c, out.shape[1], dtype=out.dtype, device=out.device)
        shared = True  # the prefix runs once per image, until a model refuses
        for i in range(n):
            for start in range(0, c, bs):
                ch = torch.arange(start, min(c, start + bs), device=a.device)
                s = None
                if shared:
                    s = _ablated_scores(model, mod, x[i:i + 1], a[i:i + 1], ch,
                                        out[i] if (i == 0 and start == 0) else None)
                    shared = s is not None
                if s is None:
                    s = _ablated_scores(model, mod, x[i:i + 1].expand(ch.numel(), *x.shape[1:]),
                                        a[i:i + 1], ch, None)
                    if s is None:
                        raise RuntimeError("Ablation-CAM: the model's output does not follow "
                                           f"the batch of {layer!r}'s output")
                ablated[i, start:start + ch.numel()] = s
        y = out.gather(1, tt)                                     # (n, T)
        yk = ablated.gather(2, tt[:, None, :].expand(n, c, tt.shape[1]))  # (n, c, T)
        w = (y[:, None, :] - yk) / y[:, None, :]
        cam = torch.einsum("nct,nchw->nthw", w, a)
    return _finish(cam, x.shape[-2:], multi, relu, upsample, normalize)


def eigen_cam(model: nn.Module, layer: str, images: Tensor, target=0, *, relu: bool = True,
              upsample: bool = True, normalize: bool = False) -> Tensor:
    r"""Eigen-CAM (Muhammad & Yeasin 2020) at ``layer``: the projection of each position's
    activation vector (centered over the positions) on the first principal component.

    The map does not depend on the target (it is only used for the output's shape). The
    sign of a principal component is arbitrary (pytorch-grad-cam keeps whatever its SVD
    returns); here it is chosen so that the map correlates positively with the channel
    sum of the activations.

    Args:
        model, layer, images, target, relu, upsample, normalize: as :func:`grad_cam`.

    Returns:
        ``(N, H, W)`` (or ``(N, T, H, W)``) on the model's device.
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target, repeat=False)
    with eval_mode(model), torch.no_grad():
        a, _ = _capture(model, layer, x, leaf=False, method="Eigen-CAM")
        n, c, h, w = a.shape
        m = a.reshape(n, c, h * w).transpose(1, 2)          # (n, hw, c)
        m = m - m.mean(1, keepdim=True)
        v1 = torch.linalg.svd(m, full_matrices=False).Vh[:, 0, :]  # (n, c)
        proj = torch.einsum("npc,nc->np", m, v1)
        total = a.sum(1).reshape(n, h * w)
        sign = torch.where(((proj * (total - total.mean(1, keepdim=True))).sum(1) < 0), -1.0, 1.0)
        cam = (proj * sign.to(proj.dtype)[:, None]).reshape(n, 1, h, w)
    T = t.shape[1] if multi else 1
    return _finish(cam.expand(n, T, h, w), x.shape[-2:], multi, relu, upsample, normalize)


def guided_grad_cam(model: nn.Module, layer: str, images: Tensor, target) -> Tensor:
    r"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times Grad-CAM (with its
    ReLU) bilinearly upsampled to the input, as the paper does (captum's GuidedGradCam
    upsamples with ``nearest`` by default; ``interpolate_mode="bilinear"`` gives these).

    Args:
        model, layer, images, target: as :func:`grad_cam`.

    Returns:
        ``(N, C, H, W)`` (or ``(N, T, C, H, W)``) on the model's device.
    """
    cam = grad_cam(model, layer, images, target)
    return guided_backprop(model, images, target) * cam.unsqueeze(-3)


#: The CLI's method names for the CAM family.
CAM_METHODS = {"gradcam": grad_cam, "gradcampp": grad_cam_pp, "xgradcam": xgrad_cam,
               "layercam": layer_cam, "hirescam": hires_cam, "scorecam": score_cam,
               "ablationcam": ablation_cam, "eigencam": eigen_cam}
