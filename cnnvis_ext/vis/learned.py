"""Learned priors: up-convolutional inversion networks and a generator prior for
activation maximization.

* :class:`UpConvInverter` / :func:`train_inverter` / :func:`invert_learned`:
  Dosovitskiy & Brox, "Inverting Visual Representations with Convolutional
  Networks" (CVPR 2016). A decoder of transposed convolutions is trained to map
  a frozen network's representation ``phi_layer(x)`` back to ``x``; once
  trained, a reconstruction costs one forward pass instead of the hundreds of
  gradient steps of optimization-based inversion (:func:`~cnnvis_ext.vis.invert`).
  The loss is the pixel MSE, optionally plus the distance between
  ``phi(inverter(phi(x)))`` and ``phi(x)`` (a feature-space loss).
* :class:`~cnnvis_ext.vis.param.GeneratorParam` (in :mod:`.param`): Nguyen et al., "Synthesizing the preferred inputs
  for neurons in neural networks via deep generator networks" (NeurIPS 2016,
  DGN-AM). Activation maximization optimizes a code ``h`` at the inverter's
  layer; the image is ``x = inverter(h)``. ``h`` decays towards zero (L2) and
  is clipped to the range of codes seen on real data, which
  :func:`train_inverter` records. Used through
  ``activation_maximization(model, objectives, param="generator", generator=inv)``.

Everything trains on the user's own data (a tensor of images, a
``Dataset``, or an iterable of batches); nothing is downloaded.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._modules import forward_until, get_layer, model_device_dtype
from ._common import check_model, eval_mode, input_channels, progress_bar
from ..io import atomic_save

__all__ = ["UpConvInverter", "train_inverter", "invert_learned", "layer_output_shape",
           "INVERTER_FORMAT"]

#: The ``format`` entry of a file written by :meth:`UpConvInverter.save`.
INVERTER_FORMAT = "cnnvis_ext.inverter/1"

_LOSSES = ("pixel", "pixel+feature")


def _shape(t, what: str) -> Tuple[int, ...]:
    try:
        s = tuple(int(v) for v in t)
    except Exception:
        raise ValueError(f"{what}: expected a sequence of positive ints, got {t!r}") from None
    if not s or any(v <= 0 for v in s):
        raise ValueError(f"{what}: expected a sequence of positive ints, got {t!r}")
    return s


def _start_side(side: int, limit: int = 4) -> int:
    """Halve ``side`` while it stays even and above ``limit``: the decoder's start size."""
    while side > limit and side % 2 == 0:
        side //= 2
    return side


