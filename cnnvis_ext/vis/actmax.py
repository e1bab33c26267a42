"""Batched activation maximization (Erhan et al. 2009; Simonyan et al. 2014;
Yosinski et al. 2015; Olah et al. 2017).

One image per objective, many objectives in one batch: ``activation_maximization(
model, [channel("features.10", c) for c in range(64)])`` renders 64 channels
with one forward/backward per step. Each objective draws its initial noise and
its random transforms from its own generators (seeded from ``seed`` and the
objective's index), and the loss is a sum of independent per-image terms, so
the image of an objective is the same whether it is rendered alone or in a
batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._modules import model_device_dtype
from .. import ops
from ..seeding import make_generator, resolve_seed
from ._common import (check_int, check_layers, check_model, check_number, eval_mode, input_channels,
                      progress_bar, run_layers)
from .objectives import Objective, as_objective
from ._prune import PrunedChannels
from .maco import MacoParam, MacoResult, SpectrumLike
from .param import ImageParam, make_param
from .transforms import make_transforms

__all__ = ["Regularizers", "YosinskiPreset", "YOSINSKI_PRESETS", "yosinski_preset", "maco_fv", "MACO_LR",
           "ActMaxResult", "activation_maximization"]


@dataclass(frozen=True)
class Regularizers:
    """Priors of an activation-maximization run.

    Pixel-space priors, applied in place after every step by the fused
    ``regularize_`` op (pixel parameterization only), as in Yosinski et al. (2015):

    Attributes:
        decay: L2 decay, ``x *= 1 - decay`` every step (x centred on grey).
        blur_sigma: standard deviation (pixels) of the Gaussian blur.
        blur_every: blur every this many steps (0: never).
        norm_pct: zero the pixels whose channel norm is below this percentile (0-100).
        contrib_pct: zero the pixels whose contribution ``sum_c x * grad`` is below
            this percentile of their image (0-100).

    Loss terms, subtracted from the objective (any parameterization):

    Attributes:
        alpha_weight, alpha: ``alpha_weight * sum |x - 0.5|^alpha`` (Mahendran & Vedaldi).
        tv_weight, tv_beta: ``tv_weight * TV_beta(image)``.
    """

    decay: float = 0.0
    blur_sigma: float = 0.0
    blur_every: int = 0
    norm_pct: float = 0.0
    contrib_pct: float = 0.0
    alpha_weight: float = 0.0
    alpha: float = 6.0
    tv_weight: float = 0.0
    tv_beta: float = 2.0

    def __post_init__(self):
        for name in ("decay", "blur_sigma", "norm_pct", "contrib_pct", "alpha_weight", "tv_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or math.isnan(v):
                raise ValueError(f"{name}: expected a non-negative number, got {v!r}")
        if self.decay >= 1:
            raise ValueError(f"decay: expected a value in [0, 1), got {self.decay}")
        for name in ("norm_pct", "contrib_pct"):
            if getattr(self, name) > 100:
                raise ValueError(f"{name}: expected a percentile in [0, 100], got {getattr(self, name)}")
        if not isinstance(self.blur_every, int) or self.blur_every < 0:
            raise ValueError(f"blur_every: expected a non-negative int, got {self.blur_every!r}")

    @property
    def in_place(self) -> bool:
        return bool(self.decay or (self.blur_sigma and self.blur_every) or self.norm_pct
                    or self.contrib_pct)


@dataclass(frozen=True)
class YosinskiPreset:
    """One hyperparameter set of Yosinski et al. (2015), Table 1.

    ``lr`` / ``max_lr`` are the paper's values (for Caffe pixels in 0-255)
    divided by 255**2, the factor that makes gradient steps on images in
    [0, 1] equivalent. ``lr_policy='progress'`` picks each image's step so
    that the objective would rise by ``desired_progress`` if it were linear,
    capped at ``max_lr``.
    """

    regularizers: Regularizers
    steps: int
    lr_policy: str
    lr: float
    max_lr: float = math.inf
    desired_progress: float = 2.0


_S = 255.0 ** 2
#: The four rows of Table 1 of Yosinski et al. (2015), "Understanding Neural
#: Networks Through Deep Visualization", with the iteration counts and
#: learning-rate policies of the authors' optimize_image.py:
#:
#: ====  =======  ==========  ==========  =========  =========  =====  =====================
#: set   decay    blur width  blur every  norm pct   contr pct  steps  learning rate
#: ====  =======  ==========  ==========  =========  =========  =====  =====================
#: 1     0        0.5         4           50         0          500    progress, max 100
#: 2     0.3      0           0           20         0          750    constant 100
#: 3     0.0001   1.0         4           0          0          1000   constant 100
#: 4     0        0.5         4           0          90         1000   progress, max 1e8
#: ====  =======  ==========  ==========  =========  =========  =====  =====================
YOSINSKI_PRESETS: Dict[int, YosinskiPreset] = {
    1: YosinskiPreset(Regularizers(decay=0.0, blur_sigma=0.5, blur_every=4, norm_pct=50.0),
                      500, "progress", 100.0 / _S, max_lr=100.0 / _S),
    2: YosinskiPreset(Regularizers(decay=0.3, norm_pct=20.0), 750, "constant", 100.0 / _S),
    3: YosinskiPreset(Regularizers(decay=0.0001, blur_sigma=1.0, blur_every=4), 1000, "constant",
                      100.0 / _S),
    4: YosinskiPreset(Regularizers(decay=0.0, blur_sigma=0.5, blur_every=4, contrib_pct=90.0),
                      1000, "progress", 1e8 / _S, max_lr=1e8 / _S),
}


def yosinski_preset(index: int) -> YosinskiPreset:
    """Row ``index`` (1-4) of Yosinski et al. (2015), Table 1 (see :data:`YOSINSKI_PRESETS`)."""
    if index not in YOSINSKI_PRESETS:
        raise ValueError(f"index: expected 1, 2, 3 or 4 (rows of Yosinski et al. Table 1), got {index!r}")
    return YOSINSKI_PRESETS[index]


class ActMaxResult(NamedTuple):
    """``images``: ``(N * images_per_objective, C, H, W)`` in [0, 1] on the model's device;
    ``values``: ``(steps, N)``, each objective's value (mean over its images) at every step."""

    images: Tensor
    values: Tensor


