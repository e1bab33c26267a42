"""The example network, the bundled data, training and checkpoints."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis_ext.data import (DataSplit, load_dataset, load_digits, load_image_files,
                             load_image_folder, split_indices)
from cnnvis_ext.models import cifar_cnn
from cnnvis_ext.nn import ConvReLUPool2d
from cnnvis_ext.train import (TrainConfig, confusion_matrix, evaluate, load_checkpoint, predict,
                              save_checkpoint, train)


# --------------------------------------------------------------------------- model

def test_simplest_network_of_the_survey():
    # INPUT 32x32x3 -> CONV 12 filters (32x32x12) -> RELU -> POOL (16x16x12) -> FC (1x1x10)
    net = cifar_cnn(channels=(12,), hidden=None)
    assert [n for n, _ in net.named_children()] == ["conv1", "flatten", "fc"]
    conv = net.conv1
    assert isinstance(conv, ConvReLUPool2d)
    x = torch.rand(2, 3, 32, 32)
    pre_pool = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=conv.padding)
    assert pre_pool.shape == (2, 12, 32, 32)
    assert conv(x).shape == (2, 12, 16, 16)
    assert net.fc.in_features == 16 * 16 * 12
    assert net(x).shape == (2, 10)


def test_default_network_matches_unfused_composition():
    net = cifar_cnn()
    assert [n for n, _ in net.named_children()] == ["conv1", "conv2", "conv3", "flatten", "fc1",
                                                     "relu", "fc2"]
    layers = []
    for m in net:
        if isinstance(m, ConvReLUPool2d):
            c = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding)
            c.weight.data.copy_(m.weight)
            c.bias.data.copy_(m.bias)
            layers += [c, nn.ReLU(), nn.MaxPool2d(2)]
        else:
            layers.append(m)
    plain = nn.Sequential(*layers)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(net(x), plain(x))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=()), "channels"),
    (dict(channels=(0,)), "channels"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(input_size=30), "input_size"),
    (dict(num_classes=0), "num_classes"),
    (dict(hidden=-1), "hidden"),
    (dict(dropout=1.0), "dropout"),
])
def test_cifar_cnn_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cifar_cnn(**kwargs)


def test_cifar_cnn_options():
    net = cifar_cnn(5, in_channels=1, input_size=16, channels=(4, 8), kernel_size=5, hidden=None,
                    dropout=0.5)
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 5)


# --------------------------------------------------------------------------- data

def test_bundled_digits():
    x, y = load_digits()
    assert x.shape == (1797, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 2])
    assert sorted(torch.bincount(y).tolist())[0] >= 170  # ~180 per class
    g, _ = load_digits(size=8, channels=1)
    assert g.shape == (1797, 1, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        load_digits(channels=2)
    with pytest.raises(ValueError, match="size"):
        load_digits(size=0)


def test_split_is_fixed_stratified_and_disjoint():
    _, y = load_digits(size=8, channels=1)
    tr, te = split_indices(y)
    tr2, te2 = split_indices(y)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == len(y)
    counts = torch.bincount(y[te], minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40
    with pytest.raises(ValueError, match="test_fraction"):
        split_indices(y, 1.5)
    d = load_dataset()
    assert isinstance(d, DataSplit) and d.classes == [str(i) for i in range(10)]
    assert d.image_shape == (3, 32, 32) and len(d.test_labels) == len(te)


def _write_folder(root, classes=("cat", "dog"), n=3, size=(20, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
        (root / c / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    _write_folder(tmp_path / "set")
    x, y, classes = load_image_folder(tmp_path / "set")
    assert x.shape == (6, 3, 32, 32) and classes == ["cat", "dog"]
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    d = load_dataset(tmp_path / "set", size=16, channels=1)
    assert d.image_shape == (1, 16, 16) and len(d.train_labels) + len(d.test_labels) == 6
    # train/ and test/ sub-folders are used as given
    _write_folder(tmp_path / "split" / "train")
    _write_folder(tmp_path / "split" / "test", n=2)
    d = load_dataset(tmp_path / "split")
    assert len(d.train_labels) == 6 and len(d.test_labels) == 4
    f = load_image_files([tmp_path / "set" / "cat" / "1.png"], size=8)
    assert f.shape == (1, 3, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data: no such folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no PNG/JPEG"):
        load_image_folder(tmp_path / "noimg")
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="image: no such file"):
        load_image_files([tmp_path / "nope.png"])


# --------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def small_data():
    d = load_dataset()
    keep = torch.arange(0, len(d.train_labels), 3)
    return DataSplit(d.train_images[keep], d.train_labels[keep], d.test_images, d.test_labels,
                     d.classes, d.name)


def test_short_training_learns(small_data):
    torch.manual_seed(0)
    net = cifar_cnn(channels=(8, 16))
    before = evaluate(net, small_data.test_images, small_data.test_labels)
    hist = train(net, small_data, TrainConfig(epochs=3, seed=0), progress=False, log=None)
    assert set(hist) == {"train_loss", "train_acc", "test_acc", "seconds"}
    assert len(hist["test_acc"]) == 3 and hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["test_acc"][-1] > max(0.5, before)
    assert not net.training
    cm = confusion_matrix(predict(net, small_data.test_images), small_data.test_labels, 10)
    assert cm.shape == (10, 10) and int(cm.sum()) == len(small_data.test_labels)
    assert abs(cm.diag().sum().item() / cm.sum().item() - hist["test_acc"][-1]) < 1e-6


def test_train_config_errors():
    with pytest.raises(TypeError, match="unknown keys"):
        TrainConfig(epoch=3)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)


def test_checkpoint_round_trip(tmp_path, small_data):
    kwargs = dict(channels=(4, 8), hidden=16)
    net = cifar_cnn(**kwargs)
    hist = train(net, small_data, TrainConfig(epochs=1), progress=False, log=None)
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", net, model_kwargs=kwargs,
                           classes=small_data.classes, history=hist, config=TrainConfig(epochs=1),
                           data=small_data.name, test_acc=0.5)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]  # no temporary file left
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training
    x = small_data.test_images[:5]
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert ckpt["classes"] == small_data.classes and ckpt["history"] == hist
    assert ckpt["model_kwargs"]["channels"] == [4, 8] and ckpt["test_acc"] == 0.5
    # a plain weights_only load works too (no pickled classes)
    assert torch.load(path, weights_only=True)["format"] == ckpt["format"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not a cnnvis_ext checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a cnnvis_ext checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


@pytest.mark.slow
def test_default_budget_reaches_95_percent():
    """The default training budget (about a minute on 2 CPU cores) reaches >= 95% on the digits."""
    torch.manual_seed(0)
    data = load_dataset()
    net = cifar_cnn()
    hist = train(net, data, TrainConfig(), progress=False, log=None)
    acc = evaluate(net, data.test_images, data.test_labels)
    assert acc >= 0.95, hist
