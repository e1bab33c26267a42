"""Integrated gradients and occlusion against captum (IntegratedGradients, Occlusion)."""
import math
import warnings

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext.seeding import make_generator

from captum.attr import IntegratedGradients, Occlusion
from .zoo_models import assert_matches_finite_differences


def tiny(dtype=torch.float64):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    return m.to(dtype).eval()


def resnet18():
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torchvision.models.resnet18(weights=None, num_classes=10)
    return m.double().eval()


def images(n, size):
    return torch.rand(n, 3, size, size, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_ig_equals_captum(method, arch):
    m = tiny() if arch == "tiny" else resnet18()
    x = images(2, 12 if arch == "tiny" else 32)
    t = torch.tensor([1, 4])
    ref, delta = IntegratedGradients(m).attribute(x, baselines=0.0, target=t, n_steps=8,
                                                  method=method, return_convergence_delta=True)
    got = vis.integrated_gradients(m, x, t, steps=8, method=method)
    torch.testing.assert_close(got.attributions, ref)
    torch.testing.assert_close(got.error, delta)
    # the same in batches of 3 interpolated images
    torch.testing.assert_close(vis.integrated_gradients(m, x, t, steps=8, method=method,
                                                        batch_size=3).attributions, ref)


def test_ig_baselines_and_completeness():
    m = tiny()
    x = images(2, 12)
    t = torch.tensor([0, 2])
    blurred = TF.gaussian_blur(x, kernel_size=2 * math.ceil(3 * 1.5) + 1, sigma=1.5)
    ref = IntegratedGradients(m).attribute(x, baselines=blurred, target=t, n_steps=16)
    got = vis.integrated_gradients(m, x, t, baseline="blur", blur_sigma=1.5, steps=16)
    torch.testing.assert_close(got.attributions, ref, rtol=1e-5, atol=1e-7)
    # the uniform baseline: image i's noise from its own generator, in [min, max] of the image
    noise = torch.stack([torch.rand(x.shape[1:], generator=make_generator(7, i, 3, "cpu"))
                         for i in range(2)]).double()
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    base = lo[:, None, None, None] + (hi - lo)[:, None, None, None] * noise
    ref = IntegratedGradients(m).attribute(x, baselines=base, target=t, n_steps=16)
    got = vis.integrated_gradients(m, x, t, baseline="uniform", seed=7, steps=16)
    torch.testing.assert_close(got.attributions, ref)
    torch.testing.assert_close(vis.integrated_gradients(m, x, t, baseline=base, steps=16).attributions, ref)
    # completeness: the error falls with the steps
    e4 = vis.integrated_gradients(m, x, t, steps=4, method="riemann_left").error.abs()
    e64 = vis.integrated_gradients(m, x, t, steps=64, method="riemann_left").error.abs()
    assert (e64 < e4).all()


def test_ig_all_targets_one_pass_and_create_graph():
    m = tiny()
    x = images(2, 12)
    tt = torch.tensor([[0, 1, 2], [4, 4, 3]])
    got = vis.integrated_gradients(m, x, tt, steps=6)
    assert got.attributions.shape == (2, 3, 3, 12, 12) and got.error.shape == (2, 3)
    for j in range(3):
        one = vis.integrated_gradients(m, x, tt[:, j], steps=6)
        torch.testing.assert_close(got.attributions[:, j], one.attributions)
        torch.testing.assert_close(got.error[:, j], one.error)
    # differentiable maps: d/dw of a loss on the attributions against finite differences
    w = m[3].weight

    def loss():
        return (vis.integrated_gradients(m, x, tt, steps=4, create_graph=True).attributions ** 2).sum()
    (g,) = torch.autograd.grad(loss(), w)
    assert g.abs().sum() > 0
    assert_matches_finite_differences(loss, w, g, [(0, 1, 1, 1), (6, 4, 2, 0)])


def test_saliency_all_targets_and_create_graph():
    m = tiny()
    x = images(2, 12)
    s = vis.saliency(m, x, "all", absolute=False)
    assert s.shape == (2, 5, 3, 12, 12)
    for j in range(5):
        torch.testing.assert_close(s[:, j], vis.saliency(m, x, j, absolute=False))
    # double backward in float64: the map's gradient w.r.t. a weight equals the finite difference
    w = m[7].weight

    def loss():
        return vis.saliency(m, x, torch.tensor([[1, 3], [2, 0]]), absolute=False,
                            create_graph=True).pow(2).sum()
    (g,) = torch.autograd.grad(loss(), w)
    assert g.abs().sum() > 0
    idx = (3, 17)
    with torch.no_grad():
        old = w[idx].item()
        w[idx] = old + 1e-6
        up = loss().item()
        w[idx] = old - 1e-6
        down = loss().item()
        w[idx] = old
    assert abs((up - down) / 2e-6 - g[idx].item()) <= 1e-5 * (1 + abs(g[idx].item()))


@pytest.mark.parametrize("window,stride", [(3, 2), ((4, 3), (3, 2)), (5, 5), (2, 1)])
def test_occlusion_equals_captum(window, stride):
    m = tiny()
    x = images(2, 12)
    t = torch.tensor([3, 0])
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ref = Occlusion(m).attribute(x, sliding_window_shapes=(3, wh, ww), strides=(3, sh, sw),
                                 baselines=0, target=t)
    got = vis.occlusion(m, x, t, window=window, stride=stride, batch_size=7)
    # captum divides by the coverage counts in float32
    torch.testing.assert_close(got, ref.double(), rtol=1e-5, atol=1e-7)
    assert got.abs().sum() > 0


def test_occlusion_resnet_value_and_targets():
    m = resnet18()
    x = images(2, 32)
    t = torch.tensor([[1, 7], [2, 2]])
    mean = x.mean((2, 3), keepdim=True).expand_as(x)
    got = vis.occlusion(m, x, t, window=8, stride=6, value="mean")
    for j in range(2):
        ref = Occlusion(m).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 6, 6),
                                     baselines=mean, target=t[:, j], perturbations_per_eval=16)
        torch.testing.assert_close(got[:, j], ref.double(), rtol=1e-5, atol=1e-7)
    grey = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)[:, None, None]
    ref = Occlusion(m).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8),
                                 baselines=grey.expand(3, 32, 32)[None].expand_as(x).contiguous(),
                                 target=1)
    torch.testing.assert_close(vis.occlusion(m, x, 1, window=8, value=grey), ref.double(),
                               rtol=1e-5, atol=1e-7)


