import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext import vis


def net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(12, 16, 3, padding=1), nn.ReLU()).to(dtype)


def images(n=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=16, mode="bilinear").to(dtype)


def test_error_falls_below_bound():
    m, x = net(), images()
    res = vis.invert(m, ["1", "4"], x, steps=40)
    assert res.images.shape == (2, 2, 3, 16, 16)
    assert res.errors.shape == (40, 2, 2)
    # Stated bound: the normalized reconstruction error ends below 0.2 on this net (it starts near 1).
    assert (res.errors[-1] < 0.2).all()
    assert (res.errors[-1] < res.errors[0] / 3).all()
    # the reconstruction's representation really matches: recompute the error independently
    with torch.no_grad():
        a0, a = m[:2](x), m[:2](res.images[:, 0])
        err = ((a - a0) ** 2).flatten(1).sum(1) / (a0 ** 2).flatten(1).sum(1)
    assert (err < 0.25).all()


def test_without_priors_error_goes_lower():
    m, x = net(), images(1)
    res = vis.invert(m, "1", x, steps=40, lambda_tv=0.0, lambda_alpha=0.0, lr=0.1)
    assert res.images.shape == (1, 3, 16, 16) and res.errors.shape == (40, 1)
    assert res.errors[-1].item() < 0.05


def test_batched_over_images_and_layers_equals_one_by_one():
    m, x = net(torch.float64), images(2, torch.float64)
    kw = dict(steps=5, seed=4)
    both = vis.invert(m, ["1", "4"], x, **kw)
    for j, layer in enumerate(["1", "4"]):
        one = vis.invert(m, layer, x[:1], **kw)
        torch.testing.assert_close(one.images[0], both.images[0, j], rtol=0, atol=1e-10)
        torch.testing.assert_close(one.errors[:, 0], both.errors[:, 0, j], rtol=0, atol=1e-10)
    pair = vis.invert(m, ["4"], x, **kw)
    torch.testing.assert_close(pair.images[:, 0], both.images[:, 1], rtol=0, atol=1e-10)


def test_fused_model_and_3d_image():
    m = cnnvis_ext.fuse(net())
    res = vis.invert(m, "4", images(1)[0], steps=3)
    assert res.images.shape == (3, 16, 16) and res.errors.shape == (3,)


def test_seed_and_state():
    m, x = net().train(), images(1)
    a = vis.invert(m, "4", x, steps=2, seed=1)
    b = vis.invert(m, "4", x, steps=2, seed=1)
    c = vis.invert(m, "4", x, steps=2, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert m.training and all(p.grad is None for p in m.parameters())


def test_bad_inputs():
    m, x = net(), images(1)
    with pytest.raises(KeyError, match="Valid layers"):
        vis.invert(m, "conv9", x)
    with pytest.raises(ValueError, match="layer"):
        vis.invert(m, [], x)
    with pytest.raises(ValueError, match="image"):
        vis.invert(m, "1", torch.rand(16, 16))
    with pytest.raises(ValueError, match="steps"):
        vis.invert(m, "1", x, steps=-1)
    with pytest.raises(ValueError, match="lr"):
        vis.invert(m, "1", x, lr=0)
    with pytest.raises(ValueError, match="momentum"):
        vis.invert(m, "1", x, momentum=1.0)
    with pytest.raises(ValueError, match="lambda_tv"):
        vis.invert(m, "1", x, lambda_tv=-1)


class _Residual(nn.Module):
    """A BatchNorm residual block with a large gain: the steps must not depend on it."""

    def __init__(self, gain):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Conv2d(3, 8, 1)
        self.gain = gain

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) * self.gain + self.proj(x))


@pytest.mark.parametrize("gain", [1.0, 1e4])
def test_converges_whatever_the_gain(gain):
    torch.manual_seed(0)
    m = _Residual(gain).eval()
    with torch.no_grad():
        m.bn.running_var.fill_(0.5)
    res = vis.invert(m, "bn", images(1), steps=60)
    assert torch.isfinite(res.images).all()
    assert res.errors[-1].item() < 0.1 * res.errors[0].item()


def test_non_finite_objective_names_the_step():
    class Overflow(nn.Module):
        calls = 0

        def forward(self, y):
            self.calls += 1  # call 1 computes the target, calls 2 and 3 are steps 0 and 1
            return y * float("inf") if self.calls > 3 else y

    m = nn.Sequential(nn.Conv2d(3, 4, 3), Overflow())
    with pytest.raises(FloatingPointError, match=r"invert: .*non-finite at step 2 \(of 10\)"):
        vis.invert(m, "1", images(1), steps=10)