def _resolve_regularizers(regularizers) -> Tuple[Regularizers, Optional[YosinskiPreset]]:
    if regularizers is None:
        return Regularizers(), None
    if isinstance(regularizers, Regularizers):
        return regularizers, None
    if isinstance(regularizers, YosinskiPreset):
        return regularizers.regularizers, regularizers
    if isinstance(regularizers, str):
        key = regularizers.lower().replace("_", "").replace("-", "")
        if key.startswith("yosinski") and key[len("yosinski"):] in ("1", "2", "3", "4"):
            p = yosinski_preset(int(key[len("yosinski"):]))
            return p.regularizers, p
    if isinstance(regularizers, dict):
        return Regularizers(**regularizers), None
    raise ValueError(f"regularizers: expected None, a Regularizers, a dict of its fields, a "
                     f"YosinskiPreset or 'yosinski1'..'yosinski4', got {regularizers!r}")


def _size(size) -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except Exception:
        raise ValueError(f"size: expected an int or (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size: expected positive sizes, got {size!r}")
    return h, w


def _values(objectives: Sequence[Objective], acts: Dict[str, Tensor], k: int) -> Tensor:
    """Per-image values of a batch where objective i owns images [i*k, (i+1)*k)."""
    first = objectives[0]
    if k == 1 and all(getattr(o, "kind", None) == "channel" and o.layer == first.layer
                      for o in objectives):
        a = acts[first.layer]
        idx = torch.tensor([o.index for o in objectives], device=a.device)
        bad = [o.index for o in objectives if o.index >= a.shape[1]]
        if bad:
            raise ValueError(f"channel: {bad[0]} is out of range for layer {first.layer!r} with "
                             f"{a.shape[1]} channels (valid: 0..{a.shape[1] - 1})")
        sel = a[torch.arange(a.shape[0], device=a.device), idx]
        return sel.reshape(a.shape[0], -1).mean(1)
    vals = []
    for i, o in enumerate(objectives):
        sub = {name: t[i * k:(i + 1) * k] for name, t in acts.items()}
        v = o(sub)
        if v.shape[0] != k:
            raise ValueError(f"objective {o.name}: returned {v.shape[0]} values for {k} images")
        vals.append(v)
    return torch.cat(vals)


def _make_optimizer(optimizer, params, lr):
    if isinstance(optimizer, str):
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        raise ValueError(f"optimizer: expected 'adam', 'sgd' (gradient ascent with the fused prior "
                         f"step) or a callable(params, lr) -> torch.optim.Optimizer, got {optimizer!r}")
    if callable(optimizer):
        return optimizer(params, lr)
    raise ValueError(f"optimizer: expected 'adam', 'sgd' or a callable, got {optimizer!r}")


def activation_maximization(
    model: nn.Module,
    objectives,
    *,
    size=None,
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    optimizer=None,
    param=None,
    generator=None,
    transforms="default",
    regularizers=None,
    seed: Optional[int] = 0,
    progress: Optional[bool] = None,
    images_per_objective: int = 1,
    batch_size: Optional[int] = None,
    channels: Optional[int] = None,
    normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
    decorrelate: bool = True,
    prune: bool = True,
    micro_batch: Union[int, str, None] = "auto",
    keep_size: Optional[bool] = None,
) -> ActMaxResult:
    r"""Synthesize images that maximize objectives, one image per objective, in one batch.

    Args:
        model: any ``nn.Module`` taking ``(N, C, H, W)`` images. It runs in eval
            mode during the call (its flags are restored afterwards); its
            parameters' ``.grad`` are never touched.
        objectives: an :class:`~cnnvis_ext.vis.objectives.Objective`, a spec
            string (``"features.10:3"``, see ``parse_objective``) or a list of
            them; every objective gets its own image(s).
        size: image size, int or ``(H, W)``. Default 128.
        steps: optimization steps. Default 512 (a Yosinski preset: its count).
        lr: step size. Default 0.05 for Adam (Lucid); a Yosinski preset's own.
        optimizer: ``"adam"`` (default), ``"sgd"`` (plain gradient ascent
            ``x += lr * grad`` fused with the pixel priors in one
            ``regularize_`` call; the default with a Yosinski preset), or a
            callable ``(params, lr) -> torch.optim.Optimizer``.
        param: ``"fourier"`` (default: Lucid's decorrelated Fourier
            parameterization), ``"pixel"`` (the default with pixel-space
            priors), ``"maco"`` (only the Fourier phase, under a 1/f magnitude: Fel et
            al. 2023; :func:`maco_fv` for other spectra and its transparency maps),
            ``"generator"`` (a code at the layer of ``generator``, decoded
            by it: Nguyen et al. 2016; the default when ``generator`` is given), an
            :class:`~cnnvis_ext.vis.param.ImageParam` or a factory
            ``(channels, size, generators, per_generator, device, dtype)``.
        generator: an :class:`~cnnvis_ext.vis.learned.UpConvInverter` (see
            :func:`~cnnvis_ext.vis.train_inverter`) used as the image prior of
            ``param="generator"``: its code is optimized, decays (L2) and is clipped
            to the range seen on real data; ``size`` defaults to its image size and
            ``transforms`` to none.
        transforms: ``"default"`` (Lucid's ``"standard"`` pad/jitter/scale/rotate;
            none with a Yosinski preset), ``"standard"``, ``None`` (no
            transforms) or a list of :mod:`~cnnvis_ext.vis.transforms`
            objects; random per image.
        regularizers: a :class:`Regularizers`, a dict of its fields, or
            ``"yosinski1"`` .. ``"yosinski4"`` / :func:`yosinski_preset` (Table 1
            of Yosinski et al. 2015, which also sets param, optimizer, steps,
            lr and transforms unless given).
        seed: makes the result reproducible (``None``: random). Objective ``i``
            draws from generators seeded by ``(seed, i)``, so a batched run
            equals the runs of its objectives one by one.
        progress: show a tqdm bar (``None``: only for long runs on a terminal).
        images_per_objective: images per objective (with ``diversity`` terms).
        batch_size: objectives per batch (default: all in one batch).
        channels: input channels (default: the first layer's ``in_channels``).
        normalize: optional ``(mean, std)`` applied to the [0, 1] images
            before the model (e.g. ImageNet statistics).
        decorrelate: channel decorrelation of the Fourier and MACO parameterizations:
            ``True`` (3 channels: ImageNet's colour matrix, others: none), ``False``, or a
            ``(C, C)`` matrix estimated from your images with
            :func:`~cnnvis_ext.vis.maco.color_correlation`.
        prune: when every objective is a ``channel`` of one layer that a
            convolution followed only by channel-wise modules (ReLU, pooling,
            Identity) computes inside an ``nn.Sequential``, compute just each
            image's own channel of that convolution (a grouped convolution)
            instead of the whole layer. Same values, far less work.
        micro_batch: objectives whose images go through the model together in
            each step; the step's gradient is the same (the objectives are
            independent), only the working set shrinks. ``"auto"`` (default):
            the whole batch on a GPU; on a CPU about 32k pixels per pass
            (two 128 px images), which keeps a VGG's activations in cache,
            measured faster per image than one large pass. ``None``: the
            whole batch.

        keep_size: resize the transformed images back to ``size`` before the model sees
            them (the standard transforms pad and jitter, which enlarges them), as models
            with a fixed input size (a fully connected head) need. ``None`` (default): only
            when the model cannot take the enlarged images (one probe forward pass).
    Returns:
        :class:`ActMaxResult` ``(images, values)``: images ``(N*k, C, H, W)``
        in [0, 1]; values ``(steps, N)``, the objectives at each step.

    Example:
        >>> objs = [objectives.channel("features.10", c) for c in range(64)]
        >>> images, values = activation_maximization(model, objs, steps=256)
    """
    check_model(model)
    objs: List[Objective] = ([as_objective(objectives)] if isinstance(objectives, (Objective, str))
                             else [as_objective(o) for o in objectives])
    if not objs:
        raise ValueError("objectives: expected at least one objective")
    check_layers(model, {l for o in objs for l in o.layers})
    if not any(o.layers for o in objs):
        raise ValueError("objectives: no objective reads a layer")
    regs, preset = _resolve_regularizers(regularizers)
    seed = resolve_seed(seed)
    k = check_int("images_per_objective", images_per_objective, 1)

    if param is None and generator is not None:
        param = "generator"
    if param is None:
        param = "pixel" if (preset is not None or regs.in_place) else "fourier"
    if optimizer is None:
        optimizer = "sgd" if preset is not None else "adam"
    if steps is None:
        steps = preset.steps if preset is not None else 512
    if lr is None:
        lr = preset.lr if (preset is not None and optimizer == "sgd") else (
            MACO_LR if isinstance(param, str) and param == "maco" else 0.05)
    if isinstance(param, str) and param == "maco":
        param = MacoParam.factory(None, decorrelate)
    if isinstance(transforms, str) and transforms == "default":
        transforms = None if (preset is not None or param == "generator") else "standard"
    lr_policy = preset.lr_policy if (preset is not None and optimizer == "sgd") else "constant"
    steps = check_int("steps", steps, 0)
    lr = check_number("lr", lr, positive=True)
    if size is None:
        gshape = getattr(generator, "image_shape", None) if param == "generator" else None
        size = tuple(gshape[1:]) if gshape is not None else 128
    h, w = _size(size)
    device, dtype = model_device_dtype(model)
    c_in = channels if channels is not None else input_channels(model)
    tfm = make_transforms(transforms)
    if tfm is not None and keep_size is None:
        keep_size = _needs_fixed_size(model, tfm, c_in, h, w, device, dtype)
    if normalize is not None:
        mean, std = (torch.as_tensor(v, device=device, dtype=dtype).reshape(1, -1, 1, 1)
                     for v in normalize)
    bs = len(objs) if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    micro = _micro_batch(micro_batch, device, k, h, w)
    layers = list(dict.fromkeys(l for o in objs for l in o.layers))
    pruned = None
    if prune and all(getattr(o, "kind", None) == "channel" and o.layer == objs[0].layer for o in objs):
        pruned = PrunedChannels.plan(model, objs[0].layer)
        if pruned is not None:
            bad = [o.index for o in objs if o.index >= pruned.out_channels]
            if bad:
                raise ValueError(f"channel: {bad[0]} is out of range for layer {objs[0].layer!r} with "
                                 f"{pruned.out_channels} channels (valid: 0..{pruned.out_channels - 1})")

    all_images, all_values = [], []
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(objs), bs):
            chunk = objs[start:start + bs]
            idx = range(start, start + len(chunk))
            dev_gens = [make_generator(seed, i, 0, device) for i in idx]
            host_gens = [make_generator(seed, i, 1, "cpu") for i in idx]
            p = make_param(param, c_in, (h, w), dev_gens, k, device, dtype, decorrelate,
                           generator=generator)
            chan = (torch.tensor([o.index for o in chunk], device=device)
                    if pruned is not None else None)
            if regs.in_place and not getattr(p, "pixel_space", False):
                raise ValueError("regularizers: decay, blur and pixel clipping act on pixels; use "
                                 "param='pixel' (or only alpha/TV terms with this parameterization)")
            leaves = p.params()
            opt = None if optimizer == "sgd" else _make_optimizer(optimizer, leaves, lr)
            values = []
            bar = progress_bar(range(steps), steps, progress,
                               f"actmax {start}-{start + len(chunk) - 1}")
            for step in bar:
                img = p.image()
                x = tfm(img, host_gens, k) if tfm is not None else img
                if keep_size and x.shape[-2:] != img.shape[-2:]:
                    # back to the size asked for: a model with a fixed input size (a linear
                    # head) takes only that (lucent's fixed_image_size)
                    x = F.interpolate(x, size=img.shape[-2:], mode="bilinear", align_corners=False)
                if normalize is not None:
                    x = (x - mean) / std
                if micro is None or micro >= len(chunk):
                    v = _model_values(model, x, chunk, chan, pruned, layers, k)
                    total = v
                else:
                    # The model's part in micro-batches: each one's gradient
                    # w.r.t. its images, then one backward through the
                    # parameterization and transforms with x . dv/dx.
                    xd, vs = x.detach(), []
                    gx = torch.empty_like(xd)
                    for o0 in range(0, len(chunk), micro):
                        o1 = min(len(chunk), o0 + micro)
                        xc = xd[o0 * k:o1 * k].requires_grad_(True)
                        vc = _model_values(model, xc, chunk[o0:o1],
                                           chan[o0:o1] if chan is not None else None,
                                           pruned, layers, k)
                        gx[o0 * k:o1 * k] = torch.autograd.grad(vc.sum(), xc)[0]
                        vs.append(vc.detach())
                    v = torch.cat(vs)
                    total = (x * gx).flatten(1).sum(1)
                if regs.alpha_weight:
                    total = total - regs.alpha_weight * (img - 0.5).abs().pow(regs.alpha).flatten(1).sum(1)
                if regs.tv_weight:
                    total = total - regs.tv_weight * ops.total_variation(img, beta=regs.tv_beta, reduction="none")
                if hasattr(p, "accumulate"):  # MACO's transparency: |d objective / d image|
                    *grads, gimg = torch.autograd.grad(total.sum(), leaves + [img])
                    p.accumulate(gimg)
                else:
                    grads = torch.autograd.grad(total.sum(), leaves)
                values.append(v.detach().reshape(len(chunk), k).mean(1))
                blur = regs.blur_sigma if (regs.blur_every and (step + 1) % regs.blur_every == 0) else 0.0
                with torch.no_grad():
                    if opt is None:
                        _ascent_step(p, grads, lr, lr_policy, preset, regs, blur)
                    else:
                        for leaf, g in zip(leaves, grads):
                            leaf.grad = -g
                        opt.step()
                        for leaf in leaves:
                            leaf.grad = None
                        if getattr(p, "pixel_space", False):
                            ops.regularize_(p.raw, grads[0], lr=0.0, decay=regs.decay, blur_sigma=blur,
                                            norm_pct=regs.norm_pct, contrib_pct=regs.contrib_pct,
                                            lo=p.lo, hi=p.hi)
                    if hasattr(p, "after_step"):  # e.g. the generator prior's decay and clipping
                        p.after_step()
            with torch.no_grad():
                all_images.append(p.image().clamp(0, 1).detach())
            all_values.append(torch.stack(values) if values else
                              torch.zeros(0, len(chunk), device=device, dtype=dtype))
    return ActMaxResult(torch.cat(all_images), torch.cat(all_values, dim=1))