def test_bad_inputs():
    m = tiny()
    x = images(2, 12)
    with pytest.raises(ValueError, match="window: .* larger"):
        vis.occlusion(m, x, 0, window=13)
    with pytest.raises(ValueError, match="window"):
        vis.occlusion(m, x, 0, window=0)
    with pytest.raises(ValueError, match="stride"):
        vis.occlusion(m, x, 0, window=3, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="value"):
        vis.occlusion(m, x, 0, value="grey")
    with pytest.raises(ValueError, match="target: class 5 is out of range"):
        vis.occlusion(m, x, 5)
    with pytest.raises(ValueError, match="steps"):
        vis.integrated_gradients(m, x, 0, steps=0)
    with pytest.raises(ValueError, match="steps"):
        vis.integrated_gradients(m, x, 0, steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="method"):
        vis.integrated_gradients(m, x, 0, method="simpson")
    with pytest.raises(ValueError, match="baseline"):
        vis.integrated_gradients(m, x, 0, baseline="white")
    with pytest.raises(ValueError, match="baseline"):
        vis.integrated_gradients(m, x, 0, baseline=torch.zeros(5, 5))
    with pytest.raises(ValueError, match="target"):
        vis.integrated_gradients(m, x, "every")
    with pytest.raises(ValueError, match="target: class 9 is out of range"):
        vis.integrated_gradients(m, x, 9)
    with pytest.raises(ValueError, match="batch_size"):
        vis.integrated_gradients(m, x, 0, batch_size=0)


def test_integrated_gradients_without_the_completeness_error():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    full = vis.integrated_gradients(m, x, [0, 2], steps=4)
    fast = vis.integrated_gradients(m, x, [0, 2], steps=4, completeness=False)
    assert fast.error is None and full.error.shape == (2,)
    torch.testing.assert_close(fast.attributions, full.attributions)
