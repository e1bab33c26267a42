"""What the commands read: the model (``--model``/``--weights``), its layers, the device,
the input images and learned inverter files. Nothing here touches the network."""
from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .._modules import forward_until, get_layer, model_device_dtype, state_dict_mismatch
from ..data import load_dataset, load_image_files
from ..nn import ConvReLUPool2d
from ..train import is_checkpoint, load_checkpoint
from ..vis import UpConvInverter
from .errors import PROG, CLIError, one_line

__all__ = ["LoadedModel", "load_model", "model_context", "resolve_device", "conv_layers",
           "needs_hooks", "check_layer", "default_conv_layer", "model_device", "layer_channels",
           "select_units", "class_names", "load_images", "load_inverter"]


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


# --------------------------------------------------------------------------- models

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


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


def _torch_load(path: Path, cannot: str):
    """``torch.load`` of tensors and plain containers, on the CPU; an unreadable file is a
    :class:`CLIError` that says ``cannot`` and the exception's type."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"{cannot} ({type(e).__name__})") from None


def _load_state_dict_file(path: str) -> Dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--weights: no such file: {path!r}")
    sd = _torch_load(p, f"--weights: cannot read {path!r} as a state_dict saved with torch.save")
    if is_checkpoint(sd):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CLIError(f"--weights: {path!r} does not hold a state_dict (a dict of tensors)")
    return sd


def _apply_weights(model: nn.Module, weights: str, what: str) -> None:
    sd = _load_state_dict_file(weights)
    bad = state_dict_mismatch(model, sd)
    if bad:
        raise CLIError(f"--weights: {weights!r} does not fit {what}: {bad}")
    model.load_state_dict(sd)


def _torchvision_names() -> Optional[List[str]]:
    try:
        import torchvision.models as tvm
    except Exception:  # torchvision is optional; a broken install counts as absent
        return None
    return list(tvm.list_models(module=tvm))


def _load_file(path: Path, spec: str, weights: Optional[str], device,
               input_size: Optional[int]) -> LoadedModel:
    """A TorchScript file or a checkpoint written by ``cnnvis train``."""
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
        if weights:
            raise CLIError("--weights: a TorchScript file carries its own weights; drop --weights")
        model = model.to(device).eval()
        return LoadedModel(model, path.name, input_size or 32, _in_channels(model), scripted=True)
    obj = _torch_load(path, f"--model: cannot read {spec!r}: it is neither a cnnvis checkpoint "
                            "nor a TorchScript file")
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


def _load_factory(spec: str, weights: Optional[str], device,
                  input_size: Optional[int]) -> LoadedModel:
    """``package.module:factory``: a callable returning an ``nn.Module`` (or the module itself)."""
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
        if not Path("checkpoint.pt").is_file():
            raise CLIError("no model given: pass --model CHECKPOINT (written by `cnnvis train`), "
                           "--model FILE (TorchScript), --model package.module:factory "
                           "[--weights FILE.pt] or --model <torchvision name> --weights FILE.pt")
        spec = "checkpoint.pt"
    path = Path(spec)
    if path.is_file():
        return _load_file(path, spec, weights, device, input_size)
    if _FACTORY_RE.match(spec):
        return _load_factory(spec, weights, device, input_size)
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


def model_context(args) -> Tuple[torch.device, LoadedModel]:
    """The device and model of ``--device``, ``--model`` and ``--weights``; seeds torch."""
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    lm = load_model(args.model, args.weights, device=dev, input_size=args.input_size)
    return dev, lm


# --------------------------------------------------------------------------- layers

def conv_layers(model: nn.Module) -> List[str]:
    """Names of the convolution layers (fused blocks included), in forward order."""
    return [n for n, m in model.named_modules()
            if n and (isinstance(m, (nn.Conv2d, ConvReLUPool2d)) or getattr(
                m, "original_name", None) in ("Conv2d", "ConvReLUPool2d", "ConvReLU2d"))]


def needs_hooks(lm: LoadedModel, what: str) -> None:
    """Layer-level views hook into modules, which TorchScript modules do not allow."""
    if lm.scripted:
        raise CLIError(f"{what} needs the layers of a Python nn.Module; a TorchScript model "
                       "supports only its output: kernels, actmax --classes/logit objectives, "
                       "attribute --method saliency. Pass the model as package.module:factory "
                       "with --weights instead")


def check_layer(model: nn.Module, name: str) -> str:
    """``name`` if the model has that layer, else a :class:`CLIError` listing the valid ones."""
    try:
        get_layer(model, name)
    except KeyError as e:
        raise CLIError(e.args[0]) from None
    return name


def default_conv_layer(model: nn.Module, last: bool) -> str:
    """The first (or last) convolution: the default ``--layer`` of the views."""
    convs = conv_layers(model)
    if not convs:
        raise CLIError("--layer: the model has no convolution layer; name one with --layer "
                       "(valid layers: " + ", ".join(n for n, _ in model.named_modules() if n) + ")")
    return convs[-1] if last else convs[0]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters and buffers (CPU when it has none)."""
    return model_device_dtype(model)[0]


