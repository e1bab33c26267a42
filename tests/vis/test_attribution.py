import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext import vis
from cnnvis_ext.seeding import make_generator


def net(dtype=torch.float64):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10), nn.ReLU(), nn.Linear(10, 5),
    )
    return m.to(dtype)


# -- independent reference: the same network written with functional ops ---------------------

def ref_logits(m, x, relu):
    c1, c2, l1, l2 = m[0], m[3], m[7], m[9]
    h = relu(F.conv2d(x, c1.weight, c1.bias, padding=1))
    h = F.max_pool2d(h, 2)
    h = relu(F.conv2d(h, c2.weight, c2.bias, padding=1))
    a = h  # the Grad-CAM layer is the ReLU at index 4
    h = F.adaptive_avg_pool2d(h, 2).flatten(1)
    h = relu(F.linear(h, l1.weight, l1.bias))
    return F.linear(h, l2.weight, l2.bias), a


def plain_relu(z):
    return torch.relu(z)


def guided_relu(z):
    h = torch.relu(z)  # relu's own backward masks by z > 0 ...
    if h.requires_grad:
        h.register_hook(lambda g: g.clamp(min=0))  # ... and the hook by grad > 0
    return h


def deconv_relu(z):
    h = z + (torch.relu(z) - z).detach()  # relu forward, identity backward
    if h.requires_grad:
        h.register_hook(lambda g: g.clamp(min=0))
    return h


def ref_grad(m, x, target, relu):
    x = x.clone().requires_grad_(True)
    out, _ = ref_logits(m, x, relu)
    out[torch.arange(len(target)), target].sum().backward()
    return x.grad


@pytest.fixture
def data():
    x = torch.rand(4, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 3, 1, 4])
    return x, t


@pytest.mark.parametrize("fn,relu", [(vis.saliency, plain_relu), (vis.guided_backprop, guided_relu),
                                     (vis.deconvnet_attribution, deconv_relu)])
@pytest.mark.parametrize("fused", [False, True])
def test_against_reference(fn, relu, fused, data):
    x, t = data
    m = net()
    ref = ref_grad(m, x, t, relu)
    model = cnnvis_ext.fuse(copy.deepcopy(m)) if fused else m
    kw = {"absolute": False} if fn is vis.saliency else {}
    got = fn(model, x, t, **kw)
    torch.testing.assert_close(got, ref)
    if fn is vis.saliency:
        torch.testing.assert_close(fn(model, x, t), ref.abs())


def test_guided_differs_from_plain_gradient(data):
    x, t = data
    m = net()
    assert not torch.allclose(vis.guided_backprop(m, x, t), vis.saliency(m, x, t, absolute=False))


def test_batched_over_targets(data):
    x, _ = data
    m = net()
    tt = torch.tensor([[0, 1, 2], [4, 3, 2], [1, 1, 0], [2, 0, 4]])
    for fn in (vis.saliency, vis.guided_backprop, vis.deconvnet_attribution):
        got = fn(m, x, tt)
        assert got.shape == (4, 3, 3, 12, 12)
        for j in range(3):
            torch.testing.assert_close(got[:, j], fn(m, x, tt[:, j]))
    cam = vis.grad_cam(m, "4", x, tt)
    assert cam.shape == (4, 3, 12, 12)
    torch.testing.assert_close(cam[:, 1], vis.grad_cam(m, "4", x, tt[:, 1]))
    # an int target means the same class for every image
    torch.testing.assert_close(vis.saliency(m, x, 2), vis.saliency(m, x, torch.full((4,), 2)))
    # the T maps come from one forward pass over the N images (a batched backward), not T
    seen = []
    h = m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        for fn in (vis.saliency, vis.guided_backprop, vis.deconvnet_attribution):
            seen.clear()
            fn(m, x, tt)
            assert seen == [4], (fn.__name__, seen)
    finally:
        h.remove()


