"""Training and evaluation of the example network, and its checkpoints.

A checkpoint is a plain dict saved with :func:`torch.save` (loadable with
``weights_only=True``): the network's constructor arguments, its
``state_dict``, the class names, the data set's description and the training
history. :func:`save_checkpoint` writes it atomically (a temporary file in the
same folder, then :func:`os.replace`), so an interrupted run never leaves a
half-written checkpoint behind.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DataSplit
from ._modules import state_dict_mismatch
from .io import atomic_write_bytes
from .models import cifar_cnn

__all__ = ["TrainConfig", "train", "evaluate", "predict", "confusion_matrix", "save_checkpoint",
           "load_checkpoint", "atomic_write_bytes", "CHECKPOINT_FORMAT"]

#: The ``format`` entry of a checkpoint written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "cnnvis_ext.checkpoint/1"


class TrainConfig(dict):
    """Hyper-parameters of :func:`train` (a dict, so it goes into checkpoints as is).

    Keys: ``epochs`` (12), ``batch_size`` (32), ``lr`` (peak learning rate of
    Adam with a one-cycle schedule, 3e-3), ``weight_decay`` (1e-4),
    ``augment`` (random shifts of up to this many pixels, 2), ``seed`` (0).
    """

    DEFAULTS = dict(epochs=12, batch_size=32, lr=3e-3, weight_decay=1e-4, augment=2, seed=0)

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"TrainConfig: unknown keys {sorted(unknown)}; "
                            f"valid keys: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **{k: v for k, v in kwargs.items() if v is not None}})
        if int(self["epochs"]) < 0:
            raise ValueError(f"epochs: expected an int >= 0, got {self['epochs']!r}")
        if int(self["batch_size"]) <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {self['batch_size']!r}")
        if not self["lr"] > 0:
            raise ValueError(f"lr: expected a positive float, got {self['lr']!r}")


def _random_shift(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels (zero fill): cheap translation augmentation."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Class predictions (``argmax`` of the logits) of ``model`` for ``images``, on the CPU."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        preds = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``(images, labels)``, in ``[0, 1]``."""
    if len(labels) == 0:
        return float("nan")
    return (predict(model, images, batch_size) == labels.cpu()).float().mean().item()


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, num_classes)`` int64 counts; row = true class, column = predicted class."""
    idx = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def train(model: nn.Module, data: DataSplit, config: Optional[TrainConfig] = None, *,
          device: Union[str, torch.device, None] = None, progress: bool = True,
          log=print) -> Dict[str, List[float]]:
    """Train ``model`` on ``data.train_*`` with cross-entropy; evaluate on ``data.test_*`` every epoch.

    Adam with a one-cycle learning-rate schedule, seeded shuffling and
    random-shift augmentation; the model ends in eval mode.

    Args:
        model: the network (moved to ``device``).
        data: the :class:`~cnnvis_ext.data.DataSplit`.
        config: a :class:`TrainConfig` (defaults if ``None``).
        device: where to train (default: the model's device).
        progress: show a progress bar per epoch.
        log: called with one line per epoch (``None``: silent).

    Returns:
        The history: lists ``train_loss``, ``train_acc``, ``test_acc`` (one
        entry per epoch) and ``seconds`` (wall time of each epoch).
    """
    config = TrainConfig() if config is None else config
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    epochs, bs = int(config["epochs"]), int(config["batch_size"])
    g = torch.Generator().manual_seed(int(config["seed"]))
    x_train, y_train = data.train_images, data.train_labels
    n = len(y_train)
    if n == 0:
        raise ValueError("data: the training set is empty")
    steps_per_epoch = math.ceil(n / bs)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"],
                           weight_decay=config["weight_decay"])
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"], epochs=epochs,
                                                 steps_per_epoch=steps_per_epoch)
             if epochs else None)
    history: Dict[str, List[float]] = {"train_loss": [], "train_acc": [], "test_acc": [],
                                       "seconds": []}
    from tqdm.auto import tqdm

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=g)
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", unit="batch",
                   leave=False, disable=not progress)
        for step in bar:
            idx = perm[step * bs:(step + 1) * bs]
            xb = _random_shift(x_train[idx], int(config["augment"]), g).to(device)
            yb = y_train[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        model.eval()
        test_acc = evaluate(model, data.test_images, data.test_labels)
        history["train_loss"].append(loss_sum / n)
        history["train_acc"].append(correct / n)
        history["test_acc"].append(test_acc)
        history["seconds"].append(time.perf_counter() - t0)
        if log is not None:
            log(f"epoch {epoch}/{epochs}: loss {loss_sum / n:.4f}  train acc {correct / n:.2%}  "
                f"test acc {test_acc:.2%}  ({history['seconds'][-1]:.1f}s)")
    model.eval()
    return history


def save_checkpoint(path: Union[str, os.PathLike], model: nn.Module, *,
                    model_kwargs: Dict[str, Any], classes: List[str],
                    history: Optional[Dict[str, List[float]]] = None,
                    config: Optional[Dict[str, Any]] = None, data: str = "",
                    test_acc: Optional[float] = None) -> Path:
    """Save the example network and what is needed to rebuild it, atomically.

    Args:
        path: file to write (its folder is created).
        model: a network built by ``cifar_cnn(**model_kwargs)``.
        model_kwargs: the keyword arguments of :func:`~cnnvis_ext.models.cifar_cnn`.
        classes: class names.
        history: training history from :func:`train`.
        config: the :class:`TrainConfig` used.
        data: description of the training data.
        test_acc: final test accuracy.

    Returns:
        The path written.
    """
    import io

    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": "cifar_cnn",
        "model_kwargs": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in model_kwargs.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "history": dict(history or {}),
        "config": dict(config or {}),
        "data": str(data),
        "test_acc": test_acc,
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu"
                    ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model, checkpoint)``: the rebuilt network in eval mode on
        ``map_location``, and the checkpoint dict (``classes``, ``history``, ...).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a cnnvis_ext checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise ValueError(f"checkpoint: {str(path)!r} is not a cnnvis_ext checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not is_checkpoint(ckpt):
        raise ValueError(f"checkpoint: {str(path)!r} is not a cnnvis_ext checkpoint "
                         "(written by `cnnvis train` / save_checkpoint)")
    kwargs = dict(ckpt["model_kwargs"])
    if "channels" in kwargs:
        kwargs["channels"] = tuple(kwargs["channels"])
    model = cifar_cnn(**kwargs)
    bad = state_dict_mismatch(model, ckpt["state_dict"])
    if bad:
        raise ValueError(f"checkpoint: {str(path)!r} does not fit the network its own settings "
                         f"describe ({kwargs}): {bad}")
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location).eval()
    return model, ckpt


def is_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded file) is a checkpoint of :func:`save_checkpoint`."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT
