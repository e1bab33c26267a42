"""The ``cnnvis`` command line (also ``python -m cnnvis_ext``).

Subcommands: ``demo``, ``train``, ``train-inverter``, ``kernels``, ``maps``,
``actmax``, ``invert``, ``deconv``, ``attribute`` and ``bench``; ``cnnvis
<subcommand> --help`` documents each. Nothing here touches the network: the
default data are bundled, models and weights come from local files.

Errors a user can cause (a missing file, an unknown layer, CUDA asked for but
absent, a feature that this build does not have yet) are printed as one line,
``cnnvis <subcommand>: error: ...``, with a non-zero exit status; set
``CNNVIS_TRACEBACK=1`` (or pass ``--traceback``) to see the Python traceback.
"""
from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["main", "build_parser", "load_model", "LoadedModel", "CLIError", "FeatureUnavailable"]

PROG = "cnnvis"
ATTRIBUTION_METHODS = ("saliency", "guided", "deconvnet", "lrp", "gradcam")


class CLIError(Exception):
    """An error caused by the user's input: printed as one line, exit status 1."""


class FeatureUnavailable(CLIError):
    """A visualization that this build of cnnvis_ext does not provide (yet)."""


# --------------------------------------------------------------------------- features

def _vis_attr(name: str, what: str):
    """``cnnvis_ext.vis.<name>``, or :class:`FeatureUnavailable` naming ``what``."""
    try:
        vis = importlib.import_module("cnnvis_ext.vis")
    except ImportError as e:
        raise FeatureUnavailable(f"{what} is not available in this build (cnnvis_ext.vis does "
                                 f"not import: {e})") from None
    fn = getattr(vis, name, None)
    if fn is None:
        raise FeatureUnavailable(f"{what} is not available yet in this build "
                                 f"(cnnvis_ext.vis.{name} does not exist)")
    return fn


def _deconv_attr(name: str, what: str):
    """``cnnvis_ext.deconv.<name>``, or :class:`FeatureUnavailable`."""
    try:
        mod = importlib.import_module("cnnvis_ext.deconv")
    except ModuleNotFoundError as e:
        if e.name not in ("cnnvis_ext.deconv",):
            raise
        raise FeatureUnavailable(f"{what} is not available yet in this build (cnnvis_ext.deconv "
                                 "does not exist)") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise FeatureUnavailable(f"{what} is not available yet in this build "
                                 f"(cnnvis_ext.deconv.{name} does not exist)")
    return fn


# --------------------------------------------------------------------------- images

def _make_grid(images: Tensor, ncol: Optional[int] = None, pad: int = 2,
               normalize: bool = True) -> Tensor:
    """Tile ``(N, C, H, W)`` images (each scaled to [0, 1] if ``normalize``) into one ``(C, H', W')`` image."""
    mg = None
    try:
        mg = getattr(importlib.import_module("cnnvis_ext.vis"), "make_grid", None)
    except ImportError:
        pass
    images = images.detach().float().cpu()
    if mg is not None:
        ncol = ncol or max(1, math.ceil(math.sqrt(len(images))))
        return mg(images, nrow=ncol, padding=pad, pad_value=1.0,
                  normalize="tile" if normalize else None).float().cpu()
    return _plain_grid(images, ncol, pad, normalize)


