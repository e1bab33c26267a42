"""Data for the example network: the bundled handwritten digits, or a folder of images.

Nothing here touches the network. The default data set is shipped inside the
package (``cnnvis_ext/assets/digits.npz``); a user data set is a local folder.

The digits are the UCI ML hand-written digits test set as bundled with
scikit-learn (``sklearn.datasets.load_digits``: 1,797 images of 8×8 pixels
with values 0..16, classes 0-9). scikit-learn is distributed under the BSD
3-Clause license (Copyright (c) 2007-2024 The scikit-learn developers); the
data were extracted once into ``digits.npz`` (arrays ``images`` uint8
(1797, 8, 8) and ``labels`` uint8 (1797,)), so scikit-learn is not needed at
run time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DataSplit", "load_digits", "load_image_folder", "load_image_files", "load_dataset",
           "split_indices", "IMAGE_EXTENSIONS", "DIGITS_PATH"]

#: Where the bundled digits live.
DIGITS_PATH = Path(__file__).resolve().parent / "assets" / "digits.npz"

#: File extensions read by :func:`load_image_folder` (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass
class DataSplit:
    """Images and labels of a fixed train/test split.

    Attributes:
        train_images: ``(N_train, C, H, W)`` float32 in ``[0, 1]``.
        train_labels: ``(N_train,)`` int64.
        test_images: ``(N_test, C, H, W)`` float32 in ``[0, 1]``.
        test_labels: ``(N_test,)`` int64.
        classes: class names; label ``i`` is ``classes[i]``.
        name: a short description of where the data came from.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: List[str] = field(default_factory=list)
    name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"DataSplit({self.name!r}, train={len(self.train_labels)}, "
                f"test={len(self.test_labels)}, image_shape={self.image_shape}, "
                f"classes={len(self.classes)})")


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > size).clamp_(0, 1)


def _check_size_channels(size: int, channels: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")


def load_digits(size: int = 32, channels: int = 3) -> Tuple[Tensor, Tensor]:
    """The 1,797 bundled 8×8 handwritten digits, scaled to ``size``×``size``.

    Pixel values 0..16 are mapped to ``[0, 1]`` (white strokes on black),
    upsampled bilinearly and repeated to ``channels`` channels.

    Args:
        size: output width and height (``32`` to match CIFAR-10).
        channels: ``3`` (RGB, the default) or ``1``.

    Returns:
        ``(images, labels)``: ``(1797, channels, size, size)`` float32 in
        ``[0, 1]`` and ``(1797,)`` int64 labels in ``0..9``.
    """
    _check_size_channels(size, channels)
    with np.load(DIGITS_PATH) as z:
        images = torch.from_numpy(z["images"].astype(np.float32) / 16.0)
        labels = torch.from_numpy(z["labels"].astype(np.int64))
    images = _resize(images.unsqueeze(1), size)
    return images.expand(-1, channels, -1, -1).contiguous(), labels


def split_indices(labels: Tensor, test_fraction: float = 0.2, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """A stratified, seeded train/test split: ``(train_idx, test_idx)``, each sorted.

    Every class contributes ``round(test_fraction * count)`` test samples
    (at least one when the class has two or more samples).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _read_image(path: Path, size: int, channels: int) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image: cannot read {str(path)!r} as an image ({e})") from None
    t = torch.from_numpy(arr.copy()).float().div_(255)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def load_image_files(paths: Sequence[Union[str, os.PathLike]], size: int = 32,
                     channels: int = 3) -> Tensor:
    """Read image files (PNG/JPEG, anything Pillow opens) into an ``(N, C, size, size)`` batch in [0, 1]."""
    _check_size_channels(size, channels)
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"image: no such file: {str(p)!r}")
        out.append(_read_image(p, size, channels))
    if not out:
        return torch.empty(0, channels, size, size)
    return torch.stack(out)


def _class_folders(root: Path) -> List[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def load_image_folder(root: Union[str, os.PathLike], size: int = 32, channels: int = 3,
                      classes: Optional[Sequence[str]] = None, progress: bool = False
                      ) -> Tuple[Tensor, Tensor, List[str]]:
    """Read a folder of class sub-folders (``root/<class>/<image>.png``), like torchvision's ImageFolder.

    Class names are the sub-folder names in sorted order; images are PNG or
    JPEG files (other files are ignored), converted to RGB (or grey) and
    resized to ``size``×``size`` with Pillow.

    Args:
        root: the folder.
        size: output width and height.
        channels: 3 or 1.
        classes: use these class names (and label order) instead of the sorted
            sub-folders; a sub-folder missing from the list is an error.
        progress: show a progress bar.

    Returns:
        ``(images, labels, classes)``.
    """
    _check_size_channels(size, channels)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data: no such folder: {str(root)!r}")
    if not root.is_dir():
        raise NotADirectoryError(f"data: {str(root)!r} is not a folder (expected a folder of "
                                 "class sub-folders of PNG/JPEG images)")
    folders = _class_folders(root)
    if not folders:
        raise ValueError(f"data: {str(root)!r} has no class sub-folders (expected "
                         f"{root}/<class>/<image>.png)")
    names = [d.name for d in folders]
    if classes is None:
        classes = names
    else:
        classes = list(classes)
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(f"data: class folders {unknown} in {str(root)!r} are not among "
                             f"the classes {classes}")
    files: List[Tuple[Path, int]] = []
    for d in folders:
        label = classes.index(d.name)
        files += [(f, label) for f in sorted(d.iterdir())
                  if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ValueError(f"data: no PNG/JPEG images found under {str(root)!r}")
    it = files
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(files, desc=f"reading {root.name}", unit="img", leave=False)
    images = torch.stack([_read_image(f, size, channels) for f, _ in it])
    labels = torch.tensor([lab for _, lab in files], dtype=torch.int64)
    return images, labels, list(classes)


def load_dataset(data_dir: Optional[Union[str, os.PathLike]] = None, *, size: int = 32,
                 channels: int = 3, test_fraction: float = 0.2, seed: int = 0,
                 progress: bool = False) -> DataSplit:
    """The data a ``cnnvis`` command works on, as a fixed train/test split.

    Args:
        data_dir: ``None`` for the bundled digits; otherwise a folder of class
            sub-folders, or a folder holding ``train/`` and ``test/`` folders of
            class sub-folders (then that split is used as is).
        size: image width and height after resizing.
        channels: 3 or 1.
        test_fraction: share of each class held out for testing (ignored when
            the folder has its own ``train/`` and ``test/``).
        seed: seed of the split (the default split is fixed: seed 0).
        progress: show a progress bar while reading image files.

    Returns:
        A :class:`DataSplit`.
    """
    if data_dir is None:
        images, labels = load_digits(size, channels)
        tr, te = split_indices(labels, test_fraction, seed)
        return DataSplit(images[tr], labels[tr], images[te], labels[te],
                         [str(i) for i in range(10)], "digits (scikit-learn, 8x8 scaled to "
                         f"{size}x{size})")
    root = Path(data_dir)
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr_x, tr_y, classes = load_image_folder(root / "train", size, channels, progress=progress)
        te_x, te_y, _ = load_image_folder(root / "test", size, channels, classes=classes,
                                          progress=progress)
        return DataSplit(tr_x, tr_y, te_x, te_y, classes, str(root))
    images, labels, classes = load_image_folder(root, size, channels, progress=progress)
    tr, te = split_indices(labels, test_fraction, seed)
    return DataSplit(images[tr], labels[tr], images[te], labels[te], classes, str(root))
