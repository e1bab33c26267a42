"""deconvnet(): against a hand-written projection and the deconvnet-modified gradient, batching,
fused vs plain models, BatchNorm folding, keep modes, errors; top_activations()."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_ext.ops import reference as ref
from cnnvis_ext.vis import deconvnet
from cnnvis_ext.nn import fuse


def _vgg(bn=False, overlap=False):
    """A small VGG-style chain; ``overlap`` uses 3x3/2 pools (AlexNet style)."""
    def pool():
        return nn.MaxPool2d(3, 2, 1) if overlap else nn.MaxPool2d(2)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), pool(),
              nn.Conv2d(6, 8, 3, padding=1)]
    layers.append(nn.BatchNorm2d(8) if bn else nn.Identity())
    layers += [nn.ReLU(), pool(),
               nn.Sequential(nn.Conv2d(8, 10, 3, padding=1), nn.ReLU(inplace=True))]
    m = nn.Sequential(*layers).double().eval()
    if bn:
        b = m[4]
        b.running_mean.normal_()
        b.running_var.uniform_(0.5, 2.0)
        b.weight.data.uniform_(0.5, 2.0)
    return m


def _hand_projection(model, x, unit):
    """Layer-by-layer deconvnet written out with stock ops, top layer = the last ReLU."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    bn = next((m for m in model.modules() if isinstance(m, nn.BatchNorm2d)), None)
    # forward, recording indices
    y0 = F.relu(F.conv2d(x, convs[0].weight, convs[0].bias, padding=1))
    p0, i0 = F.max_pool2d(y0, pools[0].kernel_size, pools[0].stride, pools[0].padding,
                          return_indices=True)
    y1 = F.conv2d(p0, convs[1].weight, convs[1].bias, padding=1)
    w1 = convs[1].weight
    if bn is not None:
        y1 = F.batch_norm(y1, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        w1 = w1 * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
    y1 = F.relu(y1)
    p1, i1 = F.max_pool2d(y1, pools[1].kernel_size, pools[1].stride, pools[1].padding,
                          return_indices=True)
    a = F.relu(F.conv2d(p1, convs[2].weight, convs[2].bias, padding=1))
    # keep the strongest activation of `unit` per image
    flat = a[:, unit].flatten(1)
    pos = flat.argmax(1)
    top = torch.zeros_like(a)
    top[torch.arange(a.shape[0]), unit, pos // a.shape[3], pos % a.shape[3]] = flat.max(1).values
    # project down
    r = F.conv_transpose2d(F.relu(top), convs[2].weight, padding=1)
    r = ref.unpool_conv_transpose(r, i1, w1, 1, 1, 1, 1, y1.shape[-2:], p0.shape[-2:])
    r = ref.unpool_conv_transpose(r, i0, convs[0].weight, 1, 1, 1, 1, y0.shape[-2:], x.shape[-2:])
    return r


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward passes relu(grad): the deconvnet rule."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


def _modified_gradient(model, x, unit):
    """value * d(unit's max activation)/dx under the deconvnet backward."""
    x = x.clone().requires_grad_(True)
    h = x
    for m in [m for m in model.modules() if not isinstance(m, nn.Sequential)]:
        if isinstance(m, nn.ReLU):
            h = _DeconvReLU.apply(h)
        else:
            h = m(h)
    flat = h[:, unit].flatten(1)
    vals = flat.max(1).values
    (g,) = torch.autograd.grad(vals.sum(), x)
    return g * vals.view(-1, 1, 1, 1).detach()


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("overlap", [False, True])
def test_matches_hand_projection_and_modified_gradient(bn, overlap):
    torch.manual_seed(1)
    model = _vgg(bn=bn, overlap=overlap)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    got = deconvnet(model, "7.1", x, units=[4])
    torch.testing.assert_close(got, _hand_projection(model, x, 4))
    torch.testing.assert_close(got, _modified_gradient(model, x, 4))
    fused = fuse(copy.deepcopy(model))
    torch.testing.assert_close(deconvnet(fused, "7.1", x, units=[4]), got)


def test_batched_equals_per_unit():
    torch.manual_seed(2)
    model = fuse(_vgg())
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    units = [0, 3, 7, 9]
    batched = deconvnet(model, "7", x, units=units).view(3, 4, 3, 16, 16)
    for j, u in enumerate(units):
        torch.testing.assert_close(batched[:, j], deconvnet(model, "7", x, units=u))
        for n in range(3):
            torch.testing.assert_close(batched[n, j], deconvnet(model, "7", x[n:n + 1], units=u)[0])
    # small chunks: same result
    torch.testing.assert_close(deconvnet(model, "7", x, units=units, chunk_size=3),
                               batched.view(12, 3, 16, 16))
    assert deconvnet(model, "7", x).shape == (30, 3, 16, 16)


def test_keep_all_and_mask():
    torch.manual_seed(3)
    model = _vgg()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    a = model[:8](x)
    # keep="all" of one unit is the sum of the projections of each of its positions (linearity
    # holds because every value is >= 0 after the ReLU and the switches are fixed).
    all_ = deconvnet(model, "7.1", x, units=[2], keep="all")
    mask = torch.zeros(a.shape, dtype=torch.bool)
    mask[:, 2] = True
    torch.testing.assert_close(deconvnet(model, "7.1", x, units=[2], keep=mask), all_)
    one = torch.zeros(a.shape, dtype=torch.bool)
    flat = a[:, 2].flatten(1).argmax(1)
    for n in range(2):
        one[n, 2, flat[n] // 4, flat[n] % 4] = True
    torch.testing.assert_close(deconvnet(model, "7.1", x, units=[2], keep=one),
                               deconvnet(model, "7.1", x, units=[2], keep="max"))


def test_intermediate_layers_and_plain_conv_top():
    torch.manual_seed(4)
    model = _vgg()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    for layer in ["0", "1", "2", "3", "6", "7.0"]:
        out = deconvnet(model, layer, x, units=[1])
        assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    # top = a pool output: projection equals conv_transpose(unpool(one-hot))
    a, idx = F.max_pool2d(F.relu(model[0](x)), 2, return_indices=True)
    flat = a[0, 1].flatten()
    top = torch.zeros_like(a)
    top[0, 1].view(-1)[flat.argmax()] = flat.max()
    expected = F.conv_transpose2d(F.max_unpool2d(top, idx, 2), model[0].weight, padding=1)
    torch.testing.assert_close(deconvnet(model, "2", x, units=[1]), expected)


def test_errors():
    model = _vgg()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(KeyError, match="layer"):
        deconvnet(model, "nope", x)
    with pytest.raises(ValueError, match="units"):
        deconvnet(model, "7", x, units=[10])
    with pytest.raises(ValueError, match="keep"):
        deconvnet(model, "7", x, keep="mean")
    with pytest.raises(TypeError, match="keep"):
        deconvnet(model, "7", x, keep=torch.ones(1))
    with pytest.raises(ValueError, match="images"):
        deconvnet(model, "7", x[0])
    with pytest.raises(ValueError, match="layer: '1' gives a 2-D"):
        deconvnet(nn.Sequential(nn.Flatten(), nn.Linear(768, 4)).double(), "1", x)


def test_training_mode_model_is_projected_in_eval_mode_and_left_as_it_was():
    torch.manual_seed(9)
    model = _vgg(bn=True)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expected = deconvnet(model, "7", x, units=[3])
    model.train()
    stats = model[4].running_mean.clone(), model[4].running_var.clone()
    got = deconvnet(model, "7", x, units=[3])
    torch.testing.assert_close(got, expected)
    assert model.training and model[4].training
    assert torch.equal(model[4].running_mean, stats[0]) and torch.equal(model[4].running_var, stats[1])


# ----------------------------------------------------------------------------- any dataflow

class _Graphy(nn.Module):
    """Every construct the chain formulation cannot take: in-place residual add, BatchNorm,
    functional relu and max_pool, a concatenation, a squeeze-excitation gate."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.side = nn.Conv2d(6, 4, 1)
        self.fc = nn.Conv2d(10, 10, 1)
        self.top = nn.Conv2d(10, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, relu=None):
        relu = relu or (lambda t: F.relu(t))
        h = F.max_pool2d(relu(self.bn(self.stem(x))), 2)
        r = self.conv(h)
        r += h                                                  # in-place residual add
        r = self.relu(r) if relu is None else relu(r)
        y = torch.cat([r, self.side(h)], 1)                      # concatenation
        y = y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))   # gate
        return relu(self.top(y))


def _graphy_reference(m, x, unit):
    """value * d(unit's strongest activation)/dx with the deconvnet rule at every ReLU,
    written with the model's own forward and a plain autograd function."""
    x = x.clone().requires_grad_(True)
    a = m(x, relu=_DeconvReLU.apply)
    flat = a[:, unit].flatten(1)
    vals = flat.max(1).values
    (g,) = torch.autograd.grad(vals.sum(), x)
    return g * vals.view(-1, 1, 1, 1).detach()


def test_any_dataflow_equals_the_modified_gradient():
    torch.manual_seed(10)
    m = _Graphy().double().eval()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    got = deconvnet(m, "top", x, units=[1, 5]).view(3, 2, 3, 12, 12)
    for j, unit in enumerate([1, 5]):
        torch.testing.assert_close(got[:, j], _graphy_reference(m, x, unit))
    # the rule matters here: the plain gradient differs
    xr = x.clone().requires_grad_(True)
    a = m(xr)
    flat = a[:, 1].flatten(1)
    (plain,) = torch.autograd.grad(flat.max(1).values.sum(), xr)
    assert not torch.allclose(plain * flat.max(1).values.detach().view(-1, 1, 1, 1), got[:, 0])
    # chunks of images give the same entries
    torch.testing.assert_close(deconvnet(m, "top", x, units=[1, 5], chunk_size=2),
                               got.view(6, 3, 12, 12))


def test_in_place_residual_add_is_not_taken_for_a_chain():
    """torchvision's BasicBlock: out += identity between modules that look like a chain."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            out = self.conv2(self.relu(self.conv1(x)))
            out += x
            return self.relu(out)

    torch.manual_seed(11)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), Block()).double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)

    def reference(unit):
        xr = x.clone().requires_grad_(True)
        h = F.max_pool2d(_DeconvReLU.apply(m[0](xr)), 2)
        b = m[3]
        out = b.conv2(_DeconvReLU.apply(b.conv1(h))) + h
        a = _DeconvReLU.apply(out)
        flat = a[:, unit].flatten(1)
        (g,) = torch.autograd.grad(flat.max(1).values.sum(), xr)
        return g * flat.max(1).values.detach().view(-1, 1, 1, 1)

    torch.testing.assert_close(deconvnet(m, "3", x, units=[2]), reference(2))


def test_activation_without_a_rule_passes_the_signal_and_warns():
    torch.manual_seed(12)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1), nn.Conv2d(4, 4, 3)).double()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"deconvnet: .*LeakyReLU"):
        got = deconvnet(m, "2", x, units=[0])
    xr = x.clone().requires_grad_(True)
    flat = m(xr)[:, 0].flatten(1)
    (g,) = torch.autograd.grad(flat.max(1).values.sum(), xr)
    torch.testing.assert_close(got, g * flat.max(1).values.detach().view(-1, 1, 1, 1))


# ----------------------------------------------------------------------------- top_activations

def test_top_activations_matches_brute_force_and_deconvnet():
    from cnnvis_ext.vis import top_activations
    torch.manual_seed(5)
    model = fuse(_vgg())
    data = torch.randn(11, 3, 16, 16, dtype=torch.float64)
    data[7] = data[3]  # a tie: index 3 must come first
    ds = torch.utils.data.TensorDataset(data)
    res = top_activations(model, "7", ds, k=3, units=[1, 4], batch_size=4, progress=False)
    a = model(data)
    for j, unit in enumerate([1, 4]):
        m = a[:, unit].flatten(1).max(1).values
        order = sorted(range(11), key=lambda i: (-m[i].item(), i))[:3]
        assert res.indices[j].tolist() == order
        torch.testing.assert_close(res.values[j], m[order])
        for r, i in enumerate(order):
            proj = deconvnet(model, "7", data[i:i + 1], units=[unit])[0]
            torch.testing.assert_close(res.projections[j, r], proj)
    assert (res.indices[:, :2] != 7).all() or 3 in res.indices.tolist()[0]
    # iterable of batches (images kept in memory) gives the same
    res2 = top_activations(model, "7", [data[:5], data[5:]], k=3, units=[1, 4], progress=False)
    assert torch.equal(res2.indices, res.indices)
    torch.testing.assert_close(res2.patches, res.patches)
    assert res.patches.shape[:3] == (2, 3, 3)


# ----------------------------------------------------------------------------- cropping

def _odd_net():
    """Strided, dilated, grouped, overlapping and ceil-mode pools, odd sizes: every crop edge case."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 10, (3, 1), padding=(1, 0)), nn.ReLU()).double().eval()


@pytest.mark.parametrize("net, layer, size", [(_vgg, "7.1", (16, 16)), (_odd_net, "9", (29, 23))])
@pytest.mark.parametrize("keep", ["max", "all", "mask"])
def test_cropped_equals_uncropped(net, layer, size, keep):
    torch.manual_seed(6)
    model = net()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    if keep == "mask":
        a = model(x) if layer == "9" else model[:8](x)
        keep = torch.zeros(a.shape, dtype=torch.bool)
        keep[0, :, 0, -1] = True  # a corner
        keep[1, :, 1:3, 0] = True  # two rows at an edge
    full = deconvnet(model, layer, x, keep=keep, crop=False)
    got = deconvnet(model, layer, x, keep=keep, crop=True)
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, full, rtol=1e-12, atol=1e-12)
    # a few entries per chunk: windows of different sizes and offsets per chunk
    torch.testing.assert_close(deconvnet(model, layer, x, keep=keep, chunk_size=3), full,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
def test_cuda_cropped_matches_cpu():
    torch.manual_seed(7)
    model = _odd_net()
    x = torch.randn(2, 3, 29, 23, dtype=torch.float64)
    expected = deconvnet(model, "9", x, crop=False)
    got = deconvnet(copy.deepcopy(model).cuda(), "9", x.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-10)


def test_dead_units_project_to_zeros():
    torch.manual_seed(8)
    model = _vgg()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    a = model[:8](x)
    none = torch.zeros(a.shape, dtype=torch.bool)
    out = deconvnet(model, "7.1", x, units=[1, 2], keep=none)
    assert out.shape == (4, 3, 16, 16) and not out.any()
    some = none.clone()
    some[1, 2] = True  # only entry (image 1, unit 2) is live
    got = deconvnet(model, "7.1", x, units=[1, 2], keep=some)
    torch.testing.assert_close(got, deconvnet(model, "7.1", x, units=[1, 2], keep=some, crop=False))
    assert not got[:3].any() and got[3].any()


def test_top_activations_on_a_residual_network():
    from cnnvis_ext.vis import top_activations

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, padding=1)
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            h = F.max_pool2d(self.relu(self.stem(x)), 2)
            out = self.conv(h)
            out += h
            return self.relu(out)

    torch.manual_seed(13)
    model = nn.Sequential(Res()).double()
    data = torch.randn(9, 3, 16, 16, dtype=torch.float64)
    res = top_activations(model, "0", torch.utils.data.TensorDataset(data), k=2, units=[0, 3],
                          batch_size=4, progress=False)
    a = model(data)
    for j, unit in enumerate([0, 3]):
        m = a[:, unit].flatten(1).max(1).values
        order = sorted(range(9), key=lambda i: (-m[i].item(), i))[:2]
        assert res.indices[j].tolist() == order
        for r, i in enumerate(order):
            torch.testing.assert_close(res.projections[j, r],
                                       deconvnet(model, "0", data[i:i + 1], units=[unit])[0])
            # the receptive field of a unit of this net: stem 3x3, pool 2, conv 3x3 -> 8x8 at stride 2
            row, col = res.locations[j, r].tolist()
            top, left = 2 * row - 3, 2 * col - 3
            t, l, b, rr = res.boxes[j, r].tolist()
            assert (t, l, b, rr) == (max(top, 0), max(left, 0), min(top + 8, 16), min(left + 8, 16))
            assert res.patches.shape[-2:] == (8, 8)
            torch.testing.assert_close(res.patches[j, r][:, t - top:b - top, l - left:rr - left],
                                       data[i, :, t:b, l:rr])
