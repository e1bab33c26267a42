"""Learned priors: up-convolutional inverters (Dosovitskiy & Brox) and the generator prior of
activation maximization (Nguyen et al., DGN-AM)."""
import os
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cnnvis_ext.data import load_dataset
from cnnvis_ext.models import cifar_cnn
from cnnvis_ext.train import TrainConfig, train
from cnnvis_ext.vis import (GeneratorParam, UpConvInverter, activation_maximization, class_logit,
                            invert, invert_learned, train_inverter)
from cnnvis_ext.seeding import make_generator


@pytest.fixture(scope="module")
def digits():
    return load_dataset()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return cifar_cnn().eval()


# ----------------------------------------------------------------------------- fast tests

@pytest.mark.parametrize("layer,code_shape,depth", [("conv1", (16, 16, 16), 1),
                                                    ("conv2", (32, 8, 8), 2),
                                                    ("conv3", (64, 4, 4), 3),
                                                    ("fc1", (64,), 3)])
def test_depth_follows_the_layer_and_output_matches_the_input(net, layer, code_shape, depth):
    from cnnvis_ext.vis.learned import layer_output_shape

    assert layer_output_shape(net, layer, (3, 32, 32)) == code_shape
    inv = UpConvInverter(layer, code_shape, (3, 32, 32))
    assert inv.depth == depth
    out = inv(torch.randn(5, *code_shape))
    assert out.shape == (5, 3, 32, 32)
    assert (out >= inv.pixel_lo.view(1, -1, 1, 1)).all() and (out <= inv.pixel_hi.view(1, -1, 1, 1)).all()
    inv.check_model(net)


def test_sizes_that_are_not_powers_of_two():
    inv = UpConvInverter("x", (8, 7, 7), (1, 28, 28))
    assert inv.depth == 2 and inv(torch.randn(2, 8, 7, 7)).shape == (2, 1, 28, 28)
    inv = UpConvInverter("x", (8, 5, 5), (3, 24, 24))  # 5 -> 40, resized to 24
    assert inv(torch.randn(2, 8, 5, 5)).shape == (2, 3, 24, 24)
    inv = UpConvInverter("x", (10,), (3, 12, 20))
    assert inv(torch.randn(2, 10)).shape == (2, 3, 12, 20)
    with pytest.raises(ValueError, match="code: expected shape"):
        inv(torch.randn(2, 11))


def test_train_records_ranges_and_leaves_the_model_alone(net, digits):
    x = digits.train_images[:96]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    inv = train_inverter(net, "conv2", x, epochs=1, batch_size=32)
    assert net.training and all(m.training for m in net.modules())  # flags restored
    net.eval()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert not inv.training and inv.layer == "conv2" and inv.code_shape == (32, 8, 8)
    with torch.no_grad():
        codes = net.conv2(net.conv1(x))
    torch.testing.assert_close(inv.code_lo, codes.amin(0))
    torch.testing.assert_close(inv.code_hi, codes.amax(0))
    torch.testing.assert_close(inv.code_mean, codes.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inv.pixel_hi, x.transpose(0, 1).flatten(1).amax(1))
    assert int(inv.trained_on) == 96 and len(inv.history["loss"]) == 1


