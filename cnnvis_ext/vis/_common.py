"""Small helpers shared by the visualization loops."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from .._modules import forward_until, get_layer, model_device_dtype
from .objectives import OUTPUT


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")


@contextmanager
def eval_mode(model: nn.Module, images: Optional[Tensor] = None):
    """Put ``model`` in eval mode with its parameters frozen for the block.

    An error of an input size the model cannot take, raised inside it in the block, becomes a
    ValueError that names ``images`` and their ``(C, H, W)`` (the first input of the model's
    forward, or ``images`` when the block runs the model another way, as a traced copy).

    Every module's ``training`` flag and every parameter's ``requires_grad``
    are restored afterwards. Freezing matters for speed, not only hygiene:
    the visualization loops differentiate with respect to images, codes or
    activations, and an op's backward (a custom autograd function, e.g.
    ``conv_relu_pool``) decides which gradients to compute from
    ``requires_grad`` at forward time, so trainable weights would make every
    step compute weight gradients that nobody reads.
    """
    flags = [(m, m.training) for m in model.modules()]
    params = [q for q in model.parameters() if q.requires_grad]
    # the first input of the model's own forward, for the message below
    shapes: list = [] if images is None else [tuple(images.shape)]

    def record(_m, args):
        if not shapes and args and isinstance(args[0], Tensor):
            shapes.append(tuple(args[0].shape))

    try:
        hook = model.register_forward_pre_hook(record)
    except RuntimeError:  # a ScriptModule takes no hooks: the message names no shape then
        hook = None
    model.eval()
    for q in params:
        q.requires_grad_(False)
    try:
        yield model
    except (RuntimeError, ValueError) as e:
        # A shape the model cannot take fails deep inside it ("mat1 and mat2 shapes cannot be
        # multiplied", the fused op's message about its own x): name the images instead.
        if _is_input_shape_error(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            given = f"of (C, H, W) = {shapes[0][1:]}" if shapes else "given"
            raise ValueError(f"images: the model cannot take the images {given} (give "
                             f"images of the size and channels it was built for); inside the "
                             f"model: {first}") from e
        raise
    finally:
        if hook is not None:
            hook.remove()
        for m, t in flags:
            m.training = t
        for q in params:
            q.requires_grad_(True)


_SHAPE_ERRORS = ("shapes cannot be multiplied", "size mismatch", "must match the size of tensor",
                 "Expected input batch_size", "Calculated padded input size",
                 "Kernel size can't be greater", "Output size is too small",
                 "x: padded input of size", "pool_kernel: window", "pool_kernel: pooled output")


def _is_input_shape_error(e: BaseException) -> bool:
    return any(p in str(e) for p in _SHAPE_ERRORS)


def check_layers(model: nn.Module, layers: Iterable[str]) -> None:
    for name in layers:
        if name != OUTPUT:
            get_layer(model, name)


def run_layers(model: nn.Module, x: Tensor, layers: Sequence[str]) -> Dict[str, Tensor]:
    """Activations of ``layers`` (``OUTPUT``: the model output), with their autograd graph.

    Without ``OUTPUT`` the forward pass stops right after the deepest layer. A
    captured activation that later modules still use is handed on as a copy,
    so in-place modules after it (``ReLU(inplace=True)``) cannot change it.
    """
    layers = list(dict.fromkeys(layers))
    inner = [n for n in layers if n != OUTPUT]
    return forward_until(model, x, inner, output_key=OUTPUT if OUTPUT in layers else None,
                         protect=True)


def progress_bar(iterable, total: int, progress: Optional[bool], desc: str, long_after: int = 2000):
    """Wrap ``iterable`` in a tqdm bar when asked (``True``) or, with ``None``, for long
    loops on an interactive terminal."""
    show = progress if progress is not None else (total >= long_after and sys.stderr.isatty())
    if not show:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _first_in_channels(model: nn.Module) -> Optional[int]:
    """``in_channels`` of the first module that declares it (a convolution), or None when a
    linear layer or nothing comes first."""
    for m in model.modules():
        if isinstance(getattr(m, "in_channels", None), int):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return None
    return None


def input_channels(model: nn.Module, default: int = 3) -> int:
    c = _first_in_channels(model)
    return default if c is None else c


def one_class_per_image(classes, n: int, name: str) -> Tensor:
    """``classes`` (an int or ``n`` of them) as an ``(n,)`` long tensor; a ValueError naming
    ``name`` otherwise."""
    t = torch.as_tensor(classes).reshape(-1).long()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name}: expected one class per image ({n}), got {t.numel()}")
    return t


def as_targets(target, n: int, device) -> Tensor:
    """Targets as a (N,) or (N, T) long tensor."""
    if isinstance(target, bool):
        raise TypeError("target: expected an int, a sequence or a tensor of class indices")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target)
        except Exception:
            raise TypeError(f"target: expected an int, a sequence or a tensor of class indices, "
                            f"got {type(target).__name__}") from None
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
        t = t.long()
        if t.dim() == 0:
            t = t.expand(n)
        elif t.dim() > 2 or t.shape[0] != n:
            raise ValueError(f"target: expected shape ({n},) or ({n}, T) for {n} images, got "
                             f"{tuple(t.shape)}")
    if (t < 0).any():
        raise ValueError("target: class indices must be non-negative")
    return t.to(device)


def check_images(images) -> Tensor:
    """``images`` if it is a floating-point tensor with a batch dimension; a clear error naming
    it otherwise."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images: expected a Tensor, got {type(images).__name__}")
    if images.dim() < 2:
        raise ValueError(f"images: expected a batch (N, C, H, W), got shape {tuple(images.shape)}")
    return check_float_images(images)


