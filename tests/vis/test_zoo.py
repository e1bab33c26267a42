"""The methods on the torchvision zoo (random weights) and a user-written net, against the peers:
captum for the gradient-family methods and the deconvnet, zennit for LRP.

These need torchvision, captum and zennit (the test environment of ``make test`` installs
them); under CI a missing one fails the run instead of skipping it.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext._modules import forward_until, get_layer
from .zoo_models import randomize_batchnorm_stats, randomized_model


def _require(name):
    try:
        return __import__(name, fromlist=["_"])
    except Exception as e:  # pragma: no cover - depends on the environment
        if os.environ.get("CI"):
            pytest.fail(f"{name} must be importable in CI for the agreement tests: {e}",
                        pytrace=False)
        pytest.skip(f"{name} is not importable: {e}", allow_module_level=True)


torchvision = _require("torchvision")
captum_attr = _require("captum.attr")
zennit_attribution = _require("zennit.attribution")
zennit_composites = _require("zennit.composites")
zennit_torchvision = _require("zennit.torchvision")

NAMES = ["alexnet", "vgg16", "vgg16_bn", "resnet18", "resnet50", "googlenet", "mobilenet_v2",
         "mobilenet_v3_small", "densenet121", "efficientnet_b0", "squeezenet1_1",
         "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny", "usernet"]
#: Every activation is an nn.ReLU module: captum's modified-ReLU methods see them all.
RELU_MODULES_ONLY = ["alexnet", "vgg16", "vgg16_bn", "resnet18", "resnet50", "squeezenet1_1",
                     "shufflenet_v2_x1_0", "regnet_y_400mf"]
D = torch.float64


class UserNet(nn.Module):
    """A user's own forward: functional relu and max_pool, a skip connection."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = x + F.relu(self.c2(x))
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


_CACHE = {}


def make(name, dtype=D, bn_stats=True):
    """The network with random weights (seeded), eval mode, and (``bn_stats``) randomized
    BatchNorm statistics, so that a BatchNorm merged wrongly shows."""
    key = (name, dtype, bn_stats)
    if key not in _CACHE:
        if name == "usernet":
            torch.manual_seed(0)
            m = UserNet()
            randomize_batchnorm_stats(m, enabled=bn_stats)
            m = m.to(dtype).eval()
        else:
            kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
            m = randomized_model(name, dtype, bn_stats=bn_stats, **kw)
        _CACHE[key] = m
    return _CACHE[key]


def images(n=2, size=64, dtype=D):
    return torch.rand(n, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(2))


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# -- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", RELU_MODULES_ONLY)
def test_guided_backprop_and_deconvnet_attribution_equal_captum(name):
    m, x, t = make(name), images(), torch.tensor([3, 7])
    gb = captum_attr.GuidedBackprop(m).attribute(x.clone().requires_grad_(True), target=t)
    assert rel_err(vis.guided_backprop(m, x, t), gb) < 1e-10
    dc = captum_attr.Deconvolution(m).attribute(x.clone().requires_grad_(True), target=t)
    assert rel_err(vis.deconvnet_attribution(m, x, t), dc) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_saliency_equals_captum(name):
    m, x, t = make(name), images(), torch.tensor([3, 7])
    ref = captum_attr.Saliency(m).attribute(x.clone().requires_grad_(True), target=t, abs=True)
    assert rel_err(vis.saliency(m, x, t), ref) < 1e-10


# -- deconvnet projections ------------------------------------------------------------------

BLOCK_OUTPUTS = [("alexnet", "features.9"), ("vgg16_bn", "features.33"), ("resnet18", "layer3"),
                 ("resnet50", "layer2"), ("shufflenet_v2_x1_0", "stage3"),
                 ("regnet_y_400mf", "trunk_output.block3"), ("squeezenet1_1", "features.10")]


@pytest.mark.parametrize("name,layer", BLOCK_OUTPUTS)
def test_deconvnet_equals_captum_neuron_deconvolution(name, layer):
    """Zeiler & Fergus projections of the strongest activation of two channels; captum's
    NeuronDeconvolution gives the gradient of that activation, ours its value times it."""
    m, x = make(name), images()
    ours = vis.deconvnet(m, layer, x, units=[0, 5]).view(2, 2, *x.shape[1:])
    with torch.no_grad():
        act = forward_until(m, x, [layer])[layer]
    nd = captum_attr.NeuronDeconvolution(m, get_layer(m, layer))
    for j, unit in enumerate([0, 5]):
        value = act[:, unit].flatten(1).max(1).values
        ref = nd.attribute(x, neuron_selector=lambda o, u=unit: o[:, u].flatten(1).max(1).values)
        assert rel_err(ours[:, j], ref * value.view(-1, 1, 1, 1)) < 1e-9