def layer_channels(model: nn.Module, layer: str, lm: LoadedModel) -> int:
    """Channels of ``layer``'s output (a convolution's map), from one forward pass of zeros."""
    x = torch.zeros(1, lm.in_channels, lm.input_size, lm.input_size, device=model_device(model))
    with torch.no_grad():
        a = forward_until(model, x, [layer])[layer]
    if a.dim() != 4:
        raise CLIError(f"--layer: {layer!r} has a {a.dim()}-D output; choose a convolution layer "
                       f"({', '.join(conv_layers(model))})")
    return int(a.shape[1])


def select_units(args, c: int) -> List[int]:
    """``--units`` (default: all ``c`` channels), checked against the layer's width."""
    units = list(args.units) if getattr(args, "units", None) else list(range(c))
    bad = [u for u in units if not 0 <= u < c]
    if bad:
        raise CLIError(f"--units: {bad[0]} is out of range (the layer has {c} channels: "
                       f"0..{c - 1})")
    return units


def class_names(lm: LoadedModel, n: int) -> List[str]:
    """The model's class names when it knows ``n`` of them, else ``"0"``, ``"1"``, ..."""
    if lm.classes and len(lm.classes) >= n:
        return list(lm.classes)
    return [str(i) for i in range(n)]


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
        from .. import build_info

        if not build_info().get("cuda_compiled"):
            print(f"{PROG}: warning: the cnnvis_ext kernels were built without CUDA; the "
                  "fused ops will fail on the GPU (rebuild with CNNVIS_CUDA=ON)", file=sys.stderr)
    elif dev.type != "cpu":
        raise CLIError(f"--device: expected cpu, cuda, cuda:N or auto, got {spec!r}")
    return dev


# --------------------------------------------------------------------------- inputs

def load_images(args, lm: LoadedModel) -> Tuple[Tensor, List[str], Optional[Tensor]]:
    """The input images of maps/invert/deconv/attribute: ``(images, captions, labels)``."""
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


def load_inverter(path: str, lm: LoadedModel, flag: str) -> UpConvInverter:
    """Load an ``UpConvInverter`` file for ``lm``'s model, onto its device, or a one-line error.

    The errors name ``flag`` (``--learned`` / ``--prior``): a missing file, a file that is
    not an inverter, an inverter of a layer the model lacks or whose shape differs.
    """
    needs_hooks(lm, flag)
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{flag}: no such file: {path!r} (train one with `cnnvis train-inverter "
                       "--model ... --layer L --out FILE.pt`)")
    try:
        inv = UpConvInverter.load(p, map_location=model_device(lm.model))
    except ValueError as e:
        raise CLIError(f"{flag}: {one_line(e).removeprefix('inverter: ')}") from None
    try:
        inv.check_model(lm.model)
    except KeyError as e:
        raise CLIError(f"{flag}: {p.name} inverts layer {inv.layer!r}, which the model does not "
                       f"have ({one_line(e)})") from None
    except ValueError as e:
        raise CLIError(f"{flag}: {p.name} does not fit the model: "
                       f"{one_line(e).removeprefix('model: ')}") from None
    except RuntimeError as e:  # e.g. the model cannot even take the inverter's image shape
        raise CLIError(f"{flag}: {p.name} was trained for {tuple(inv.image_shape)} images, "
                       f"which the model cannot take ({one_line(e)})") from None
    return inv