def test_seeded_training_is_reproducible_and_data_forms_agree(net, digits):
    x, y = digits.train_images[:64], digits.train_labels[:64]
    a = train_inverter(net, "conv1", x, epochs=1, batch_size=32, seed=3)
    b = train_inverter(net, "conv1", x, epochs=1, batch_size=32, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # a Dataset of (image, label) pairs, shuffled with the same seed, without cached codes
    c = train_inverter(net, "conv1", TensorDataset(x, y), epochs=1, batch_size=32, seed=3)
    for p, q in zip(a.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
    # an iterable of batches (a list, re-iterable) and the feature loss
    d = train_inverter(net, "conv1", [(x[:32], y[:32]), (x[32:], y[32:])], epochs=2,
                       loss="pixel+feature")
    assert len(d.history["loss"]) == 2 and d.history["loss"][1] < d.history["loss"][0] * 1.5


def test_save_load_round_trip_is_bit_exact(net, digits, tmp_path):
    inv = train_inverter(net, "conv2", digits.train_images[:64], epochs=1, batch_size=32)
    path = inv.save(tmp_path / "sub" / "inv.pt")
    assert path.is_file() and not [f for f in os.listdir(path.parent) if f.startswith(".")]
    back = UpConvInverter.load(path, model=net)
    assert (back.layer, back.code_shape, back.image_shape, back.width) == \
        (inv.layer, inv.code_shape, inv.image_shape, inv.width)
    sd, sd2 = inv.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert back.history == inv.history
    x = digits.test_images[:8]
    assert torch.equal(invert_learned(inv, net, x), invert_learned(back, net, x))


def test_load_refuses_a_model_whose_layer_differs(net, digits, tmp_path):
    inv = train_inverter(net, "conv2", digits.train_images[:32], epochs=1)
    path = inv.save(tmp_path / "inv.pt")
    other = cifar_cnn(channels=(16, 24, 64))
    with pytest.raises(ValueError, match=r"'conv2' with output shape \(32, 8, 8\).*\(24, 8, 8\)"):
        UpConvInverter.load(path, model=other)
    with pytest.raises(ValueError, match="output shape"):
        invert_learned(inv, other, digits.test_images[:2])
    with pytest.raises(KeyError, match="'conv2' is not a layer"):
        UpConvInverter.load(path, model=nn.Sequential(nn.Conv2d(3, 4, 3)))
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not a cnnvis_ext inverter file"):
        UpConvInverter.load(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        UpConvInverter.load(tmp_path / "missing.pt")


def test_bad_input_gives_clear_errors(net, digits):
    x = digits.train_images[:8]
    with pytest.raises(KeyError, match="'conv9' is not a layer of Sequential.*Did you mean"):
        train_inverter(net, "conv9", x, epochs=1)
    with pytest.raises(ValueError, match="data: expected images with 3 channels.*got 1"):
        train_inverter(net, "conv1", x[:, :1], epochs=1)
    with pytest.raises(ValueError, match="loss: expected one of"):
        train_inverter(net, "conv1", x, loss="perceptual")
    with pytest.raises(ValueError, match="epochs: expected a non-negative int"):
        train_inverter(net, "conv1", x, epochs=-1)
    with pytest.raises(ValueError, match="lr: expected a positive"):
        train_inverter(net, "conv1", x, lr=0)
    with pytest.raises(TypeError, match="data: a one-shot iterator"):
        train_inverter(net, "conv1", iter([x]), epochs=1)
    with pytest.raises(TypeError, match="data: expected a tensor of images"):
        train_inverter(net, "conv1", 3, epochs=1)
    with pytest.raises(ValueError, match="data: no images"):
        train_inverter(net, "conv1", x[:0], epochs=1)
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        train_inverter("net", "conv1", x)
    inv = UpConvInverter("conv1", (16, 16, 16), (3, 32, 32))
    with pytest.raises(ValueError, match="images: expected 3 channels"):
        invert_learned(inv, net, x[:, :1])
    with pytest.raises(ValueError, match="images: expected 32x32"):
        invert_learned(inv, net, x[:, :, :16, :16])
    with pytest.raises(TypeError, match="inverter: expected an UpConvInverter"):
        invert_learned(net, net, x)
    with pytest.raises(ValueError, match="code_shape: expected"):
        UpConvInverter("conv1", (16, 16), (3, 32, 32))
    with pytest.raises(ValueError, match="generator: param='generator' needs"):
        activation_maximization(net, class_logit(0), param="generator", steps=1, size=32)
    with pytest.raises(ValueError, match="size: the generator makes 32x32"):
        activation_maximization(net, class_logit(0), generator=inv, steps=1, size=16)
    with pytest.raises(ValueError, match="generator: it makes 3-channel images"):
        activation_maximization(net, class_logit(0), generator=inv, steps=1, channels=1)
    with pytest.raises(TypeError, match="generator: expected an UpConvInverter"):
        activation_maximization(net, class_logit(0), param="generator", generator=net, steps=1)


def test_generator_prior_is_batched_seeded_and_clipped(net):
    torch.manual_seed(1)
    inv = UpConvInverter("conv2", (32, 8, 8), (3, 32, 32))
    with torch.no_grad():
        inv.code_hi.fill_(0.3)
        inv.code_std.fill_(1.0)
    objs = [class_logit(c) for c in range(3)]
    a = activation_maximization(net, objs, generator=inv, steps=4, lr=0.5, seed=7)
    b = activation_maximization(net, objs[0], generator=inv, steps=4, lr=0.5, seed=7)
    c = activation_maximization(net, objs, generator=inv, steps=4, lr=0.5, seed=7)
    assert a.images.shape == (3, 3, 32, 32) and a.values.shape == (4, 3)
    torch.testing.assert_close(a.images[:1], b.images, atol=1e-5, rtol=1e-5)  # as if alone
    assert torch.equal(a.images, c.images)
    assert all(p.grad is None for p in inv.parameters())
    # the code stays in the recorded range after every step
    p = GeneratorParam(inv, [make_generator(0, i, 0, "cpu") for i in range(2)], 2, decay=0.1)
    assert p.code.shape == (4, 32, 8, 8)
    with torch.no_grad():
        p.code.add_(torch.randn_like(p.code) * 10)
    p.after_step()
    assert (p.code >= inv.code_lo).all() and (p.code <= inv.code_hi).all()
    assert p.image().shape == (4, 3, 32, 32)


# ----------------------------------------------------------------------------- trained network

@pytest.fixture(scope="module")
def trained(digits):
    """cifar_cnn trained for 2 epochs on the digits, and an inverter of its conv2 (timed)."""
    torch.manual_seed(0)
    model = cifar_cnn()
    train(model, digits, TrainConfig(epochs=2, seed=0), progress=False, log=None)
    model.eval()
    t0 = time.perf_counter()
    inv = train_inverter(model, "conv2", digits.train_images, epochs=4, batch_size=64)
    return model, inv, time.perf_counter() - t0


@pytest.mark.slow
def test_learned_inversion_beats_mean_image_and_optimization(trained, digits):
    model, inv, train_s = trained
    x = digits.test_images[:32]  # held out: neither the network nor the inverter saw them
    t0 = time.perf_counter()
    rec = invert_learned(inv, model, x)
    budget = train_s + (time.perf_counter() - t0)
    err = (rec - x).pow(2).mean().item()
    mean_err = (digits.train_images.mean(0) - x).pow(2).mean().item()
    assert err < 0.5 * mean_err
    # optimization-based inversion of the same layer with the same wall-clock budget
    # (training + inference of the inverter), capped at the paper's few hundred steps
    t0 = time.perf_counter()
    invert(model, "conv2", x, steps=5)
    per_step = (time.perf_counter() - t0) / 5
    steps = int(min(300, max(5, budget / per_step)))
    opt = invert(model, "conv2", x, steps=steps).images
    opt_err = (opt - x).pow(2).mean().item()
    assert err < opt_err, (err, opt_err, steps)


@pytest.mark.slow
def test_generator_prior_beats_the_best_real_image(trained, digits):
    model, inv, _ = trained
    with torch.no_grad():
        best_real = model(digits.test_images).max(0).values  # per class, over the held-out set
    res = activation_maximization(model, [class_logit(c) for c in range(10)], generator=inv,
                                  steps=64, lr=0.05, seed=0)
    with torch.no_grad():
        logits = model(res.images)
    values = logits.diagonal()
    probs = logits.softmax(1).diagonal()
    assert (values > best_real).sum() >= 8, (values, best_real)
    assert (probs > 0.9).sum() >= 8, probs
    # the images are decodings of in-range codes: inside the data's pixel range
    assert res.images.min() >= 0 and res.images.max() <= 1
