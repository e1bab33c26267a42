"""cnnvis_ext.graph: tracing, layer nodes, receptive fields and BatchNorm folding, each
against an independent reference (the model itself, autograd's gradient support, the module)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_ext import graph, nn as cnn
from cnnvis_ext._modules import forward_until


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 1, stride=2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.bn(self.conv1(x))), 2)
        out = self.conv2(x)
        out += x                                   # in-place residual add
        out = self.relu(out)
        return self.down(out)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2, dilation=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)      # depthwise
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        return self.pool(self.dw(y))


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))   # squeeze-excitation


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Branchy()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.inner(self.conv(x))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:                            # data-dependent control flow
            return x * 2
        return x


def _support_box(model, layer, x, row, col):
    """The input box on which one unit's value depends, from autograd (an independent
    reference for the geometry): the nonzero rows and columns of its input gradient, with
    weights made positive so that nothing cancels."""
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.01)
    x = x.clone().requires_grad_(True)
    a = forward_until(model, x, [layer])[layer]
    a[0, :, row, col].sum().backward()
    nz = x.grad[0].abs().sum(0) > 0
    rows, cols = nz.any(1).nonzero().flatten(), nz.any(0).nonzero().flatten()
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("net,layer,pos", [(Residual, "conv2", (3, 4)), (Residual, "relu", (0, 7)),
                                           (Residual, "down", (2, 1)), (Concat, "dw", (5, 9)),
                                           (Concat, "pool", (0, 0))])
def test_receptive_field_matches_gradient_support(net, layer, pos):
    torch.manual_seed(0)
    m = net().eval()
    x = torch.rand(1, 3, 24, 20, dtype=torch.float64)
    m.double()
    gm = graph.trace(m)
    rf = graph.receptive_field(gm, graph.layer_node(gm, layer))
    assert not rf.whole
    assert rf.box(*pos, (24, 20)) == _support_box(m, layer, x, *pos)


def test_receptive_field_of_a_gate_is_the_whole_image():
    m = Gate()
    gm = graph.trace(m)
    rf = graph.receptive_field(gm, graph.layer_node(gm, "fc"))
    assert rf.whole and rf.box(3, 3, (10, 12)) == (0, 0, 10, 12)
    # the convolution below the gate keeps its local field
    assert graph.receptive_field(gm, graph.layer_node(gm, "conv")).box(5, 5, (10, 12)) == (4, 4, 7, 7)


def test_trace_sees_dataflow_and_shares_parameters():
    m = Residual().eval()
    gm = graph.trace(m)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(gm(x), m(x))
    assert gm.conv1.weight is m.conv1.weight
    add = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(add) == 1 and {a.name for a in add[0].args} == {"conv2", "max_pool2d"}
    # a module called twice: its first call, as forward_until records it
    assert graph.layer_node(gm, "relu").args[0].target == "bn"


def test_layer_node_of_a_module_traced_through():
    m = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Conv2d(4, 2, 1))
    gm = graph.trace(m)
    assert graph.layer_node(gm, "0").target == "0.1"
    with pytest.raises(KeyError, match="layer: 'nope'"):
        graph.layer_node(gm, "nope")


def test_fused_modules_are_leaves():
    m = nn.Sequential(cnn.ConvReLUPool2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1))
    gm = graph.trace(m)
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]
    rf = graph.receptive_field(gm, graph.layer_node(gm, "0"))
    assert (rf.stride, rf.lo, rf.hi) == ((2, 2), (-1, -1), (2, 2))


def test_untraceable_model_names_the_module_and_the_fix():
    m = Untraceable()
    with pytest.raises(graph.GraphTraceError, match=r"module 'inner' \(Branchy\).*leaf_modules=\['inner'\]"):
        graph.trace(m)
    gm = graph.trace(m, leaf_modules=["inner"])
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(gm(x), m(x))
    graph.trace(m, leaf_modules=[Branchy])
    with pytest.raises(TypeError, match="leaf_modules"):
        graph.trace(m, leaf_modules=[3])
    with pytest.raises(TypeError, match="model"):
        graph.trace("resnet")


@pytest.mark.parametrize("affine", [True, False])
def test_fold_batchnorm_is_exact(affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, bias=affine).double()
    bn = nn.BatchNorm2d(5, affine=affine).double()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            bn.weight.normal_()
            bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w, b = graph.fold_batchnorm(conv.weight, conv.bias, bn)
    torch.testing.assert_close(F.conv2d(x, w, b), bn(conv(x)))
    scale, shift = graph.batchnorm_affine(bn)
    y = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(y * scale.view(-1, 1, 1) + shift.view(-1, 1, 1), bn(y))
    bn.train()
    with pytest.raises(ValueError, match="eval mode"):
        graph.fold_batchnorm(conv.weight, conv.bias, bn)