def test_smoothgrad_against_reference(data):
    x, t = data
    m = net()
    s, level = 5, 0.2
    got = vis.saliency(m, x, t, smoothgrad_samples=s, noise_level=level, seed=11)
    ref = torch.zeros_like(x)
    for i in range(x.shape[0]):
        gen = make_generator(11, i, 2, x.device)
        noise = torch.randn((s, *x.shape[1:]), generator=gen, dtype=torch.float32).double()
        span = x[i].max() - x[i].min()
        for k in range(s):
            xi = (x[i] + level * span * noise[k]).unsqueeze(0)
            ref[i] += ref_grad(m, xi, t[i:i + 1], plain_relu)[0].abs() / s
    torch.testing.assert_close(got, ref)
    # per-image noise: batching does not change the result
    torch.testing.assert_close(vis.saliency(m, x, t, smoothgrad_samples=s, noise_level=level, seed=11,
                                            batch_size=1), got)
    assert not torch.allclose(vis.saliency(m, x, t, smoothgrad_samples=s, seed=12), got)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_cam_against_reference(fused, data):
    x, t = data
    m = net()
    xx = x.clone().requires_grad_(True)
    out, a = ref_logits(m, xx, plain_relu)
    (da,) = torch.autograd.grad(out[torch.arange(4), t].sum(), a)
    ref = torch.relu((da.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    ref = F.interpolate(ref, size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    model = cnnvis_ext.fuse(copy.deepcopy(m)) if fused else m
    # in the fused model, '3' is the fused conv+relu block (its relu '4' became Identity)
    torch.testing.assert_close(vis.grad_cam(model, "4", x, t), ref.detach())
    raw = vis.grad_cam(model, "4", x, t, upsample=False, relu=False)
    assert raw.shape == (4, 6, 6)
    nrm = vis.grad_cam(model, "4", x, t, normalize=True)
    assert nrm.max() <= 1 + 1e-12


def test_grad_cam_after_inplace_relu():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.rand(2, 3, 8, 8)
    cam = vis.grad_cam(m, "0", x, [0, 2])
    assert cam.shape == (2, 8, 8) and torch.isfinite(cam).all()


def test_model_state_restored(data):
    x, t = data
    m = net().train()
    vis.guided_backprop(m, x, t)
    assert m.training and all("forward" not in mod.__dict__ for mod in m.modules())
    assert all(p.grad is None for p in m.parameters())


def test_float32_and_device_follow_model(data):
    x, t = data
    m = net(torch.float32)
    g = vis.guided_backprop(m, x, t)  # float64 images are cast to the model's dtype
    assert g.dtype == torch.float32 and g.shape == x.shape


def test_bad_inputs(data):
    x, t = data
    m = net()
    with pytest.raises(ValueError, match="target: class 7 is out of range"):
        vis.saliency(m, x, 7)
    with pytest.raises(ValueError, match="target: expected shape"):
        vis.saliency(m, x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target"):
        vis.guided_backprop(m, x, torch.tensor([0.5, 1, 1, 1]))
    with pytest.raises(ValueError, match="target: class indices must be non-negative"):
        vis.guided_backprop(m, x, -1)
    with pytest.raises(KeyError, match="Valid layers"):
        vis.grad_cam(m, "features.4", x, t)
    with pytest.raises(ValueError, match="layer: Grad-CAM needs a 4-D"):
        vis.grad_cam(m, "7", x, t)
    with pytest.raises(TypeError, match="images"):
        vis.saliency(m, x.numpy(), t)
    with pytest.raises(ValueError, match="smoothgrad_samples"):
        vis.saliency(m, x, t, smoothgrad_samples=-1)
    with pytest.raises(TypeError, match="model"):
        vis.saliency(None, x, t)


# -- ReLU-family activations wherever the forward calls them ------------------------------------

class FunctionalNet(nn.Module):
    """Every spelling of the ReLU family in a custom forward, with a skip connection."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.act6 = nn.ReLU6()
        self.fc = nn.Linear(6 * 4, 5)

    def forward(self, x, relu=None, relu6=None):
        relu = relu or (lambda z, k: [F.relu, torch.relu, lambda t: t.relu(),
                                      lambda t: F.relu(t, inplace=True)][k](z))
        relu6 = relu6 or (lambda z, k: [self.act6, F.relu6, lambda t: F.hardtanh(t, 0.0, 6.0)][k](z))
        h = relu(self.c1(x) * 3, 0)
        h = F.max_pool2d(h, 2)
        r = relu6(self.c2(h) * 4, 0)
        h = relu(self.c3(r) + h, 1)          # residual add, then torch.relu
        h = relu6(h * 5, 1) + relu6(h * 7, 2)
        h = relu(h - 0.5, 2)
        h = relu(F.adaptive_avg_pool2d(h, 2).flatten(1), 3)
        return self.fc(h)


def _guided(z, hi=None):
    h = z.clamp(0, hi)  # clamp's backward masks by 0 < z (< hi) ...
    if h.requires_grad:
        h.register_hook(lambda g: g.clamp(min=0))  # ... and the hook by grad > 0
    return h


def _deconv(z, hi=None):
    h = z + (z.clamp(0, hi) - z).detach()
    if h.requires_grad:
        h.register_hook(lambda g: g.clamp(min=0))
    return h


@pytest.mark.parametrize("fn,rule", [(vis.guided_backprop, _guided), (vis.deconvnet_attribution, _deconv)])
def test_rule_applies_at_functional_and_relu6_activations(fn, rule, data):
    x, t = data
    torch.manual_seed(1)
    m = FunctionalNet().double()
    xr = x.clone().requires_grad_(True)
    out = m(xr, relu=lambda z, k: rule(z), relu6=lambda z, k: rule(z, 6.0))
    out[torch.arange(4), t].sum().backward()
    got = fn(m, x, t)
    torch.testing.assert_close(got, xr.grad)
    # the rule really changed the gradient (the test would pass on a plain gradient otherwise)
    assert not torch.allclose(got, vis.saliency(m, x, t, absolute=False))
    assert "forward" not in m.__dict__  # nothing left patched


@pytest.mark.parametrize("act", [nn.SiLU, nn.Hardswish, nn.GELU])
def test_undefined_activation_passes_gradient_and_warns(act, data):
    x, t = data
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), act(), nn.Flatten(), nn.Linear(4 * 10 * 10, 5)).double()
    with pytest.warns(UserWarning, match=rf"guided_backprop: .*{act.__name__}.*modules 1"):
        got = vis.guided_backprop(m, x, t)
    torch.testing.assert_close(got, vis.saliency(m, x, t, absolute=False))


def test_no_warning_for_relu_only_models(data, recwarn):
    x, t = data
    vis.guided_backprop(net(), x, t)
    vis.deconvnet_attribution(net(), x, t)
    assert not [w for w in recwarn if "defines no rule" in str(w.message)]