class _UpBlock(nn.Sequential):
    """``ConvTranspose2d(4, stride 2)`` (x2 upsampling) → LeakyReLU → ``Conv2d(3)`` → LeakyReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                         nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1),
                         nn.LeakyReLU(0.2, inplace=True))


class UpConvInverter(nn.Module):
    r"""An up-convolutional decoder from a layer's representation back to images.

    The architecture follows the code's shape (Dosovitskiy & Brox 2016): a
    spatial code ``(C, h, w)`` goes through a 3x3 conv at its own resolution,
    then one x2 up-convolution block (``ConvTranspose2d`` + 3x3 conv, LeakyReLU)
    per octave between ``h`` and the image height but the last, halving the
    width of the blocks each time, and a last x2 up-convolution straight to the
    image's channels (a 3x3 conv when the code has the image's size); a flat code
    ``(D,)`` (a fully connected layer) is first mapped by a linear layer to a
    ``(width, 4, 4)`` volume (or the image size halved to at most 4). When the
    sizes are not related by powers of two, the last map is resized to the
    image size bilinearly. The output is ``lo + (hi - lo) * sigmoid(z)`` with
    ``lo`` / ``hi`` the per-channel pixel range of the training data, so a
    decoded image is always a valid input of the model.

    No batch normalization: an image depends on its own code only, so the
    generator prior of activation maximization is the same whether objectives
    run alone or in a batch.

    Buffers recorded by :func:`train_inverter` on real data: ``code_lo`` /
    ``code_hi`` (per-dimension min and max of the codes), ``code_mean`` and
    ``code_std`` (per dimension), ``pixel_lo`` / ``pixel_hi`` (per channel).

    Args:
        layer: name of the layer whose output is inverted (``named_modules()`` name).
        code_shape: the shape of that output for one image, ``(C, h, w)`` or ``(D,)``.
        image_shape: ``(C, H, W)`` of the model's input.
        width: channels of the first decoder stage (default: twice the code's
            channels, between 32 and 256). Later stages halve it, down to 16.

    Shape:
        - Input: ``(N, *code_shape)``.
        - Output: ``(N, *image_shape)``.

    Example:
        >>> inv = UpConvInverter("conv2", (32, 8, 8), (3, 32, 32))
        >>> inv(torch.rand(5, 32, 8, 8)).shape
        torch.Size([5, 3, 32, 32])
    """

    def __init__(self, layer: str, code_shape: Sequence[int], image_shape: Sequence[int], *,
                 width: Optional[int] = None):
        super().__init__()
        if not isinstance(layer, str) or not layer:
            raise TypeError(f"layer: expected a layer name (str), got {layer!r}")
        code_shape = _shape(code_shape, "code_shape")
        image_shape = _shape(image_shape, "image_shape")
        if len(code_shape) not in (1, 3):
            raise ValueError(f"code_shape: expected (C, h, w) or (D,), got {code_shape}")
        if len(image_shape) != 3:
            raise ValueError(f"image_shape: expected (C, H, W), got {image_shape}")
        self.layer = layer
        self.code_shape = code_shape
        self.image_shape = image_shape
        c_img, H, W = image_shape
        if width is None:
            width = min(256, max(32, 2 * code_shape[0]))
        width = int(width)
        if width <= 0:
            raise ValueError(f"width: expected a positive int, got {width}")
        self.width = width

        if len(code_shape) == 1:
            h0, w0 = _start_side(H), _start_side(W)
            self.stem = nn.Sequential(nn.Linear(code_shape[0], width * h0 * w0),
                                      nn.LeakyReLU(0.2, inplace=True),
                                      nn.Unflatten(1, (width, h0, w0)))
        else:
            c, h0, w0 = code_shape
            self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1),
                                      nn.LeakyReLU(0.2, inplace=True))
        ups = max(0, math.ceil(math.log2(max(H / h0, W / w0))))
        blocks: List[nn.Module] = []
        c = width
        for _ in range(ups - 1):
            c_next = max(16, c // 2)
            blocks.append(_UpBlock(c, c_next))
            c = c_next
        self.up = nn.Sequential(*blocks)
        # The last octave is one up-convolution straight to the image's channels: no
        # full-resolution hidden maps, which are most of a decoder's cost.
        self.head = (nn.ConvTranspose2d(c, c_img, 4, stride=2, padding=1) if ups
                     else nn.Conv2d(c, c_img, 3, padding=1))
        self._ups = ups
        self._out_size = (h0 * 2 ** ups, w0 * 2 ** ups)

        self.register_buffer("code_lo", torch.zeros(code_shape))
        self.register_buffer("code_hi", torch.ones(code_shape))
        self.register_buffer("code_mean", torch.zeros(code_shape))
        self.register_buffer("code_std", torch.ones(code_shape))
        self.register_buffer("pixel_lo", torch.zeros(c_img))
        self.register_buffer("pixel_hi", torch.ones(c_img))
        self.register_buffer("trained_on", torch.zeros((), dtype=torch.long))  # images seen
        self.history: Dict[str, List[float]] = {}

    @property
    def depth(self) -> int:
        """Number of x2 up-convolutions (octaves between the code and the image)."""
        return self._ups

    def decode_logits(self, code: Tensor) -> Tensor:
        """The pre-sigmoid output ``z`` (``(N, *image_shape)``)."""
        z = self.head(self.up(self.stem(code)))
        if tuple(z.shape[-2:]) != tuple(self.image_shape[1:]):
            z = F.interpolate(z, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return z

    def forward(self, code: Tensor) -> Tensor:
        if code.dim() != 1 + len(self.code_shape) or tuple(code.shape[1:]) != self.code_shape:
            raise ValueError(f"code: expected shape (N, {', '.join(map(str, self.code_shape))}) "
                             f"(the output of {self.layer!r}), got {tuple(code.shape)}")
        lo = self.pixel_lo.view(1, -1, 1, 1).to(code.dtype)
        hi = self.pixel_hi.view(1, -1, 1, 1).to(code.dtype)
        return lo + (hi - lo) * torch.sigmoid(self.decode_logits(code))

    def extra_repr(self) -> str:
        return (f"layer={self.layer!r}, code_shape={self.code_shape}, "
                f"image_shape={self.image_shape}, width={self.width}")

    # ------------------------------------------------------------------ model checks
    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error unless ``model``'s ``layer`` gives codes of this inverter's shape.

        Raises:
            KeyError: ``model`` has no layer called ``self.layer``.
            ValueError: the layer's output shape (for images of ``image_shape``) differs.
        """
        check_model(model)
        get_layer(model, self.layer)
        shape = layer_output_shape(model, self.layer, self.image_shape)
        if shape != self.code_shape:
            raise ValueError(f"model: the inverter was trained on layer {self.layer!r} with output "
                             f"shape {self.code_shape} for {self.image_shape} images, but this "
                             f"model's {self.layer!r} gives {shape}; train an inverter for this "
                             "model (train_inverter / `cnnvis train-inverter`)")

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the inverter (layer name, shapes, weights, recorded ranges) atomically.

        The file is a plain dict saved with :func:`torch.save`, loadable with
        ``weights_only=True``; it is written to a temporary file in the same
        folder and moved into place with :func:`os.replace`.
        """
        obj = {"format": INVERTER_FORMAT, "layer": self.layer, "code_shape": list(self.code_shape),
               "image_shape": list(self.image_shape), "width": self.width,
               "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
               "history": {k: list(map(float, v)) for k, v in self.history.items()}}
        return atomic_save(obj, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu",
             model: Optional[nn.Module] = None) -> "UpConvInverter":
        """Load a file written by :meth:`save` (in eval mode on ``map_location``).

        Args:
            path: the file.
            map_location: device to load onto.
            model: if given, check that its layer matches (see :meth:`check_model`).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an inverter file, or ``model`` does not match.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"inverter: no such file: {str(path)!r}")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"inverter: {str(path)!r} is not a cnnvis_ext inverter file "
                             f"({type(e).__name__})") from None
        if not (isinstance(obj, dict) and obj.get("format") == INVERTER_FORMAT):
            raise ValueError(f"inverter: {str(path)!r} is not a cnnvis_ext inverter file (written "
                             "by UpConvInverter.save / `cnnvis train-inverter`)")
        inv = cls(obj["layer"], obj["code_shape"], obj["image_shape"], width=obj["width"])
        inv.load_state_dict(obj["state_dict"])
        inv.history = {k: list(v) for k, v in obj.get("history", {}).items()}
        inv.to(map_location).eval()
        if model is not None:
            inv.check_model(model)
        return inv


