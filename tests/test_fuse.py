"""fuse(): Conv2d -> [BatchNorm2d] -> ReLU/ReLU6 -> [MaxPool2d] found by dataflow, against the
model as it was (the reference: the same model unfused, in float64)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_ext import fuse
from cnnvis_ext.nn import ConvReLU2d, ConvReLUPool2d, FoldedBatchNorm2d

D = torch.float64


class Block(nn.Module):
    """torchvision's BasicBlock shape: a ReLU module called twice, an in-place residual add."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class Functional(nn.Module):
    """Functional relu, relu6 and max_pool in a custom forward."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.relu6(self.bn(self.c2(h)))
        return self.c3(h).relu()


def _randomize_bn(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.5, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0, 0.5, generator=g)
    return m


def _check_same(model, fused, x):
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = model(xa), fused(xb)
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)


def test_resnet_block_fuses_conv_bn_relu_and_keeps_everything_else():
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                        nn.ReLU(), nn.MaxPool2d(2), Block(4))).to(D).eval()
    fused = fuse(model)
    assert isinstance(fused, torch.fx.GraphModule)   # the reused ReLU needs the graph
    assert isinstance(fused.get_submodule("0"), ConvReLUPool2d)
    assert isinstance(fused.get_submodule("4.conv1"), ConvReLU2d)
    assert type(fused.get_submodule("4.conv2")) is nn.Conv2d   # its output goes to the add
    assert set(fused.state_dict()) == set(model.state_dict())
    assert fused.get_submodule("0").weight is model[0].weight   # shared, not copied
    assert isinstance(fused.get_submodule("4"), Block)           # containers kept
    _check_same(model, fused, torch.randn(2, 3, 12, 12, dtype=D))
    assert type(model[0]) is nn.Conv2d                           # the model is left as it was


def test_gradients_reach_convolution_and_batchnorm_parameters():
    torch.manual_seed(1)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6())).to(D).eval()
    ref = copy.deepcopy(model)
    fused = fuse(model)
    assert isinstance(fused[0], ConvReLU2d) and fused[0].activation == "relu6"
    assert isinstance(fused[1], FoldedBatchNorm2d) and isinstance(fused[2], nn.Identity)
    x = torch.randn(2, 3, 8, 8, dtype=D) * 10
    fused(x).sum().backward()
    ref(x).sum().backward()
    assert ref(x).max() == 6  # the clamp at 6 is exercised
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_functional_calls_and_relu6():
    torch.manual_seed(2)
    model = _randomize_bn(Functional()).to(D).eval()
    fused = fuse(model, inplace=False)
    kinds = {n: type(m) for n, m in fused.named_modules()}
    assert kinds["c1"] is ConvReLUPool2d and kinds["c2"] is ConvReLU2d and kinds["c3"] is ConvReLU2d
    assert fused.c2.activation == "relu6"
    _check_same(model, fused, torch.randn(2, 3, 10, 10, dtype=D) * 4)


def test_training_batchnorm_is_never_folded():
    torch.manual_seed(3)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                        nn.MaxPool2d(2))).to(D)
    ref = copy.deepcopy(model).train()
    fused = fuse(model).train()
    x = torch.randn(4, 3, 9, 9, dtype=D)
    torch.testing.assert_close(fused(x), ref(x))              # batch statistics, as unfused
    torch.testing.assert_close(fused[1].running_mean, ref[1].running_mean)   # updated alike
    torch.testing.assert_close(fused[1].running_var, ref[1].running_var)
    fused.eval(), ref.eval()
    torch.testing.assert_close(fused(x), ref(x))              # then folded from the new stats


def test_compiles_fullgraph():
    torch.manual_seed(4)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                        nn.ReLU(), nn.MaxPool2d(2), Block(4))).eval()
    fused = fuse(model, inplace=False)
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(torch.compile(fused, fullgraph=True)(x), model(x),
                               rtol=1e-4, atol=1e-5)


def test_untraceable_models_fuse_their_sequential_runs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else -self.body(x)

    m = Branchy().eval()
    x = torch.rand(1, 3, 8, 8)
    expected = m(x)
    fuse(m)
    assert isinstance(m.body[0], ConvReLUPool2d)
    torch.testing.assert_close(m(x), expected)


def test_bad_model():
    with pytest.raises(TypeError, match="model"):
        fuse("resnet18")