def _plain_grid(images: Tensor, ncol: Optional[int], pad: int, normalize: bool) -> Tensor:
    n, c, h, w = images.shape
    if normalize and n:
        flat = images.reshape(n, -1)
        lo, hi = flat.amin(1), flat.amax(1)
        images = (images - lo.view(-1, 1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1, 1)
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = max(1, math.ceil(n / ncol))
    grid = torch.ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def _colormap(heat: Tensor) -> Tensor:
    """``(N, H, W)`` values in [0, 1] → ``(N, 3, H, W)`` RGB with a perceptual 'inferno'-like ramp."""
    stops = torch.tensor([[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33],
                          [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]])
    x = heat.clamp(0, 1) * (len(stops) - 1)
    i0 = x.floor().long().clamp(max=len(stops) - 2)
    f = (x - i0).unsqueeze(1)
    return (stops[i0].permute(0, 3, 1, 2) * (1 - f) + stops[i0 + 1].permute(0, 3, 1, 2) * f)


def _overlay(images: Tensor, heat: Tensor, alpha: float = 0.55) -> Tensor:
    """Blend a heat map (``(N, H, W)`` in [0, 1]) onto ``(N, C, H, W)`` images."""
    fn = None
    try:
        fn = getattr(importlib.import_module("cnnvis_ext.vis"), "overlay", None)
    except ImportError:
        pass
    images = images.detach().float().cpu()
    heat = heat.detach().float().cpu()
    if fn is not None:
        return fn(images, heat, alpha=alpha).float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (1 - alpha) * images[:, :3] + alpha * _colormap(heat)


def _per_image_unit(t: Tensor) -> Tensor:
    """Scale each map of ``(N, ...)`` to [0, 1] by its own min and max."""
    flat = t.reshape(t.shape[0], -1)
    lo, hi = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (t.dim() - 1)
    return (t - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


def _save(image, path: Path, *, scale: int = 1) -> Path:
    from .report import save_png

    return save_png(image, path, scale=scale)


def _upscale_for(size: int) -> int:
    """Nearest-neighbour scale that makes a ``size``-pixel tile pleasant to look at."""
    return max(1, min(8, 128 // max(size, 1)))


# --------------------------------------------------------------------------- models

@dataclass
class LoadedModel:
    """A model ready for the subcommands, with what is known about its input and classes."""

    model: nn.Module
    name: str
    input_size: int
    in_channels: int
    classes: Optional[List[str]] = None
    checkpoint: Optional[Dict[str, Any]] = None
    scripted: bool = False


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def _in_channels(model: nn.Module, default: int = 3) -> int:
    for m in model.modules():
        c = getattr(m, "in_channels", None)
        if isinstance(c, int):
            return c
        if isinstance(m, nn.Linear):
            return default
    return default


_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _load_state_dict_file(path: str) -> Dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--weights: no such file: {path!r}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"--weights: cannot read {path!r} as a state_dict saved with torch.save "
                       f"({type(e).__name__})") from None
    from .train import is_checkpoint

    if is_checkpoint(sd):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CLIError(f"--weights: {path!r} does not hold a state_dict (a dict of tensors)")
    return sd


def _apply_weights(model: nn.Module, weights: str, what: str) -> None:
    sd = _load_state_dict_file(weights)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = " ".join(str(e).split("\n")[1:3]).strip() or str(e).splitlines()[0]
        raise CLIError(f"--weights: {weights!r} does not fit {what}: {first}") from None


def _torchvision_names() -> Optional[List[str]]:
    try:
        import torchvision.models as tvm
    except Exception:
        return None
    return list(tvm.list_models(module=tvm))


def load_model(spec: Optional[str], weights: Optional[str] = None, *, device="cpu",
               input_size: Optional[int] = None) -> LoadedModel:
    """Resolve a ``--model`` argument.

    ``spec`` is one of: a checkpoint written by ``cnnvis train``; a TorchScript
    file; ``package.module:factory`` (a callable returning an ``nn.Module``,
    with ``--weights`` a state_dict file); or the name of a torchvision
    architecture (``vgg11``, ``resnet18``, ...) with ``--weights`` a local
    state_dict file. Nothing is ever downloaded.
    """
    if spec is None:
        if Path("checkpoint.pt").is_file():
            spec = "checkpoint.pt"
        else:
            raise CLIError("no model given: pass --model CHECKPOINT (written by `cnnvis train`), "
                           "--model FILE (TorchScript), --model package.module:factory "
                           "[--weights FILE.pt] or --model <torchvision name> --weights FILE.pt")
    path = Path(spec)
    if path.is_file():
        if _is_torchscript(path):
            import warnings

            with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
            if weights:
                raise CLIError("--weights: a TorchScript file carries its own weights; drop --weights")
            model = model.to(device).eval()
            return LoadedModel(model, path.name, input_size or 32, _in_channels(model),
                               scripted=True)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CLIError(f"--model: cannot read {spec!r}: it is neither a cnnvis checkpoint nor "
                           f"a TorchScript file ({type(e).__name__})") from None
        from .train import is_checkpoint, load_checkpoint

        if is_checkpoint(obj):
            model, ckpt = load_checkpoint(path, map_location="cpu")
            if weights:
                _apply_weights(model, weights, "the checkpoint's network")
            kw = ckpt["model_kwargs"]
            return LoadedModel(model.to(device).eval(), f"cifar_cnn ({path.name})",
                               input_size or kw.get("input_size", 32), kw.get("in_channels", 3),
                               list(ckpt["classes"]), ckpt)
        if isinstance(obj, dict):
            raise CLIError(f"--model: {spec!r} is a state_dict, not a model; pass it as "
                           "--weights FILE with --model package.module:factory (or a torchvision "
                           "architecture name)")
        raise CLIError(f"--model: {spec!r} is neither a cnnvis checkpoint nor a TorchScript file")
    if _FACTORY_RE.match(spec):
        mod_name, fn_name = spec.split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise CLIError(f"--model: cannot import module {mod_name!r} ({e}); is it on "
                           "PYTHONPATH?") from None
        fn: Any = mod
        for part in fn_name.split("."):
            fn = getattr(fn, part, None)
            if fn is None:
                raise CLIError(f"--model: module {mod_name!r} has no attribute {fn_name!r}")
        model = fn() if callable(fn) and not isinstance(fn, nn.Module) else fn
        if not isinstance(model, nn.Module):
            raise CLIError(f"--model: {spec} returned {type(model).__name__}, not an nn.Module")
        if weights:
            _apply_weights(model, weights, spec)
        else:
            print(f"{PROG}: note: no --weights given; {spec} keeps the weights its factory "
                  "created", file=sys.stderr)
        return LoadedModel(model.to(device).eval(), spec, input_size or 32, _in_channels(model))
    tv = _torchvision_names()
    if tv is not None and spec in tv:
        import torchvision.models as tvm

        if not weights:
            raise CLIError(f"--model {spec}: cnnvis never downloads weights; save them once with "
                           f"torch.save(torchvision.models.{spec}(weights=...).state_dict(), "
                           f"'{spec}.pt') on a machine with network access, then pass "
                           f"--weights {spec}.pt")
        model = tvm.get_model(spec, weights=None)
        _apply_weights(model, weights, f"torchvision {spec}")
        return LoadedModel(model.to(device).eval(), spec, input_size or 224, _in_channels(model))
    if path.suffix or os.sep in spec or "/" in spec:
        raise FileNotFoundError(f"--model: no such file: {spec!r}")
    hint = ("torchvision is not installed, so architecture names are not available"
            if tv is None else "nor a torchvision architecture name")
    raise CLIError(f"--model: {spec!r} is not a file, not package.module:factory, {hint}")


def conv_layers(model: nn.Module) -> List[str]:
    """Names of the convolution layers (fused blocks included), in forward order."""
    from .nn import ConvReLUPool2d

    return [n for n, m in model.named_modules()
            if n and (isinstance(m, (nn.Conv2d, ConvReLUPool2d)) or getattr(
                m, "original_name", None) in ("Conv2d", "ConvReLUPool2d", "ConvReLU2d"))]


def _needs_hooks(lm: "LoadedModel", what: str) -> None:
    """Layer-level views hook into modules, which TorchScript modules do not allow."""
    if lm.scripted:
        raise CLIError(f"{what} needs the layers of a Python nn.Module; a TorchScript model "
                       "supports only its output: kernels, actmax --classes/logit objectives, "
                       "attribute --method saliency. Pass the model as package.module:factory "
                       "with --weights instead")


def _check_layer(model: nn.Module, name: str) -> str:
    from ._modules import get_layer

    try:
        get_layer(model, name)
    except KeyError as e:
        raise CLIError(e.args[0]) from None
    return name


def _default_conv_layer(model: nn.Module, last: bool) -> str:
    convs = conv_layers(model)
    if not convs:
        raise CLIError("--layer: the model has no convolution layer; name one with --layer "
                       "(valid layers: " + ", ".join(n for n, _ in model.named_modules() if n) + ")")
    return convs[-1] if last else convs[0]


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters and buffers (CPU when it has none)."""
    from ._modules import model_device_dtype

    return model_device_dtype(model)[0]


_NEEDS_PRIOR = "--param generator needs --prior INVERTER.pt (from `cnnvis train-inverter`)"


def _load_inverter(path: str, lm: "LoadedModel", flag: str):
    """Load an ``UpConvInverter`` file for ``lm``'s model, onto its device, or a one-line error.

    The errors name ``flag`` (``--learned`` / ``--prior``): a missing file, a file that is
    not an inverter, an inverter of a layer the model lacks or whose shape differs.
    """
    cls = _vis_attr("UpConvInverter", "learned inversion (cnnvis_ext.vis.UpConvInverter)")
    _needs_hooks(lm, flag)
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{flag}: no such file: {path!r} (train one with `cnnvis train-inverter "
                       "--model ... --layer L --out FILE.pt`)")
    dev = _model_device(lm.model)
    try:
        inv = cls.load(p, map_location=dev)
    except ValueError as e:
        raise CLIError(f"{flag}: {_one_line(e).removeprefix('inverter: ')}") from None
    try:
        inv.check_model(lm.model)
    except KeyError as e:
        raise CLIError(f"{flag}: {p.name} inverts layer {inv.layer!r}, which the model does not "
                       f"have ({_one_line(e)})") from None
    except ValueError as e:
        raise CLIError(f"{flag}: {p.name} does not fit the model: "
                       f"{_one_line(e).removeprefix('model: ')}") from None
    except RuntimeError as e:  # e.g. the model cannot even take the inverter's image shape
        raise CLIError(f"{flag}: {p.name} was trained for {tuple(inv.image_shape)} images, "
                       f"which the model cannot take ({_one_line(e)})") from None
    return inv


# --------------------------------------------------------------------------- devices

def resolve_device(spec: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` when absent is an error."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise CLIError(f"--device: expected cpu, cuda, cuda:N or auto, got {spec!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {spec}: CUDA is not available on this machine (torch "
                           f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                           "use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        try:
            from . import build_info

            if not build_info().get("cuda_compiled"):
                print(f"{PROG}: warning: the cnnvis_ext kernels were built without CUDA; the "
                      "fused ops will fail on the GPU (rebuild with CNNVIS_CUDA=ON)",
                      file=sys.stderr)
        except Exception:
            pass
    elif dev.type != "cpu":
        raise CLIError(f"--device: expected cpu, cuda, cuda:N or auto, got {spec!r}")
    return dev


# --------------------------------------------------------------------------- images in

def _load_images(args, lm: LoadedModel) -> Tuple[Tensor, List[str], Optional[Tensor]]:
    """The input images of maps/invert/deconv/attribute: ``(images, captions, labels)``."""
    from .data import load_dataset, load_image_files

    size, ch = lm.input_size, lm.in_channels
    if ch not in (1, 3):
        raise CLIError(f"the model takes {ch}-channel input; only 1- and 3-channel images can "
                       "be read")
    if getattr(args, "image", None):
        imgs = load_image_files(args.image, size=size, channels=ch)
        return imgs, [Path(p).name for p in args.image], None
    data = load_dataset(args.data, size=size, channels=ch, progress=not args.quiet)
    n_test = len(data.test_labels)
    if args.index:
        bad = [i for i in args.index if not 0 <= i < n_test]
        if bad:
            raise CLIError(f"--index: {bad[0]} is out of range (the test set has {n_test} "
                           f"images: 0..{n_test - 1})")
        idx = list(args.index)
    else:
        idx = list(range(min(args.num_images, n_test)))
    classes = lm.classes or data.classes
    caps = [f"test #{i} ({classes[int(data.test_labels[i])]})" for i in idx]
    return data.test_images[idx], caps, data.test_labels[idx]


def _class_names(lm: LoadedModel, n: int) -> List[str]:
    if lm.classes and len(lm.classes) >= n:
        return list(lm.classes)
    return [str(i) for i in range(n)]


# --------------------------------------------------------------------------- views
# Each view returns tensors; subcommands save them, the demo adds them to its report.

def view_kernels(model: nn.Module, layer: str) -> Tuple[Tensor, str]:
    """Kernels of ``layer`` as one grid, and a caption."""
    kernels = _vis_attr("kernels", "the kernel view (cnnvis_ext.vis.kernels)")
    from ._modules import get_layer

    tiles = kernels(model, layer).detach().float().cpu()
    if tiles.dim() == 3:
        tiles = tiles.unsqueeze(1)
    w = getattr(get_layer(model, layer), "weight", None)
    c_out = int(w.shape[0]) if isinstance(w, Tensor) else tiles.shape[0]
    per_input = tiles.shape[0] != c_out
    ncol = int(w.shape[1]) if per_input else None
    grid = _make_grid(tiles, ncol=ncol, pad=1, normalize=True)
    kind = ("one row per filter, one tile per input channel" if per_input
            else "RGB" if tiles.shape[1] == 3 else "grey")
    return grid, (f"{layer}: {c_out} kernels of {tiles.shape[-2]}x{tiles.shape[-1]} ({kind}), "
                  "each tile scaled to its own range")


def view_feature_maps(model: nn.Module, image: Tensor, layers: Sequence[str],
                      max_channels: int = 64) -> List[Tuple[str, Tensor, str]]:
    """Feature maps of one image at each layer: ``[(layer, grid, caption)]``."""
    feature_maps = _vis_attr("feature_maps", "the feature-map view (cnnvis_ext.vis.feature_maps)")
    maps = feature_maps(model, image[None] if image.dim() == 3 else image[:1], list(layers))
    out = []
    for layer in layers:
        a = maps[layer].detach().float().cpu()
        a = a[0] if a.dim() == 4 else a
        if a.dim() != 3:
            continue  # not a spatial layer
        c = a.shape[0]
        a = a[:max_channels]
        grid = _make_grid(a.unsqueeze(1), pad=1, normalize=True)
        out.append((layer, grid, f"{layer}: {c} channels of {a.shape[-2]}x{a.shape[-1]}"
                    + (f" (first {max_channels} shown)" if c > max_channels else "")
                    + ", each scaled to its own range"))
    return out


def view_actmax(model: nn.Module, objectives: list, *, size: int, steps: int, lr: float,
                param: str, seed: int, progress: bool, batch_size: Optional[int] = None,
                generator: Optional[nn.Module] = None) -> Tensor:
    """Activation maximization of ``objectives`` (one image each, batched): ``(N, C, H, W)``.

    ``param="generator"`` optimizes a code of ``generator`` (an ``UpConvInverter``)
    instead of pixels (Nguyen et al. 2016): no transforms, the code's own L2 decay
    and clipping to the range of real codes.
    """
    am = _vis_attr("activation_maximization",
                   "activation maximization (cnnvis_ext.vis.activation_maximization)")
    kw: Dict[str, Any] = dict(size=size, steps=steps, lr=lr, param=param, seed=seed,
                              progress=progress, batch_size=batch_size)
    if param == "generator":
        if generator is None:
            raise CLIError(_NEEDS_PRIOR)
        kw.update(generator=generator, transforms=None)
    elif param == "pixel":
        kw.update(transforms=None, regularizers=dict(decay=0.01, blur_sigma=0.5, blur_every=4))
    else:
        try:
            from .vis.transforms import Jitter, Pad

            d = max(1, size // 16)  # pad then crop back: the size stays (FC heads need it)
            kw["transforms"] = [Pad(d, mode="replicate"), Jitter(2 * d)]
        except Exception:
            pass
    return am(model, objectives, **kw).images.detach().float().cpu()


def view_invert(model: nn.Module, image: Tensor, layers: Sequence[str], *, steps: int,
                seed: int, progress: bool) -> Tensor:
    """Reconstructions of one image from each layer: ``(len(layers), C, H, W)``."""
    invert = _vis_attr("invert", "feature inversion (cnnvis_ext.vis.invert)")
    x = image[None] if image.dim() == 3 else image[:1]
    res = invert(model, list(layers), x, steps=steps, seed=seed, progress=progress)
    imgs = getattr(res, "images", res[0] if isinstance(res, (tuple, list)) else res)
    return imgs.detach().float().cpu().reshape(len(layers), *x.shape[1:]).clamp(0, 1)


def view_attribution(model: nn.Module, images: Tensor, targets: Tensor, method: str,
                     layer: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Attribution heat maps ``(N, H, W)`` in [0, 1] and their overlays ``(N, 3, H, W)``."""
    if method not in ATTRIBUTION_METHODS:
        raise CLIError(f"--method: expected one of {', '.join(ATTRIBUTION_METHODS)}, "
                       f"got {method!r}")
    targets = targets.long()
    if method == "gradcam":
        fn = _vis_attr("grad_cam", "Grad-CAM (cnnvis_ext.vis.grad_cam)")
        layer = layer or _default_conv_layer(model, last=True)
        heat = fn(model, layer, images, targets).detach().float().cpu()
    else:
        name, what = {"saliency": ("saliency", "saliency maps (cnnvis_ext.vis.saliency)"),
                      "guided": ("guided_backprop",
                                 "guided backpropagation (cnnvis_ext.vis.guided_backprop)"),
                      "deconvnet": ("deconvnet_attribution",
                                    "deconvnet attribution (cnnvis_ext.vis.deconvnet_attribution)"),
                      "lrp": ("lrp", "layer-wise relevance propagation (cnnvis_ext.vis.lrp)")}[method]
        fn = _vis_attr(name, what)
        kw: Dict[str, Any] = {}
        if method == "lrp":
            kw["rules"] = _lrp_rules(images)
        attr = fn(model, images, targets, **kw)
        attr = getattr(attr, "relevance", attr).detach().float().cpu()
        # Saliency: max |grad| over channels (Simonyan); LRP: relevance summed over channels
        # (positive part); guided/deconvnet: |signal| summed over channels.
        if method == "saliency":
            heat = attr.abs().amax(1)
        elif method == "lrp":
            heat = attr.sum(1).clamp(min=0)
        else:
            heat = attr.abs().sum(1)
    heat = _per_image_unit(heat)
    return heat, _overlay(images, heat)


def _lrp_rules(images: Tensor):
    """The usual composite: z-box on the first layer (bounded by the data range), gamma on
    the other convolutions, epsilon on the dense layers (Montavon et al. 2019)."""
    try:
        from .vis import FIRST_LAYER, ZBox
    except ImportError:
        return None
    lo, hi = float(images.min()), float(images.max())
    return {"default": "epsilon", nn.Conv2d: "gamma", FIRST_LAYER: ZBox(lo, hi)}


def _select_units(args, c: int) -> List[int]:
    units = list(args.units) if getattr(args, "units", None) else list(range(c))
    bad = [u for u in units if not 0 <= u < c]
    if bad:
        raise CLIError(f"--units: {bad[0]} is out of range (the layer has {c} channels: "
                       f"0..{c - 1})")
    return units


def _layer_channels(model: nn.Module, layer: str, lm: LoadedModel) -> int:
    from ._modules import forward_until

    dev = _model_device(model)
    x = torch.zeros(1, lm.in_channels, lm.input_size, lm.input_size, device=dev)
    with torch.no_grad():
        a = forward_until(model, x, [layer])[layer]
    if a.dim() != 4:
        raise CLIError(f"--layer: {layer!r} has a {a.dim()}-D output; choose a convolution layer "
                       f"({', '.join(conv_layers(model))})")
    return int(a.shape[1])


def view_deconv_top(model: nn.Module, layer: str, images: Tensor, *, k: int, units: List[int],
                    progress: bool, batch_size: int = 128) -> List[Tuple[int, Tensor, Tensor]]:
    """Zeiler & Fergus top-``k`` grids per unit: ``[(unit, patches_grid, projections_grid)]``."""
    top = _deconv_attr("top_activations", "deconvnet top-k patches (cnnvis_ext.deconv."
                                          "top_activations)")
    dev = _model_device(model)
    kwargs: Dict[str, Any] = dict(k=k, units=units, batch_size=batch_size)
    try:
        import inspect

        if "progress" in inspect.signature(top).parameters:
            kwargs["progress"] = progress
    except (TypeError, ValueError):
        pass
    if isinstance(images, Tensor):  # batches of batch_size, not one image at a time
        images = torch.utils.data.TensorDataset(images.to(dev))
    res = top(model, layer, images, **kwargs)
    out = []
    patches, projections = _top_fields(res)
    for j, u in enumerate(units):
        p = patches[j].detach().float().cpu()
        q = projections[j].detach().float().cpu()
        out.append((u, _make_grid(p, ncol=int(math.ceil(math.sqrt(k))), pad=1, normalize=True),
                    _make_grid(q, ncol=int(math.ceil(math.sqrt(k))), pad=1, normalize=True)))
    return out


def _top_fields(res) -> Tuple[Sequence[Tensor], Sequence[Tensor]]:
    """Patches and projections, each indexable by unit → ``(k, C, h, w)``, from top_activations' result."""
    def get(obj, *names):
        for n in names:
            if isinstance(obj, dict) and n in obj:
                return obj[n]
            if hasattr(obj, n):
                return getattr(obj, n)
        raise CLIError("deconv: cnnvis_ext.deconv.top_activations returned a result without "
                       f"{'/'.join(names)}")
    return get(res, "patches"), get(res, "projections", "reconstructions")


# --------------------------------------------------------------------------- subcommands

def _ctx(args) -> Tuple[torch.device, LoadedModel]:
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    lm = load_model(args.model, args.weights, device=dev, input_size=args.input_size)
    return dev, lm


def _out_dir(args) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _say(args, msg: str) -> None:
    from .distributed import get_rank

    if get_rank() == 0:  # one voice under torchrun
        print(msg, flush=True)


def cmd_train(args) -> int:
    from .data import load_dataset
    from .models import cifar_cnn
    from .report import plot_confusion, plot_curves, save_png
    from .train import TrainConfig, confusion_matrix, evaluate, predict, save_checkpoint, train

    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    data = load_dataset(args.data, size=args.input_size or 32, seed=0, progress=not args.quiet)
    kwargs = dict(num_classes=data.num_classes, in_channels=data.image_shape[0],
                  input_size=data.image_shape[-1], channels=tuple(args.channels),
                  kernel_size=args.kernel_size, hidden=args.hidden or None)
    try:
        model = cifar_cnn(**kwargs).to(dev)
    except ValueError as e:
        raise CLIError(str(e)) from None
    _say(args, f"data: {data}")
    _say(args, f"model: cifar_cnn(channels={list(args.channels)}), "
               f"{sum(p.numel() for p in model.parameters()):,} parameters, on {dev}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    hist = train(model, data, cfg, progress=not args.quiet, log=lambda s: _say(args, s))
    acc = evaluate(model, data.test_images, data.test_labels)
    ckpt = save_checkpoint(args.checkpoint, model, model_kwargs=kwargs, classes=data.classes,
                           history=hist, config=cfg, data=data.name, test_acc=acc)
    _say(args, f"test accuracy: {acc:.2%} ({len(data.test_labels)} images)")
    _say(args, f"wrote {ckpt}")
    if args.plots:
        out = _out_dir(args)
        save_png(plot_curves({"train loss": hist["train_loss"]}, title="training loss"),
                 out / "training_loss.png")
        save_png(plot_curves({"train acc": hist["train_acc"], "test acc": hist["test_acc"]},
                             title="accuracy", ylim=(0, 1)), out / "training_accuracy.png")
        cm = confusion_matrix(predict(model, data.test_images), data.test_labels,
                              data.num_classes)
        save_png(plot_confusion(cm, data.classes), out / "confusion_matrix.png")
        _say(args, f"wrote {out}/training_loss.png, training_accuracy.png, confusion_matrix.png")
    return 0


def cmd_kernels(args) -> int:
    _, lm = _ctx(args)
    layer = _check_layer(lm.model, args.layer) if args.layer else _default_conv_layer(lm.model, False)
    grid, caption = view_kernels(lm.model, layer)
    path = _save(grid, _out_dir(args) / f"kernels_{_fname(layer)}.png", scale=args.scale)
    _say(args, f"{caption}\nwrote {path}")
    return 0


def _fname(layer: str) -> str:
    return re.sub(r"[^\w.-]", "_", layer) or "output"


def cmd_maps(args) -> int:
    _, lm = _ctx(args)
    _needs_hooks(lm, "maps")
    layers = [_check_layer(lm.model, l) for l in args.layers] if args.layers else conv_layers(lm.model)
    if not layers:
        raise CLIError("--layers: the model has no convolution layer; name layers with --layers")
    images, caps, _ = _load_images(args, lm)
    out = _out_dir(args)
    dev = _model_device(lm.model)
    for i in range(len(images)):
        _save(images[i], out / f"maps_input{i}.png", scale=_upscale_for(lm.input_size))
        for layer, grid, caption in view_feature_maps(lm.model, images[i:i + 1].to(dev), layers,
                                                      args.max_channels):
            p = _save(grid, out / f"maps_input{i}_{_fname(layer)}.png", scale=args.scale)
            _say(args, f"{caps[i]} {caption}: wrote {p}")
    return 0


def _actmax_objectives(args, lm: LoadedModel) -> Tuple[list, List[str]]:
    _vis_attr("activation_maximization",
              "activation maximization (cnnvis_ext.vis.activation_maximization)")
    obj = importlib.import_module("cnnvis_ext.vis.objectives")
    model = lm.model
    if args.objective:
        parsed = [obj.parse_objective(s) for s in args.objective]
        return parsed, list(args.objective)
    if args.layer or any(not s.startswith(("logit:", "class:", "prob:"))
                         for s in args.objective or []):
        _needs_hooks(lm, "activation maximization of a layer")
    if args.layer:
        layer = _check_layer(model, args.layer)
        c = _layer_channels(model, layer, lm)
        units = _select_units(args, c)
        return [obj.channel(layer, u) for u in units], [f"{layer}:{u}" for u in units]
    with torch.no_grad():
        dev = _model_device(model)
        n_out = model(torch.zeros(1, lm.in_channels, lm.input_size, lm.input_size,
                                  device=dev)).shape[-1]
    classes = list(args.classes) if args.classes else list(range(n_out))
    bad = [c for c in classes if not 0 <= c < n_out]
    if bad:
        raise CLIError(f"--classes: {bad[0]} is out of range (the model has {n_out} outputs)")
    names = _class_names(lm, n_out)
    return [obj.class_logit(c) for c in classes], [f"class {names[c]}" for c in classes]


def _actmax_param(args, lm: LoadedModel) -> Tuple[str, Optional[nn.Module], Any]:
    """``(param, generator, size)`` of actmax: ``--prior`` loads the generator and fixes the size."""
    if not args.prior:
        if args.param == "generator":
            raise CLIError(_NEEDS_PRIOR)
        return args.param or "fourier", None, args.size or lm.input_size
    if args.param not in (None, "generator"):
        raise CLIError(f"--param {args.param}: --prior optimizes a code of the generator, not "
                       "an image; drop --param")
    inv = _load_inverter(args.prior, lm, "--prior")
    _, h, w = inv.image_shape
    if args.size and (args.size, args.size) != (h, w):
        raise CLIError(f"--size: the --prior generator makes {h}x{w} images; drop --size")
    return "generator", inv, (h, w) if h != w else h


def cmd_actmax(args) -> int:
    _, lm = _ctx(args)
    from .distributed import get_world_size

    if args.layers or args.all_channels or get_world_size() > 1:
        return _actmax_job(args, lm)
    objectives, names = _actmax_objectives(args, lm)
    param, gen, size = _actmax_param(args, lm)
    imgs = view_actmax(lm.model, objectives, size=size, steps=args.steps, lr=args.lr,
                       param=param, seed=args.seed, progress=not args.quiet,
                       batch_size=args.batch_size, generator=gen)
    out = _out_dir(args)
    tag = _fname(args.layer) if args.layer else ("objectives" if args.objective else "classes")
    if gen is not None:
        tag += f"_prior_{_fname(gen.layer)}"
    p = _save(_make_grid(imgs, normalize=False), out / f"actmax_{tag}.png",
              scale=_upscale_for(imgs.shape[-1]))
    how = (f", through the generator prior of {gen.layer} ({Path(args.prior).name})"
           if gen is not None else "")
    _say(args, f"activation maximization of {len(names)} objectives ({', '.join(names[:8])}"
               f"{', ...' if len(names) > 8 else ''}), {args.steps} steps{how}: wrote {p}")
    return 0


JOB_CHUNK = 16


def _is_main() -> bool:
    from .distributed import is_main_process

    return is_main_process()


def _split_names(values: Optional[Sequence[str]]) -> List[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]`` (layer lists may use commas or spaces)."""
    return [n for v in (values or []) for n in v.split(",") if n]


def hashlib_digest(t: Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _file_stamp(p):
    """``[resolved path, size, mtime]`` of a file (a job spec entry), or ``p`` itself."""
    try:
        st = Path(p).stat()
        return [str(Path(p).resolve()), st.st_size, int(st.st_mtime)]
    except (OSError, TypeError):
        return p


def _job_spec(args, lm: LoadedModel) -> Dict[str, Any]:
    """What makes two runs of a resumable subcommand the same job (model, weights, seed, ...)."""
    return dict(command=args.command, model=_file_stamp(args.model),
                weights=_file_stamp(args.weights), input_size=lm.input_size, seed=args.seed)


def _channel_runs(chans: Sequence[int], chunk: int) -> List[List[int]]:
    """Consecutive channels in pieces of at most ``chunk`` (a piece's seeds are one offset)."""
    runs: List[List[int]] = []
    for c in chans:
        if runs and c == runs[-1][-1] + 1 and len(runs[-1]) < chunk:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def _actmax_job(args, lm: LoadedModel) -> int:
    """``actmax --layers L1,L2 --all-channels``: one image per channel, resumable, split across
    ranks. Channel ``c`` of layer ``L`` gets the image that one batch of all channels of ``L``
    would give it with seed ``layer_seed(seed, L)``, whatever the ranks and the chunking."""
    from .distributed import JobDir, WorkUnit, atomic_save, layer_seed, offset_seed, run_units

    obj = importlib.import_module("cnnvis_ext.vis.objectives")
    _vis_attr("activation_maximization",
              "activation maximization (cnnvis_ext.vis.activation_maximization)")
    _needs_hooks(lm, "activation maximization of a layer")
    if args.objective or args.classes:
        raise CLIError("--layers/--all-channels (and torchrun) render channels of layers; "
                       "drop --objective/--classes")
    model = lm.model
    names = _split_names(args.layers) or ([args.layer] if args.layer else conv_layers(model))
    if not names:
        raise CLIError("--layers: the model has no convolution layer; name layers with --layers")
    layers = [_check_layer(model, l) for l in dict.fromkeys(names)]
    chunk = args.batch_size or JOB_CHUNK
    param, gen, size = _actmax_param(args, lm)
    units, per_layer = [], {}
    for layer in layers:
        c = _layer_channels(model, layer, lm)
        chans = list(range(c)) if (args.all_channels or not args.units) else _select_units(args, c)
        per_layer[layer] = chans
        for run in _channel_runs(chans, chunk):
            units.append(WorkUnit(f"{layer}:{run[0]}-{run[-1]}", len(run), (layer, run)))
    out = _out_dir(args)
    spec = dict(_job_spec(args, lm), layers=per_layer, steps=args.steps, lr=args.lr, size=size,
                param=param, chunk=chunk)
    if gen is not None:
        spec["prior"] = _file_stamp(args.prior)
    job = JobDir(out, "actmax", spec)

    def compute(u):
        layer, run = u.data
        seed = offset_seed(layer_seed(args.seed, layer), run[0])
        imgs = view_actmax(model, [obj.channel(layer, c) for c in run], size=size,
                           steps=args.steps, lr=args.lr, param=param, seed=seed,
                           progress=False, generator=gen)
        return imgs.cpu()

    def write(u, imgs):
        layer, run = u.data
        d = out / "actmax" / _fname(layer)
        files = [atomic_save({"layer": layer, "channels": run, "images": imgs},
                             d / f"c{run[0]:04d}-{run[-1]:04d}.pt")]
        for c, img in zip(run, imgs):
            files.append(_save(img, d / f"c{c:04d}.png", scale=_upscale_for(img.shape[-1])))
        return files

    run_units(units, compute, write, job, progress=not args.quiet,
              desc=f"actmax {len(units)} units", log=lambda m: _say(args, m))
    if _is_main():
        side = f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"
        what = (f"generator parameterization ({Path(args.prior).name}, layer {gen.layer})"
                if gen is not None else f"{param} parameterization")
        lines = ["# activation maximization", "",
                 f"seed {args.seed}, {args.steps} steps, lr {args.lr}, {what}, {side} images", "",
                 "| layer | channels | grid | per channel |", "|---|---|---|---|"]
        for layer in layers:
            d = out / "actmax" / _fname(layer)
            parts = [torch.load(d / f"c{u.data[1][0]:04d}-{u.data[1][-1]:04d}.pt",
                                weights_only=True)["images"]
                     for u in units if u.data[0] == layer]
            imgs = torch.cat(parts)
            g = _save(_make_grid(imgs, normalize=False), out / f"actmax_{_fname(layer)}.png",
                      scale=_upscale_for(imgs.shape[-1]))
            lines.append(f"| {layer} | {len(per_layer[layer])} | {g.name} | "
                         f"actmax/{_fname(layer)}/cNNNN.png |")
            _say(args, f"{layer}: {len(per_layer[layer])} channels: wrote {g}")
        from .distributed import atomic_write_bytes

        atomic_write_bytes(out / "actmax_report.md", ("\n".join(lines) + "\n").encode())
        job.mark_complete()
        _say(args, f"activation maximization of {sum(u.size for u in units)} channels of "
                   f"{len(layers)} layers: wrote {out / 'actmax_report.md'}")
    return 0


def cmd_invert(args) -> int:
    """Invert every image at every layer: one work unit per image, dealt to the ranks under
    torchrun, written as it finishes and skipped when run again with the same arguments."""
    from .distributed import JobDir, WorkUnit, atomic_save, offset_seed, run_units

    _, lm = _ctx(args)
    _needs_hooks(lm, "invert")
    if args.learned:
        return _invert_learned(args, lm)
    names = _split_names(args.layers)
    layers = [_check_layer(lm.model, l) for l in names] if names else conv_layers(lm.model)
    if not layers:
        raise CLIError("--layers: the model has no convolution layer; name layers with --layers")
    images, caps, _ = _load_images(args, lm)
    dev = _model_device(lm.model)
    out = _out_dir(args)
    spec = dict(_job_spec(args, lm), layers=layers, steps=args.steps,
                images=hashlib_digest(images), n=len(images))
    job = JobDir(out, "invert", spec)

    def compute(u):
        i = u.data
        # image i draws the noise it would draw as image i of one batch, on any rank
        rec = view_invert(lm.model, images[i].to(dev), layers, steps=args.steps,
                          seed=offset_seed(args.seed, i), progress=False)
        return rec.cpu()

    def write(u, rec):
        i = u.data
        grid = _make_grid(torch.cat([images[i:i + 1].cpu(), rec]), ncol=len(layers) + 1,
                          normalize=False)
        t = atomic_save({"image": i, "layers": layers, "reconstructions": rec},
                        out / "invert" / f"input{i}.pt")
        p = _save(grid, out / f"invert_input{i}.png", scale=_upscale_for(lm.input_size))
        _say(args, f"{caps[i]}: original, then reconstructions from {', '.join(layers)}: wrote {p}")
        return [t, p]

    units = [WorkUnit(f"input{i}", 1, i) for i in range(len(images))]
    done = run_units(units, compute, write, job, progress=not args.quiet, desc="invert",
                     log=lambda m: _say(args, m))
    if done is not None and _is_main():
        job.mark_complete()
        _say(args, f"inverted {len(units)} images at {len(layers)} layers: {out}")
    return 0


def _invert_learned(args, lm: LoadedModel) -> int:
    """``invert --learned INV.pt [--learned INV2.pt ...]``: one forward pass per inverter
    (Dosovitskiy & Brox) instead of an optimization per image and layer."""
    from dataclasses import replace

    from .distributed import atomic_save

    invert_learned = _vis_attr("invert_learned", "learned inversion (cnnvis_ext.vis.invert_learned)")
    invs = [_load_inverter(f, lm, "--learned") for f in args.learned]
    layers = [inv.layer for inv in invs]
    names = _split_names(args.layers)
    if names and set(names) != set(layers):
        raise CLIError(f"--layers: with --learned the layers are the inverters' "
                       f"({', '.join(layers)}); drop --layers")
    shapes = sorted({tuple(inv.image_shape) for inv in invs})
    if len(shapes) > 1:
        raise CLIError(f"--learned: the inverters were trained for different image shapes "
                       f"({', '.join(map(str, shapes))}); invert them in separate runs")
    c, h, w = shapes[0]
    if h != w:
        raise CLIError(f"--learned: the inverters make {h}x{w} images; only square images can be "
                       "read from --data/--image")
    if (lm.in_channels, lm.input_size) != (c, h):
        if args.input_size and args.input_size != h:
            raise CLIError(f"--input-size: the --learned inverters were trained on {h}x{w} "
                           "images; drop --input-size")
        lm = replace(lm, input_size=h, in_channels=c)
    images, caps, _ = _load_images(args, lm)
    dev = _model_device(lm.model)
    x = images.to(dev)
    t0 = time.perf_counter()
    recs = [invert_learned(inv, lm.model, x, check=False) for inv in invs]
    dt = time.perf_counter() - t0
    recs = [r.detach().float().cpu().clamp(0, 1) for r in recs]
    if not _is_main():  # one writer under torchrun (the work is one forward pass)
        return 0
    out = _out_dir(args)
    images = images.float().cpu()
    for i in range(len(images)):
        row = torch.cat([images[i:i + 1]] + [r[i:i + 1] for r in recs])
        p = _save(_make_grid(row, ncol=len(layers) + 1, normalize=False),
                  out / f"invert_learned_input{i}.png", scale=_upscale_for(h))
        mse = ", ".join(f"{l} {float((r[i] - images[i]).pow(2).mean()):.4f}"
                        for l, r in zip(layers, recs))
        _say(args, f"{caps[i]}: original, then learned reconstructions from {', '.join(layers)} "
                   f"(pixel MSE {mse}): wrote {p}")
    t = atomic_save({"layers": layers, "inverters": [str(f) for f in args.learned],
                     "images": images, "reconstructions": torch.stack(recs, 1)},
                    out / "invert_learned.pt")
    n = len(images) * len(invs)
    _say(args, f"reconstructed {len(images)} images from {len(layers)} layer(s) with learned "
               f"inverters in {dt * 1e3:.0f} ms ({n / max(dt, 1e-9):.0f} reconstructions/s); "
               f"tensors (N, layers, C, H, W): wrote {t}")
    return 0


def cmd_train_inverter(args) -> int:
    """Train an up-convolutional inverter (Dosovitskiy & Brox) of one layer and save it."""
    from .data import load_dataset
    from .distributed import get_world_size

    if get_world_size() > 1:
        raise CLIError("train-inverter trains in one process; run it without torchrun")
    dev, lm = _ctx(args)
    _needs_hooks(lm, "train-inverter")
    train_inverter = _vis_attr("train_inverter", "learned inversion (cnnvis_ext.vis.train_inverter)")
    invert_learned = _vis_attr("invert_learned", "learned inversion (cnnvis_ext.vis.invert_learned)")
    model = lm.model
    layer = _check_layer(model, args.layer) if args.layer else _default_conv_layer(model, last=True)
    out = Path(args.out) if args.out else Path(f"inverter_{_fname(layer)}.pt")
    if out.is_dir():
        out = out / f"inverter_{_fname(layer)}.pt"
    for parent in out.parents:  # fail now, not after training
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"--out: {str(parent)!r} is not a folder")
            break
    if lm.in_channels not in (1, 3):
        raise CLIError(f"the model takes {lm.in_channels}-channel input; only 1- and 3-channel "
                       "images can be read")
    data = load_dataset(None if args.data in (None, "digits") else args.data,
                        size=lm.input_size, channels=lm.in_channels, progress=not args.quiet)
    _say(args, f"data: {data}")
    t0 = time.perf_counter()
    inv = train_inverter(model, layer, data.train_images, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, loss=args.loss,
                         width=args.width, seed=args.seed, progress=not args.quiet,
                         log=lambda m: _say(args, m))
    train_s = time.perf_counter() - t0
    _say(args, f"inverter of {layer}: codes {tuple(inv.code_shape)} -> images "
               f"{tuple(inv.image_shape)}, {inv.depth} up-convolution(s), "
               f"{sum(p.numel() for p in inv.parameters()):,} parameters; {args.epochs} epochs "
               f"({args.loss} loss) on {len(data.train_images)} images in {train_s:.1f}s on {dev}")
    x = data.test_images
    if len(x):
        rec = invert_learned(inv, model, x.to(dev), batch_size=256, check=False).float().cpu()
        mse = float((rec - x).pow(2).mean())
        base = float((data.train_images.mean(0) - x).pow(2).mean())
        _say(args, f"held-out pixel MSE {mse:.5f} on {len(x)} test images (the mean training "
                   f"image: {base:.5f})")
    path = inv.save(out)
    _say(args, f"wrote {path}")
    return 0


def cmd_deconv(args) -> int:
    _, lm = _ctx(args)
    _needs_hooks(lm, "deconv")
    model = lm.model
    layer = _check_layer(model, args.layer) if args.layer else _default_conv_layer(model, True)
    units = _select_units(args, _layer_channels(model, layer, lm))[: args.max_units]
    out = _out_dir(args)
    if args.image or args.index:
        images, caps, _ = _load_images(args, lm)
        deconvnet = _deconv_attr("deconvnet", "deconvnet projections (cnnvis_ext.deconv.deconvnet)")
        dev = _model_device(model)
        rec = deconvnet(model, layer, images.to(dev), units=units).detach().float().cpu()
        rec = rec.reshape(len(images), len(units), *rec.shape[1:])
        for i in range(len(images)):
            p = _save(_make_grid(rec[i], normalize=True), out / f"deconv_input{i}_{_fname(layer)}.png",
                      scale=_upscale_for(lm.input_size))
            _say(args, f"{caps[i]}: projections of the strongest activation of units "
                       f"{units[0]}..{units[-1]} of {layer}: wrote {p}")
        return 0
    from .data import load_dataset

    from .distributed import JobDir, barrier, _broadcast_object

    data = load_dataset(args.data, size=lm.input_size, channels=lm.in_channels,
                        progress=not args.quiet and _is_main())
    spec = dict(_job_spec(args, lm), layer=layer, units=units, top=args.top,
                data=str(args.data), n=len(data.test_images))
    job = JobDir(out, f"deconv_{_fname(layer)}", spec)
    done = _broadcast_object(sorted(job.load()) if _is_main() else None)
    if all(f"unit{u}" in done for u in units):
        _say(args, f"{job.path.name}: all {len(units)} units already written; nothing to do")
        return 0
    # every rank scans its share of the test set (top_activations merges them)
    grids = view_deconv_top(model, layer, data.test_images, k=args.top, units=units,
                            progress=not args.quiet)
    if _is_main():
        for u, patches, projections in grids:
            p1 = _save(patches, out / f"deconv_{_fname(layer)}_unit{u}_patches.png", scale=4)
            p2 = _save(projections, out / f"deconv_{_fname(layer)}_unit{u}_projections.png",
                       scale=4)
            job.mark_done(f"unit{u}", [p1, p2])
            _say(args, f"{layer} unit {u}: top-{args.top} patches {p1}, projections {p2}")
        job.mark_complete()
    barrier()
    return 0


def cmd_attribute(args) -> int:
    _, lm = _ctx(args)
    model = lm.model
    if args.method != "saliency":
        _needs_hooks(lm, f"attribute --method {args.method}")
    if args.layer:
        _check_layer(model, args.layer)
    images, caps, labels = _load_images(args, lm)
    dev = _model_device(model)
    with torch.no_grad():
        logits = model(images.to(dev))
    n_out = logits.shape[-1]
    if args.target is not None:
        if not 0 <= args.target < n_out:
            raise CLIError(f"--target: {args.target} is out of range (the model has {n_out} "
                           "outputs)")
        targets = torch.full((len(images),), args.target, dtype=torch.long)
    else:
        targets = logits.argmax(-1).cpu()
    heat, overlay = view_attribution(model, images.to(dev), targets.to(dev), args.method,
                                     args.layer)
    names = _class_names(lm, n_out)
    rows = []
    for i in range(len(images)):
        img = images[i].cpu()
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        rows += [img, heat[i].expand(3, -1, -1), overlay[i]]
    p = _save(_make_grid(torch.stack(rows), ncol=3, normalize=False),
              _out_dir(args) / f"attribute_{args.method}.png", scale=_upscale_for(lm.input_size))
    for i in range(len(images)):
        _say(args, f"{caps[i]}: {args.method} for class {names[int(targets[i])]}")
    _say(args, f"rows: image, {args.method} map, overlay: wrote {p}")
    return 0


def _bench_dir(args) -> Path:
    cands = [Path(args.bench_dir)] if args.bench_dir else [
        Path(__file__).resolve().parent.parent / "benchmarks", Path.cwd() / "benchmarks"]
    for c in cands:
        if c.is_dir():
            return c
    raise CLIError(f"no benchmarks folder found (looked in {', '.join(str(c) for c in cands)}); "
                   "the scripts ship with the source tree: run from a checkout or pass --bench-dir")


def cmd_bench(args) -> int:
    bdir = _bench_dir(args)
    scripts = sorted(bdir.glob("bench_*.py"))
    if args.only:
        wanted = set(args.only)
        scripts = [s for s in scripts if s.stem in wanted or s.stem[len("bench_"):] in wanted]
        if not scripts:
            avail = ", ".join(s.stem for s in sorted(bdir.glob("bench_*.py"))) or "none"
            raise CLIError(f"--only: no benchmark named {', '.join(args.only)} (available: {avail})")
    if not scripts:
        raise CLIError(f"no bench_*.py scripts in {str(bdir)!r}")
    failed = []
    for s in scripts:
        cmd = [sys.executable, str(s)] + (["--quick"] if args.quick else [])
        _say(args, f"## {s.stem}  ({' '.join(cmd[1:])})\n")
        env = dict(os.environ)
        if args.device != "auto":
            env["CNNVIS_DEVICE"] = args.device
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        _say(args, f"\n({s.stem}: exit {rc}, {time.perf_counter() - t0:.1f}s)\n")
        if rc:
            failed.append(s.stem)
    if failed:
        raise CLIError(f"benchmark(s) failed: {', '.join(failed)}")
    return 0


# --------------------------------------------------------------------------- demo

def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


# --------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (plus the usual exit status 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {s!r}")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to a flag's help unless the help already says it,
    or the default is None/False (nothing worth printing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``cnnvis`` argument parser (one sub-parser per subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--device", default="auto", metavar="{cpu,cuda,cuda:N,auto}",
                   help="where to run (default: auto = CUDA when available, else CPU)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--traceback", action="store_true",
                   help="show Python tracebacks instead of one-line errors")

    model = argparse.ArgumentParser(add_help=False)
    g = model.add_argument_group("model")
    g.add_argument("--model", metavar="SPEC",
                   help="a checkpoint from `cnnvis train` (default: ./checkpoint.pt), a "
                        "TorchScript file, package.module:factory, or a torchvision architecture "
                        "name (needs --weights)")
    g.add_argument("--weights", metavar="FILE.pt",
                   help="a state_dict file (torch.save(model.state_dict(), ...)) for "
                        "module:factory and torchvision models; never downloaded")
    g.add_argument("--input-size", type=_positive_int, metavar="N",
                   help="input width/height (default: the checkpoint's, 224 for torchvision "
                        "models, else 32)")

    images = argparse.ArgumentParser(add_help=False)
    g = images.add_argument_group("input images")
    g.add_argument("--data", metavar="DIR",
                   help="folder of class sub-folders of PNG/JPEG images (default: the bundled "
                        "digits); its test split is used")
    g.add_argument("--image", action="append", metavar="FILE",
                   help="an image file instead (repeatable)")
    g.add_argument("--index", type=_nonneg_int, action="append", metavar="I",
                   help="test-set image index (repeatable; default: the first --num-images)")
    g.add_argument("--num-images", type=_positive_int, default=4, metavar="N",
                   help="how many test images when no --index/--image is given (default: 4)")

    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", default="cnnvis_out", metavar="DIR",
                     help="output folder (default: cnnvis_out)")

    parser = _Parser(prog=PROG, description="Look inside convolutional networks: train the "
                     "survey's example CNN, and draw its kernels, feature maps, activation "
                     "maximization, inversions, deconvnet projections and attributions.",
                     epilog="Run `cnnvis demo --out DIR` for everything at once, then open "
                            "DIR/index.html.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cnnvis_ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    fmt = _HelpFormatter

    p = sub.add_parser("demo", parents=[common], formatter_class=fmt,
                       help="train the example CNN and write an HTML report of every view",
                       description="Train the survey's example CNN on the bundled digits (under "
                       "a minute on 2 CPU cores), report its test accuracy, and write kernels, "
                       "feature maps, activation maximization (in input space and through "
                       "a learned generator prior), deconvnet top-9 projections, inversions "
                       "(optimized and by learned up-convolutional inverters) and attribution "
                       "maps with an index.html.")
    p.add_argument("--out", default="cnnvis_demo", metavar="DIR", help="output folder")
    p.add_argument("--data", metavar="DIR", help="folder of class sub-folders of PNG/JPEG "
                   "images instead of the digits")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="use this checkpoint (from `cnnvis train`) instead of training")
    p.add_argument("--epochs", type=_nonneg_int, default=12, help="training epochs")
    p.add_argument("--steps", type=_positive_int, default=64,
                   help="optimization steps of activation maximization and inversion")
    p.add_argument("--images", type=_positive_int, default=4,
                   help="test images for feature maps, inversion and attribution")
    p.add_argument("--max-units", type=_positive_int, default=64,
                   help="channels of the last conv layer shown with top-9 deconvnet projections")
    p.add_argument("--top", type=_positive_int, default=9, help="top-k images per unit")
    p.add_argument("--inverter-epochs", type=_nonneg_int, metavar="N",
                   help="training epochs of each learned inverter (default: 2, or --epochs "
                        "when smaller; 0: untrained decoders, for smoke tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", parents=[common, out], formatter_class=fmt,
                       help="train the example CNN and save a checkpoint",
                       description="Train cifar_cnn (CONV-RELU-POOL blocks + FC) on the bundled "
                       "digits or --data DIR, print the test accuracy, save a checkpoint.")
    p.add_argument("--data", metavar="DIR", help="folder of class sub-folders of PNG/JPEG images "
                   "(or with train/ and test/ folders of them); default: the bundled digits")
    p.add_argument("--checkpoint", default="checkpoint.pt", metavar="FILE",
                   help="checkpoint to write")
    p.add_argument("--epochs", type=_nonneg_int, default=12)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (Adam, one-cycle)")
    p.add_argument("--channels", type=_positive_int, nargs="+", default=[16, 32, 64],
                   help="filters of each conv block (--channels 12 --hidden 0: the survey's "
                        "simplest network)")
    p.add_argument("--kernel-size", type=_positive_int, default=3)
    p.add_argument("--hidden", type=_nonneg_int, default=64, help="hidden FC width (0: none)")
    p.add_argument("--input-size", type=_positive_int, default=32, metavar="N")
    p.add_argument("--plots", action="store_true",
                   help="also write training curves and the confusion matrix to --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-inverter", parents=[common, model], formatter_class=fmt,
                       help="train an up-convolutional inverter of a layer (learned inversion "
                            "and the generator prior of actmax)",
                       description="Train an up-convolutional network that maps the frozen "
                       "model's representation at --layer back to images (Dosovitskiy & Brox "
                       "2016) on the training split of --data, print its held-out error, and "
                       "save it. Use it with `cnnvis invert --learned FILE` (reconstructions in "
                       "one forward pass) and `cnnvis actmax --prior FILE` (activation "
                       "maximization through the generator, Nguyen et al. 2016).")
    p.add_argument("--layer", help="layer to invert (default: the last convolution)")
    p.add_argument("--data", metavar="DIR|digits", help="folder of class sub-folders of "
                   "PNG/JPEG images (or with train/ and test/ folders of them), or digits: the "
                   "bundled digits (default)")
    p.add_argument("--out", metavar="FILE.pt", help="inverter file to write (default: "
                   "inverter_<layer>.pt; a folder: <folder>/inverter_<layer>.pt)")
    p.add_argument("--epochs", type=_nonneg_int, default=10,
                   help="passes over the training images")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per step")
    p.add_argument("--lr", type=_positive_float, default=2e-3,
                   help="peak learning rate (Adam, one-cycle)")
    p.add_argument("--loss", choices=["pixel", "pixel+feature"], default="pixel",
                   help="pixel MSE, or plus the distance between the representations of the "
                        "reconstruction and of the image (slower: runs the model every step)")
    p.add_argument("--width", type=_positive_int, metavar="C",
                   help="channels of the decoder's first stage (default: twice the code's "
                        "channels, in [32, 256])")
    p.set_defaults(func=cmd_train_inverter)

    p = sub.add_parser("kernels", parents=[common, model, out], formatter_class=fmt,
                       help="draw the learned kernels of a layer")
    p.add_argument("--layer", help="layer name (default: the first convolution)")
    p.add_argument("--scale", type=_positive_int, default=8, help="pixel magnification")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("maps", parents=[common, model, images, out], formatter_class=fmt,
                       help="draw the feature maps of images at each layer")
    p.add_argument("--layers", nargs="+", help="layer names (default: every convolution)")
    p.add_argument("--max-channels", type=_positive_int, default=64)
    p.add_argument("--scale", type=_positive_int, default=3, help="pixel magnification")
    p.set_defaults(func=cmd_maps)

    p = sub.add_parser("actmax", parents=[common, model, out], formatter_class=fmt,
                       help="activation maximization of classes or channels (batched)")
    p.add_argument("--layer", help="maximize channels of this layer (default: the class logits)")
    p.add_argument("--layers", nargs="+", metavar="L1,L2",
                   help="job mode: every channel (or --units) of each of these layers, one PNG "
                        "per channel under --out, resumable, split across ranks under torchrun")
    p.add_argument("--all-channels", action="store_true",
                   help="job mode over all channels of --layers (default: every convolution)")
    p.add_argument("--units", type=_nonneg_int, nargs="+", help="channels of --layer "
                   "(default: all)")
    p.add_argument("--classes", type=_nonneg_int, nargs="+",
                   help="classes to maximize when no --layer (default: all)")
    p.add_argument("--objective", action="append", metavar="SPEC",
                   help="objective spec: layer:c, layer:c:y:x, logit:k, prob:k (repeatable)")
    p.add_argument("--steps", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--size", type=_positive_int, help="image size (default: the model's input)")
    p.add_argument("--param", choices=["fourier", "pixel", "generator"],
                   help="image parameterization (default: fourier; generator with --prior)")
    p.add_argument("--prior", metavar="INVERTER.pt",
                   help="generator prior (Nguyen et al. 2016, DGN-AM): optimize a code at the "
                        "layer of this inverter (from `cnnvis train-inverter`) and decode it, "
                        "instead of pixels")
    p.add_argument("--batch-size", type=_positive_int, help="objectives per batch (default: all; "
                   f"job mode: {JOB_CHUNK}, the work unit dealt to a rank)")
    p.set_defaults(func=cmd_actmax)

    p = sub.add_parser("invert", parents=[common, model, images, out], formatter_class=fmt,
                       help="reconstruct images from their representation at each layer",
                       description="Mahendran & Vedaldi inversion of each image at each layer. "
                       "One work unit per image: under torchrun the images are split across "
                       "ranks; run again with the same arguments to finish a killed job. "
                       "With --learned: Dosovitskiy & Brox reconstructions by trained "
                       "up-convolutional inverters, one forward pass for all images.")
    p.add_argument("--layers", nargs="+", metavar="L1,L2",
                   help="layer names (default: every convolution)")
    p.add_argument("--steps", type=_positive_int, default=200)
    p.add_argument("--learned", action="append", metavar="INVERTER.pt",
                   help="reconstruct with this trained inverter (from `cnnvis train-inverter`) "
                        "in one forward pass instead of optimizing (repeatable: one per layer); "
                        "writes invert_learned_input<i>.png")
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("deconv", parents=[common, model, images, out], formatter_class=fmt,
                       help="deconvnet projections: top-k patches per unit, or of given images",
                       description="Zeiler & Fergus deconvnet. Without --image/--index: scan the "
                       "test set and draw, for each unit of --layer, its top-k input patches and "
                       "their projections. With --image/--index: project each unit's strongest "
                       "activation in those images.")
    p.add_argument("--layer", help="layer name (default: the last convolution)")
    p.add_argument("--units", type=_nonneg_int, nargs="+", help="channels (default: all)")
    p.add_argument("--max-units", type=_positive_int, default=64)
    p.add_argument("--top", type=_positive_int, default=9, help="images per unit")
    p.set_defaults(func=cmd_deconv)

    p = sub.add_parser("attribute", parents=[common, model, images, out], formatter_class=fmt,
                       help="attribution maps: saliency, guided backprop, deconvnet, LRP, Grad-CAM")
    p.add_argument("--method", choices=ATTRIBUTION_METHODS, default="saliency")
    p.add_argument("--target", type=_nonneg_int,
                   help="class to explain (default: each image's predicted class)")
    p.add_argument("--layer", help="Grad-CAM layer (default: the last convolution)")
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("bench", parents=[common], formatter_class=fmt,
                       help="run the benchmark scripts and print their tables")
    p.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                   help="CI-size runs")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. deconvnet)")
    p.add_argument("--bench-dir", metavar="DIR", help="folder of bench_*.py scripts")
    p.set_defaults(func=cmd_bench)
    return parser


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = str(msg).strip()
    first = msg.splitlines()[0] if msg else type(e).__name__
    return first


def _run_command(args) -> int:
    """Run the subcommand, inside a torch.distributed process group when launched by torchrun."""
    from .distributed import distributed_session, launched_by_torchrun

    if not launched_by_torchrun():
        return int(args.func(args) or 0)
    dev = resolve_device(getattr(args, "device", "cpu") or "cpu")
    with distributed_session(dev):
        return int(args.func(args) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cnnvis``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    traceback = args.traceback or os.environ.get("CNNVIS_TRACEBACK") == "1"
    name = f"{PROG} {args.command}"
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and "RANK" in os.environ:
        name += f" [rank {os.environ['RANK']}]"
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            KeyError, ValueError, TypeError, IndexError, RuntimeError, NotImplementedError,
            ImportError, OSError) as e:
        if traceback:
            raise
        print(f"{name}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