def layer_output_shape(model: nn.Module, layer: str, image_shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape of ``layer``'s output for one image of ``image_shape`` (batch dim dropped)."""
    device, dtype = model_device_dtype(model)
    x = torch.zeros(1, *image_shape, device=device, dtype=dtype)
    with eval_mode(model), torch.no_grad():
        a = forward_until(model, x, [layer])[layer]
    return tuple(a.shape[1:])


# ---------------------------------------------------------------------- data

def _first_tensor(item, what: str = "data") -> Tensor:
    if isinstance(item, Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0]
    if isinstance(item, dict):
        for key in ("image", "images", "x", "input", "pixel_values"):
            if isinstance(item.get(key), Tensor):
                return item[key]
    raise TypeError(f"{what}: expected image tensors (or (image, label) pairs), got "
                    f"{type(item).__name__}")


class _Source:
    """Re-iterable batches of images from a tensor, a DataSplit, a Dataset or an iterable."""

    def __init__(self, data, batch_size: int):
        self.batch_size = batch_size
        self.tensor: Optional[Tensor] = None
        self.dataset = None
        self.iterable = None
        if isinstance(getattr(data, "train_images", None), Tensor):  # a cnnvis_ext.data.DataSplit
            data = data.train_images
        if isinstance(data, Tensor):
            if data.dim() == 3:
                data = data.unsqueeze(0)
            if data.dim() != 4:
                raise ValueError(f"data: expected images (N, C, H, W), got shape "
                                 f"{tuple(data.shape)}")
            if len(data) == 0:
                raise ValueError("data: no images")
            self.tensor = data
        elif (not isinstance(data, (list, tuple)) and hasattr(data, "__getitem__")
              and hasattr(data, "__len__")):
            if len(data) == 0:
                raise ValueError("data: the dataset is empty")
            self.dataset = data
        elif isinstance(data, Iterable):  # a list of batches, a DataLoader, ...
            if iter(data) is data:
                raise TypeError("data: a one-shot iterator can be read only once; pass a tensor, "
                                "a Dataset or a re-iterable (a list of batches, a DataLoader)")
            self.iterable = data
        else:
            raise TypeError(f"data: expected a tensor of images, a Dataset or an iterable of "
                            f"batches, got {type(data).__name__}")

    def batches(self, generator: Optional[torch.Generator] = None) -> Iterator[Tensor]:
        """Yield image batches; shuffled when ``generator`` is given (tensor / Dataset)."""
        bs = self.batch_size
        if self.tensor is not None:
            n = len(self.tensor)
            order = torch.randperm(n, generator=generator) if generator is not None else None
            for i in range(0, n, bs):
                yield self.tensor[order[i:i + bs]] if order is not None else self.tensor[i:i + bs]
        elif self.dataset is not None:
            n = len(self.dataset)
            order = (torch.randperm(n, generator=generator) if generator is not None
                     else torch.arange(n)).tolist()
            for i in range(0, n, bs):
                items = [_first_tensor(self.dataset[j]) for j in order[i:i + bs]]
                yield torch.stack([t if t.dim() == 3 else t.squeeze(0) for t in items])
        else:
            for item in self.iterable:
                t = _first_tensor(item)
                yield t.unsqueeze(0) if t.dim() == 3 else t


def _check_batch(x: Tensor, channels: int, image_shape: Optional[Tuple[int, ...]]) -> None:
    if x.dim() != 4:
        raise ValueError(f"data: expected image batches (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"data: expected floating-point images, got dtype {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"data: expected images with {channels} channels (the model's input), "
                         f"got {x.shape[1]} (shape {tuple(x.shape)})")
    if image_shape is not None and tuple(x.shape[1:]) != image_shape:
        raise ValueError(f"data: every image must have the shape {image_shape}, got "
                         f"{tuple(x.shape[1:])}")


# ---------------------------------------------------------------------- training

def train_inverter(model: nn.Module, layer: str, data, *, epochs: int = 10,
                   batch_size: int = 64, lr: float = 2e-3, loss: str = "pixel",
                   feature_weight: float = 1.0, width: Optional[int] = None,
                   device: Union[str, torch.device, None] = None, seed: int = 0,
                   cache_codes: Optional[bool] = None, progress: Optional[bool] = None,
                   log=None) -> UpConvInverter:
    r"""Train an :class:`UpConvInverter` that maps ``phi_layer(x)`` back to ``x`` for a frozen ``model``.

    The model runs in eval mode and is never changed (its parameters get no
    ``.grad``). A first pass over the data records the per-channel pixel range
    and the per-dimension range, mean and standard deviation of the codes
    (the clipping range of the generator prior); then the decoder is trained
    with Adam and a cosine learning-rate decay, on shuffled batches.

    Args:
        model: the frozen network, on ``device``.
        layer: the layer to invert (``named_modules()`` name).
        data: training images: an ``(N, C, H, W)`` tensor, a
            :class:`~cnnvis_ext.data.DataSplit` (its training images), a
            ``Dataset`` of images or ``(image, label)`` pairs, or a re-iterable of
            such batches (a ``DataLoader``). Images are in the model's input space.
        epochs: passes over the data.
        batch_size: images per step (tensor and Dataset data).
        lr: peak learning rate of Adam.
        loss: ``"pixel"`` (MSE to the image) or ``"pixel+feature"`` (plus
            ``feature_weight`` times ``||phi(inverter(phi(x))) - phi(x)||^2``
            normalized by the mean ``||phi(x)||^2``).
        feature_weight: weight of the feature term.
        width: channels of the decoder's first stage (see :class:`UpConvInverter`).
        device: where to train (default and requirement: the model's device).
        seed: seeds the decoder's initial weights and the shuffling.
        cache_codes: keep the codes of the first pass and train on them instead of
            running the frozen model on every batch (the model is deterministic in
            eval mode, so the result is the same). ``None``: when ``data`` is a
            tensor, the loss is ``"pixel"`` and the codes take at most 1 GiB.
        progress: tqdm bar over steps (``None``: only for long runs on a terminal).
        log: called with one line per epoch (``None``: silent).

    Returns:
        The trained inverter in eval mode on ``device``; ``inverter.history``
        holds the mean loss and the wall time of each epoch.

    Raises:
        KeyError: ``layer`` is not a layer of ``model``.
        ValueError: images with a channel count other than the model's input, bad
            arguments.

    Example:
        >>> data = load_dataset()                      # the bundled digits
        >>> inv = train_inverter(model, "conv2", data.train_images, epochs=5)
        >>> rec = invert_learned(inv, model, data.test_images[:8])
    """
    check_model(model)
    get_layer(model, layer)
    if loss not in _LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(repr(l) for l in _LOSSES)}, got {loss!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
            raise ValueError(f"{name}: expected {'a non-negative' if name == 'epochs' else 'a positive'}"
                             f" int, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if not feature_weight >= 0:
        raise ValueError(f"feature_weight: expected a non-negative number, got {feature_weight!r}")
    m_device, dtype = model_device_dtype(model)
    device = m_device if device is None else torch.device(device)
    if device.type != m_device.type or (device.index is not None and m_device.index is not None
                                        and device.index != m_device.index):
        raise ValueError(f"device: the model is on {m_device}; move it to {device} first (the "
                         "frozen model and the inverter train on the same device)")
    channels = input_channels(model)
    src = _Source(data, batch_size)

    with eval_mode(model):
        # ---- pass 1: shapes and ranges of pixels and codes on real data
        image_shape = None
        n = 0
        stats = None
        if cache_codes is None:
            cache_codes = src.tensor is not None and loss == "pixel"
        if cache_codes and src.tensor is None:
            raise ValueError("cache_codes: needs data given as a tensor of images")
        cached: List[Tensor] = []
        with torch.no_grad():
            for xb in src.batches():
                _check_batch(xb, channels, image_shape)
                image_shape = tuple(xb.shape[1:])
                xb = xb.to(device=device, dtype=dtype)
                code = forward_until(model, xb, [layer])[layer]
                if cache_codes:
                    cached.append(code)
                    if sum(t.numel() * t.element_size() for t in cached) > (1 << 30):
                        if loss == "pixel" and src.tensor is not None:
                            cache_codes, cached = False, []  # auto mode: too big, recompute
                code = code.double()
                px = xb.transpose(0, 1).flatten(1)
                cur = (code.amin(0), code.amax(0), code.sum(0), code.pow(2).sum(0),
                       px.amin(1), px.amax(1))
                if stats is None:
                    stats = list(cur)
                else:
                    stats = [torch.minimum(stats[0], cur[0]), torch.maximum(stats[1], cur[1]),
                             stats[2] + cur[2], stats[3] + cur[3],
                             torch.minimum(stats[4], cur[4]), torch.maximum(stats[5], cur[5])]
                n += len(xb)
        if n == 0:
            raise ValueError("data: no images")
        code_shape = tuple(stats[0].shape)
        g_init = torch.Generator().manual_seed(int(seed))
        inv = UpConvInverter(layer, code_shape, image_shape, width=width)
        with torch.no_grad():  # seeded init, independent of the global RNG
            for p in inv.parameters():
                if p.dim() > 1:
                    nn.init.kaiming_uniform_(p, a=0.2, generator=g_init)
                else:
                    p.zero_()
            mean = stats[2] / n
            var = (stats[3] / n - mean.pow(2)).clamp_min(0)
            inv.code_lo.copy_(stats[0])
            inv.code_hi.copy_(stats[1])
            inv.code_mean.copy_(mean)
            inv.code_std.copy_(var.sqrt())
            lo, hi = stats[4].float(), stats[5].float()
            hi = torch.where(hi > lo, hi, lo + 1)
            inv.pixel_lo.copy_(lo)
            inv.pixel_hi.copy_(hi)
            inv.trained_on.fill_(n)
        inv.to(device=device, dtype=dtype)

        # ---- training
        steps_per_epoch = math.ceil(n / batch_size) if src.iterable is None else None
        total = (epochs * steps_per_epoch) if steps_per_epoch else None
        opt = torch.optim.Adam(inv.parameters(), lr=lr)
        sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total,
                                                     pct_start=0.15) if total else None)
        g_shuffle = torch.Generator().manual_seed(int(seed) + 1)
        codes_all = torch.cat(cached) if cache_codes and cached else None
        del cached
        params = list(inv.parameters())
        history: Dict[str, List[float]] = {"loss": [], "pixel_mse": [], "seconds": []}
        lo4, hi4 = inv.pixel_lo.view(1, -1, 1, 1), inv.pixel_hi.view(1, -1, 1, 1)
        inv.train()
        for epoch in range(epochs):
            t0 = time.perf_counter()
            tot_loss = tot_mse = 0.0
            seen = 0
            if codes_all is not None:
                order = torch.randperm(n, generator=g_shuffle).to(codes_all.device)
                batches = ((src.tensor[order[i:i + batch_size].to(src.tensor.device)],
                            codes_all[order[i:i + batch_size]]) for i in range(0, n, batch_size))
            else:
                batches = ((xb, None) for xb in src.batches(g_shuffle))
            it = progress_bar(batches, steps_per_epoch or 0, progress,
                              f"inverter {layer} epoch {epoch + 1}/{epochs}", long_after=500)
            for xb, code in it:
                _check_batch(xb, channels, image_shape)
                xb = xb.to(device=device, dtype=dtype)
                if code is None:
                    with torch.no_grad():
                        code = forward_until(model, xb, [layer])[layer]
                rec = lo4 + (hi4 - lo4) * torch.sigmoid(inv.decode_logits(code))
                mse = F.mse_loss(rec, xb)
                total_loss = mse
                if loss == "pixel+feature" and feature_weight:
                    phi_rec = forward_until(model, rec, [layer])[layer]
                    denom = code.pow(2).mean().clamp_min(torch.finfo(dtype).tiny)
                    total_loss = total_loss + feature_weight * F.mse_loss(phi_rec, code) / denom
                opt.zero_grad(set_to_none=True)
                total_loss.backward(inputs=params)
                opt.step()
                if sched is not None:
                    sched.step()
                tot_loss += total_loss.item() * len(xb)
                tot_mse += mse.item() * len(xb)
                seen += len(xb)
            history["loss"].append(tot_loss / max(seen, 1))
            history["pixel_mse"].append(tot_mse / max(seen, 1))
            history["seconds"].append(time.perf_counter() - t0)
            if log is not None:
                log(f"inverter {layer} epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.5f} "
                    f"(pixel MSE {history['pixel_mse'][-1]:.5f}, {history['seconds'][-1]:.1f}s)")
        inv.eval()
    inv.history = history
    return inv


# ---------------------------------------------------------------------- inference

def invert_learned(inverter: UpConvInverter, model: nn.Module, images: Tensor, *,
                   batch_size: Optional[int] = None, check: bool = True) -> Tensor:
    r"""Reconstruct ``images`` from their representation at ``inverter.layer``, in one forward pass.

    Args:
        inverter: a trained :class:`UpConvInverter` (see :func:`train_inverter`).
        model: the network it was trained for.
        images: ``(C, H, W)`` or ``(N, C, H, W)`` in the model's input space.
        batch_size: images per forward pass (default: all at once).
        check: verify that ``model``'s layer has the inverter's shape.

    Returns:
        Reconstructions of the same shape as ``images``, on the model's device.

    Raises:
        ValueError: images of another channel count or size than the inverter's,
            or a model whose layer shape differs.

    Example:
        >>> rec = invert_learned(inv, model, data.test_images)   # thousands per second
    """
    if not isinstance(inverter, UpConvInverter):
        raise TypeError(f"inverter: expected an UpConvInverter, got {type(inverter).__name__}")
    check_model(model)
    if not isinstance(images, Tensor):
        raise TypeError(f"images: expected a Tensor, got {type(images).__name__}")
    one = images.dim() == 3
    x = images.unsqueeze(0) if one else images
    if x.dim() != 4:
        raise ValueError(f"images: expected (C, H, W) or (N, C, H, W), got shape "
                         f"{tuple(images.shape)}")
    if x.shape[1] != inverter.image_shape[0]:
        raise ValueError(f"images: expected {inverter.image_shape[0]} channels (the inverter's "
                         f"input images {inverter.image_shape}), got {x.shape[1]}")
    if tuple(x.shape[2:]) != inverter.image_shape[1:]:
        raise ValueError(f"images: expected {inverter.image_shape[1]}x{inverter.image_shape[2]} "
                         f"images (the inverter's), got {x.shape[2]}x{x.shape[3]}")
    if check:
        inverter.check_model(model)
    device, dtype = model_device_dtype(model)
    x = x.to(device=device, dtype=dtype)
    bs = len(x) if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    outs = []
    with eval_mode(model), eval_mode(inverter), torch.no_grad():
        for i in range(0, len(x), bs):
            code = forward_until(model, x[i:i + bs], [inverter.layer])[inverter.layer]
            outs.append(inverter(code.to(inverter.code_lo.dtype)).to(dtype))
    rec = torch.cat(outs) if outs else x.new_empty(x.shape)
    return rec[0] if one else rec