def _needs_fixed_size(model, tfm, c, h, w, device, dtype) -> bool:
    """Whether ``model`` fails on the size ``tfm`` gives to (h, w) images while it takes (h, w)."""
    probe = torch.full((1, c, h, w), 0.5, device=device, dtype=dtype)
    size = tfm(probe, [torch.Generator().manual_seed(0)], 1).shape[-2:]
    if tuple(size) == (h, w):
        return False
    with eval_mode(model), torch.no_grad():
        try:
            model(torch.zeros(1, c, *size, device=device, dtype=dtype))
        except Exception:
            return True
    return False


def _model_values(model, x, objs, chan, pruned, layers, k):
    if pruned is not None:
        return pruned.values(model, x, chan, k)
    return _values(objs, run_layers(model, x, layers), k)


_CPU_MICRO_PIXELS = 32768  # pixels per pass on a CPU (measured: VGG-11 at 128 px, 2 cores)


def _micro_batch(micro_batch, device, k, h, w) -> Optional[int]:
    """Objectives per model pass (None: the whole batch)."""
    if micro_batch is None:
        return None
    if isinstance(micro_batch, str):
        if micro_batch != "auto":
            raise ValueError(f"micro_batch: expected 'auto', None or a positive int, got {micro_batch!r}")
        if torch.device(device).type != "cpu":
            return None
        return max(1, _CPU_MICRO_PIXELS // (k * h * w))
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch: expected 'auto', None or a positive int, got {micro_batch!r}")
    return micro_batch


def _ascent_step(p: ImageParam, grads, lr, lr_policy, preset, regs: Regularizers, blur):
    if not getattr(p, "pixel_space", False):
        for leaf, g in zip(p.params(), grads):
            leaf.add_(g, alpha=lr)
        return
    g = grads[0]
    if lr_policy == "progress":
        sq = g.flatten(1).pow(2).sum(1).clamp_min(1e-30)
        step_lr = (preset.desired_progress / sq).clamp(max=preset.max_lr)
        p.raw.add_(g * step_lr.reshape(-1, 1, 1, 1).to(g.dtype))
        lr = 0.0
    ops.regularize_(p.raw, g, lr=float(lr), decay=regs.decay, blur_sigma=blur,
                    norm_pct=regs.norm_pct, contrib_pct=regs.contrib_pct, lo=p.lo, hi=p.hi)


#: Adam's step size on MACO's phase (the phase is standardized before use, so steps are in
#: units of its standard deviation).
MACO_LR = 0.1


def maco_fv(model: nn.Module, objectives, *, spectrum: SpectrumLike = None,
         color: Union[bool, Tensor] = True, steps: int = 256, lr: Optional[float] = None,
         **kwargs) -> MacoResult:
    """Activation maximization with the MACO parameterization, returning its transparency maps.

    Args:
        model, objectives: as :func:`~cnnvis_ext.vis.activation_maximization`.
        spectrum: the magnitude (module docstring): ``None`` / ``"power"`` (1/f),
            ``"digits"``, a tensor from :func:`image_spectrum`, or its path.
        color: a ``(C, C)`` channel-mixing matrix from
            :func:`~cnnvis_ext.vis.maco.color_correlation` (estimated from your images), ``True``
            (ImageNet's for 3 channels, none otherwise) or ``False``.
        steps, lr: as ``activation_maximization`` (Adam on the phase; the phase is
            standardized in the image, so its scale does not matter; default ``MACO_LR``).
        **kwargs: the other arguments of ``activation_maximization`` (size, transforms,
            seed, batch_size, images_per_objective, normalize, ...).

    Returns:
        :class:`MacoResult` ``(images, values, transparency)``.
    """
    made: List[MacoParam] = []
    res = activation_maximization(model, objectives, param=MacoParam.factory(spectrum, color, made),
                                  steps=steps, lr=lr, **kwargs)
    return MacoResult(res.images, res.values, torch.cat([p.transparency for p in made]))