def prepare_inputs(model: nn.Module, images: Tensor, target, repeat: bool = True):
    """``(x, t, multi)`` for the attribution methods: the images on the model's device and
    dtype, the targets as (N,) or (N, T), and for (N, T) targets with ``repeat`` the images
    repeated T times (row ``n * T + j`` is image ``n`` with target ``t[n, j]``).

    ``target="all"`` means every class of the model's output, as an (N, K) tensor: one
    forward pass of the first image (in eval mode, without gradients) finds K. The
    gradient methods pass ``repeat=False`` and compute the T maps of an image with one
    forward pass and one batched backward pass instead of T copies of the image.
    """
    images = check_images(images)
    check_input_channels(model, images)
    device, dtype = model_device_dtype(model)
    x = images.to(device=device, dtype=dtype)
    if isinstance(target, str):
        if target != "all":
            raise ValueError(f"target: expected class indices or 'all', got {target!r}")
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                out = model(x[:1])
        finally:
            for m, was in flags:
                m.training = was
        out = out[0] if isinstance(out, (tuple, list)) else out
        k = out.reshape(out.shape[0], -1).shape[1]
        target = torch.arange(k, device=device).expand(x.shape[0], k)
    t = as_targets(target, x.shape[0], device)
    multi = t.dim() == 2
    if multi and repeat:
        x = x.repeat_interleave(t.shape[1], dim=0)
    return x, t, multi


def check_int(name: str, value, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``; a bool, a float (``2.5``, even ``2.0``) or a smaller
    value raises an error naming ``name``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value, *, positive: bool = False, minimum: Optional[float] = None
                 ) -> float:
    """``value`` as a finite float (``positive``: > 0; ``minimum``: >= it); NaN, infinities,
    bools and non-numbers raise an error naming ``name``."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {value!r}")
    return v


def check_float_images(images: Tensor, name: str = "images") -> Tensor:
    """Refuse integer or boolean images: the model takes floats in its own input range, and
    a silent cast (of 0..255 bytes, say) would feed it values it never saw."""
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor in the model's input range, "
                        f"got {images.dtype}; convert it first (e.g. images.float() / 255 for "
                        "8-bit images, with the normalization the model expects)")
    return images


def check_input_channels(model: nn.Module, images: Tensor, name: str = "images") -> None:
    """The channel count the model's first convolution takes against ``images``'s."""
    c = _first_in_channels(model)
    if c is not None and images.dim() >= 2 and images.shape[1] != c:
        raise ValueError(f"{name}: the model's first convolution takes {c} channels, got "
                         f"images of shape {tuple(images.shape)}")