# -- LRP ------------------------------------------------------------------------------------

ZENNIT = {"epsilon_plus": "EpsilonPlus", "epsilon_plus_flat": "EpsilonPlusFlat",
          "epsilon_gamma_box": "EpsilonGammaBox", "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1"}


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "vgg16_bn", "resnet18", "resnet50"])
@pytest.mark.parametrize("preset", sorted(ZENNIT))
def test_lrp_presets_equal_zennit(name, preset):
    """zennit's BatchNorm merge leaves an emptied BatchNorm computing x / sqrt(1 + eps) behind;
    its eps is set to 0 inside zennit's context so that both compute the same network."""
    m = make(name)
    x = images() * 2 - 1
    t = torch.tensor([3, 7])
    kw = {"low": -1.0, "high": 1.0} if preset == "epsilon_gamma_box" else {}
    ours = vis.lrp(m, x, t, rules=vis.lrp_preset(preset, **kw)).relevance
    canon = (zennit_torchvision.ResNetCanonizer() if name.startswith("resnet")
             else zennit_torchvision.VGGCanonizer())
    composite = getattr(zennit_composites, ZENNIT[preset])(canonizers=[canon], **kw)
    onehot = torch.zeros(2, 1000, dtype=D)
    onehot[torch.arange(2), t] = 1
    eps = {mod: mod.eps for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)}
    try:
        with zennit_attribution.Gradient(model=m, composite=composite) as attributor:
            for mod in eps:
                mod.eps = 0.0
            _, theirs = attributor(x, lambda out: out * onehot)
    finally:
        for mod, e in eps.items():
            mod.eps = e
    assert rel_err(ours, theirs) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_lrp_conserves_relevance(name):
    """With every bias and BatchNorm shift zero, the epsilon rule's relevance sums to the
    target logit (a tiny epsilon: random-weight networks have tiny logits)."""
    m = make(name, torch.float64)
    m = __import__("copy").deepcopy(m)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(getattr(mod, "bias", None), torch.Tensor):
                mod.bias.zero_()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.zero_()
    x = images()
    out = m(x)
    t = out.argmax(1)
    r = vis.lrp(m, x, t, rules=vis.Epsilon(1e-30)).relevance
    logit = out[torch.arange(2), t]
    assert ((r.flatten(1).sum(1) - logit).abs() / logit.abs()).max() < 1e-3


# -- inversion and views --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_invert_converges_and_feature_maps_run(name):
    # default statistics: with random weights and shifted statistics, deep maps of some
    # networks no longer depend on the input, and there is nothing to reconstruct
    m = make(name, torch.float32, bn_stats=False)
    x = images(1, dtype=torch.float32)
    maps = vis.feature_maps(m, x)                      # every leaf the forward pass runs
    assert set(maps) <= {n for n, _ in m.named_modules()}
    convs = [n for n in maps if isinstance(get_layer(m, n), nn.Conv2d)]
    layer = convs[len(convs) // 2]                      # a middle convolution
    r = vis.invert(m, layer, x, steps=60)
    assert torch.isfinite(r.images).all()
    assert r.errors[-1].item() < 0.25 * r.errors[0].item()


# -- fuse -----------------------------------------------------------------------------------

def _fusable_convs(model):
    """Convolutions whose output flows (through a BatchNorm or not) into a ReLU or ReLU6
    and nowhere else: what fuse() must take."""
    from cnnvis_ext import graph

    gm = graph.trace(model)
    mods = dict(gm.named_modules())
    count = 0
    for n in gm.graph.nodes:
        if n.op == "call_module" and type(mods[str(n.target)]) is nn.Conv2d:
            users = list(n.users)
            if len(users) == 1 and users[0].op == "call_module" and \
                    isinstance(mods[str(users[0].target)], nn.BatchNorm2d):
                users = list(users[0].users)
            count += len(users) == 1 and graph._activation_kind(users[0], mods) is not None
    return count


@pytest.mark.parametrize("name", NAMES)
def test_fuse_takes_the_conv_activation_runs_and_changes_no_result(name):
    from cnnvis_ext import fuse
    from cnnvis_ext.nn import ConvReLUPool2d

    m = make(name)
    fused = fuse(m, inplace=False)
    n_fused = sum(isinstance(mod, ConvReLUPool2d) for mod in fused.modules())
    assert n_fused >= 0.9 * _fusable_convs(m)
    assert set(fused.state_dict()) == set(m.state_dict())
    x = images()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = m(xa), fused(xb)
    torch.testing.assert_close(yb, ya)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
