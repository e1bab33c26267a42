import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext import vis
from cnnvis_ext.vis import AlphaBeta, Epsilon, FIRST_LAYER, Gamma, ZBox

D = torch.float64


def net(bias=True, pool="max"):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1, bias=bias), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(5, 3, bias=bias),
    ).to(D)
    for mod in m:
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(mod.weight, std=0.5)
            if mod.bias is not None:
                nn.init.normal_(mod.bias, std=0.1)
    return m.eval()


# -- independent reference: dense matrices and explicit contribution tables -------------------

def dense(fn, in_shape):
    """Matrix W (out, in) and offset b of the affine map fn on inputs of in_shape."""
    n = int(torch.tensor(in_shape).prod())
    eye = torch.eye(n, dtype=D).reshape(n, *in_shape)
    zero = torch.zeros(1, *in_shape, dtype=D)
    with torch.no_grad():
        b = fn(zero).reshape(-1)
        W = (fn(eye).reshape(n, -1) - b).T
    return W, b


def rule_matrix(rule, a, W, b, lo=None, hi=None):
    """Explicit contributions z[i, j] of input i to output j, and the denominators."""
    if isinstance(rule, Gamma):
        # Outputs z_j > 0 favour the contributions that push them up:
        # a+ (w + g w+) + a- (w + g w-), bias b + g b+; outputs z_j < 0 those
        # that push them down: a+ (w + g w-) + a- (w + g w+), bias b + g b-.
        g, ap, an, Wt = rule.gamma, a.clamp(min=0)[:, None], a.clamp(max=0)[:, None], W.T
        up, down = Wt + g * Wt.clamp(min=0), Wt + g * Wt.clamp(max=0)
        pos = (a @ Wt + b) > 0
        z = torch.where(pos[None, :], ap * up + an * down, ap * down + an * up)
        bias = torch.where(pos, b + g * b.clamp(min=0), b + g * b.clamp(max=0))
        neg = ~pos & ((a @ Wt + b) != 0)
        den = z.sum(0) + bias
        den = den + rule.eps * torch.where(den >= 0, 1.0, -1.0)
        return z * (pos | neg)[None, :], den
    if isinstance(rule, Epsilon):
        z = a[:, None] * W.T
        den = z.sum(0) + b
        den = den + rule.eps * torch.where(den >= 0, 1.0, -1.0)
        return z, den
    if isinstance(rule, AlphaBeta):
        # alpha1-beta0 on non-negative inputs: the positive contributions and
        # the positive part of the bias share the relevance.
        assert rule.beta == 0 and bool((a >= 0).all())
        z = (a[:, None] * W.T).clamp(min=0)
        den = z.sum(0) + b.clamp(min=0) + rule.eps
        return z, den
    if isinstance(rule, ZBox):
        z = a[:, None] * W.T - lo[:, None] * W.T.clamp(min=0) - hi[:, None] * W.T.clamp(max=0)
        return z, z.sum(0) + rule.eps
    raise AssertionError


def propagate(rule, a, W, b, R, **kw):
    z, den = rule_matrix(rule, a, W, b, **kw)
    return (z / den[None, :] * R[None, :]).sum(1)


def reference_lrp(m, x, target, conv_rule, lin_rule, first_rule=None):
    """Per image, layer by layer, with dense matrices (no autograd)."""
    out = []
    for n in range(x.shape[0]):
        acts, shapes = [x[n:n + 1]], []
        for mod in m:
            shapes.append(acts[-1].shape[1:])
            with torch.no_grad():
                acts.append(mod(acts[-1]))
        y = acts[-1].reshape(-1)
        R = torch.zeros_like(y)
        R[target[n]] = y[target[n]]
        for i in reversed(range(len(m))):
            mod, a, shp = m[i], acts[i].reshape(-1), shapes[i]
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                W, b = dense(lambda t: F.conv2d(t, mod.weight, None, mod.stride, mod.padding)
                             if isinstance(mod, nn.Conv2d) else F.linear(t, mod.weight), shp)
                bias = torch.zeros_like(b)
                if mod.bias is not None:
                    bias = (mod.bias.reshape(-1, 1).expand(-1, b.numel() // mod.bias.numel()).reshape(-1)
                            if isinstance(mod, nn.Conv2d) else mod.bias).detach()
                rule = lin_rule if isinstance(mod, nn.Linear) else conv_rule
                kw = {}
                if i == 0 and first_rule is not None:
                    rule = first_rule
                    kw = dict(lo=torch.full_like(a, first_rule.low), hi=torch.full_like(a, first_rule.high))
                R = propagate(rule, a, W, bias, R, **kw)
            elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                W, b = dense(mod, shp)
                R = propagate(Epsilon(1e-6), a, W, b, R)  # pooling: the default rule's eps
            elif isinstance(mod, nn.MaxPool2d):
                _, idx = F.max_pool2d(acts[i], mod.kernel_size, mod.stride, return_indices=True)
                Rin = torch.zeros(shp, dtype=D).reshape(shp[0], -1)
                Rin.scatter_add_(1, idx.reshape(shp[0], -1), R.reshape(shp[0], -1))
                R = Rin.reshape(-1)
            # ReLU, Flatten, Dropout: pass-through
        out.append(R.reshape(x.shape[1:]))
    return torch.stack(out)


@pytest.fixture
def data():
    x = torch.rand(3, 3, 6, 6, dtype=D, generator=torch.Generator().manual_seed(2))
    return x, torch.tensor([0, 2, 1])


@pytest.mark.parametrize("conv_rule,lin_rule", [
    (Epsilon(1e-6), Epsilon(1e-6)), (Epsilon(0.1), Epsilon(0.0)), (Gamma(0.25), Epsilon(1e-3)),
    (AlphaBeta(1.0, 0.0), Epsilon(1e-6)), (Gamma(1.0), AlphaBeta(1.0, 0.0)),
])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_against_reference(conv_rule, lin_rule, pool, data):
    x, t = data
    m = net(pool=pool)
    ref = reference_lrp(m, x, t, conv_rule, lin_rule)
    got = vis.lrp(m, x, t, rules={nn.Conv2d: conv_rule, nn.Linear: lin_rule}).relevance
    torch.testing.assert_close(got, ref)


def test_zbox_first_layer_against_reference(data):
    x, t = data
    m = net()
    zb = ZBox(0.0, 1.0)
    ref = reference_lrp(m, x, t, Gamma(0.25), Epsilon(1e-6), first_rule=zb)
    for rules in ({"default": Epsilon(1e-6), nn.Conv2d: "gamma", "0": zb},
                  {"default": "epsilon", nn.Conv2d: Gamma(0.25), FIRST_LAYER: zb}):
        torch.testing.assert_close(vis.lrp(m, x, t, rules=rules).relevance, ref)


def test_epsilon_zero_is_gradient_times_input(data):
    x, t = data
    m = net()  # with biases: LRP-0 equals gradient x input on ReLU networks
    xx = x.clone().requires_grad_(True)
    m(xx)[torch.arange(3), t].sum().backward()
    torch.testing.assert_close(vis.lrp(m, x, t, rules="zero").relevance, (xx.grad * x).detach())


@pytest.mark.parametrize("rules", ["zero", Epsilon(1e-12), {nn.Conv2d: Gamma(0.5, eps=1e-12), nn.Linear: "zero"}])
def test_conservation_layer_by_layer(rules, data):
    x, t = data
    m = net(bias=False)
    res = vis.lrp(m, x, t, rules=rules, return_layers=True)
    logit = m(x)[torch.arange(3), t].detach()
    assert list(res.layers) == [str(i) for i in reversed(range(9))]
    for name, R in res.layers.items():
        torch.testing.assert_close(R.flatten(1).sum(1), logit, rtol=1e-6, atol=1e-9, msg=name)
    torch.testing.assert_close(res.relevance, res.layers["0"])


def test_fused_model_matches(data):
    x, t = data
    m = net()
    f = cnnvis_ext.fuse(copy.deepcopy(m))
    assert isinstance(f[0], cnnvis_ext.ConvReLUPool2d)
    rules = {nn.Conv2d: "gamma", nn.Linear: "epsilon", FIRST_LAYER: ZBox(0.0, 1.0)}
    torch.testing.assert_close(vis.lrp(f, x, t, rules=rules).relevance,
                               vis.lrp(m, x, t, rules=rules).relevance)
    # per-name assignment addresses the fused block by its name
    torch.testing.assert_close(vis.lrp(f, x, t, rules={"3": "alpha1beta0"}).relevance,
                               vis.lrp(m, x, t, rules={"3": "alpha1beta0"}).relevance)


def test_batchnorm_folded(data):
    x, t = data
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    tail = [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)]
    m = nn.Sequential(conv, bn, *tail).to(D)
    folded = nn.Conv2d(3, 4, 3, padding=1).to(D)
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded.weight.copy_(conv.weight * s.reshape(-1, 1, 1, 1))
        folded.bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)
    m2 = nn.Sequential(folded, *m[2:])
    for rule in ("epsilon", "gamma", "alpha1beta0"):
        torch.testing.assert_close(vis.lrp(m.train(), x, t, rules=rule).relevance,
                                   vis.lrp(m2, x, t, rules=rule).relevance)
    assert m.training  # restored


def test_functional_flatten_between_modules(data):
    x, t = data

    class VGGish(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
            self.avgpool = nn.AdaptiveAvgPool2d(2)
            self.classifier = nn.Sequential(nn.Linear(16, 6), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(6, 3))

        def forward(self, z):
            return self.classifier(torch.flatten(self.avgpool(self.features(z)), 1))

    torch.manual_seed(0)
    m = VGGish().to(D).eval()
    xx = x.clone().requires_grad_(True)
    m(xx)[torch.arange(3), t].sum().backward()
    torch.testing.assert_close(vis.lrp(m, x, t, rules="zero").relevance, (xx.grad * x).detach())


def test_batched_over_targets(data):
    x, _ = data
    m = net()
    tt = torch.tensor([[0, 1], [2, 2], [1, 0]])
    r = vis.lrp(m, x, tt, rules={nn.Conv2d: "gamma"}, return_layers=True)
    assert r.relevance.shape == (3, 2, 3, 6, 6)
    assert r.layers["3"].shape == (3, 2, 4, 3, 3)
    for j in range(2):
        torch.testing.assert_close(r.relevance[:, j], vis.lrp(m, x, tt[:, j], rules={nn.Conv2d: "gamma"}).relevance)


def test_errors(data):
    x, t = data
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PixelShuffle(2), nn.Flatten(), nn.Linear(64, 3)).to(D)
    with pytest.raises(TypeError, match=r"lrp: module '1' \(PixelShuffle\) has no LRP rule"):
        vis.lrp(m, x, t)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(108, 3)

        def forward(self, z):
            if z.sum() > 0:
                z = z * 2
            return self.fc(z.flatten(1))

    from cnnvis_ext.graph import GraphTraceError
    with pytest.raises(GraphTraceError, match="could not trace"):
        vis.lrp(Branchy().to(D), x, t)
    with pytest.raises(ValueError, match="rules: unknown preset"):
        vis.lrp_preset("epsilon_minus")
    m = net()
    with pytest.raises(KeyError, match="Valid layers"):
        vis.lrp(m, x, t, rules={"features.0": "gamma"})
    with pytest.raises(ValueError, match="rules: 'foo'"):
        vis.lrp(m, x, t, rules={nn.Conv2d: "foo"})
    with pytest.raises(ValueError, match="alpha"):
        AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="target: class 3 is out of range"):
        vis.lrp(m, x, 3)
    with pytest.raises(TypeError, match="rules: keys"):
        vis.lrp(m, x, t, rules={3: "gamma"})


def test_gamma_rule_with_signed_inputs_and_outputs():
    """The gamma rule on a layer whose input and outputs take both signs (zennit's form)."""
    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(7, 5).double().eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 7, generator=g, dtype=D))
        lin.bias.copy_(torch.randn(5, generator=g, dtype=D) * 0.5)
    m = nn.Sequential(lin)
    x = torch.randn(4, 7, generator=g, dtype=D)
    t = torch.tensor([0, 1, 2, 3])
    logits = m(x)
    picked = logits[torch.arange(4), t]
    assert bool((picked > 0).any()) and bool((picked < 0).any())  # both branches of the rule
    assert bool((x > 0).any()) and bool((x < 0).any())
    rule = Gamma(0.5)
    got = vis.lrp(m, x, t, rules={nn.Linear: rule}).relevance
    W, b = lin.weight.detach(), lin.bias.detach()
    for n in range(4):
        R = torch.zeros(5, dtype=D)
        R[t[n]] = logits[n, t[n]].detach()
        z, den = rule_matrix(rule, x[n], W, b)
        torch.testing.assert_close(got[n], (z / den[None, :] * R[None, :]).sum(1))


# -- any dataflow --------------------------------------------------------------------------

class Graphy(nn.Module):
    """Residual add (in place), concatenation, a squeeze-excitation gate, BatchNorm after and
    before a convolution, a depthwise convolution, functional relu / max_pool, average pooling;
    no biases and no BatchNorm shifts."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pw = nn.Conv2d(6, 4, 1, bias=False)              # after bn2, unpadded: merged
        self.side = nn.Conv2d(6, 2, 1, bias=False)
        self.se = nn.Conv2d(6, 6, 1, bias=False)
        self.fc = nn.Linear(6 * 3 * 3, 4, bias=False)
        self.detach_gate = False  # the reference holds the gate constant

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.stem(x))), 2)
        r = self.dw(h)
        r += h                                                # in-place residual add
        r = F.relu(r)
        y = torch.cat([self.pw(self.bn2(r)), self.side(r)], 1)
        g = torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        y = y * (g.detach() if self.detach_gate else g)       # gate
        y = F.avg_pool2d(F.relu(y), 2)
        return self.fc(y.flatten(1))


def _graphy():
    torch.manual_seed(3)
    m = Graphy().to(D).eval()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.zero_()
            bn.running_mean.zero_()
    return m


def test_lrp0_on_a_graph_is_gradient_times_input():
    """With LRP-0, no biases and no shifts, relevance is gradient x input where the gates are
    held constant (an identity of LRP on piecewise-linear networks, computed by autograd)."""
    m = _graphy()
    x = torch.rand(3, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 3, 1])
    got = vis.lrp(m, x, t, rules="zero").relevance
    xr = x.clone().requires_grad_(True)
    m.detach_gate = True
    out = m(xr)
    (g,) = torch.autograd.grad(out[torch.arange(3), t].sum(), xr)
    torch.testing.assert_close(got, g * x)
    # conservation at the input
    torch.testing.assert_close(got.flatten(1).sum(1), out[torch.arange(3), t].detach())


def test_residual_add_splits_in_proportion_and_gate_gets_nothing():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 2, bias=False)

        def forward(self, x):
            return self.a(x) + self.b(x) * torch.sigmoid(x.sum(1, keepdim=True))

    torch.manual_seed(5)
    m = Tiny().to(D)
    x = torch.tensor([[0.7, -0.4]], dtype=D)
    res = vis.lrp(m, x, 1, rules="zero", return_layers=True)
    za, zb = m.a(x)[0, 1], (m.b(x) * torch.sigmoid(x.sum(1, keepdim=True)))[0, 1]
    z = za + zb
    # the gated branch's relevance zb reaches b's output unchanged; a gets za
    ra = x[0] * m.a.weight[1] / za * za
    rb = x[0] * m.b.weight[1] / (zb / torch.sigmoid(x.sum())) * zb
    torch.testing.assert_close(res.relevance[0], (ra + rb).detach())
    torch.testing.assert_close(res.relevance.sum(), z.detach())


@pytest.mark.parametrize("rule", [vis.Flat(), vis.WSquare()])
def test_flat_and_wsquare_against_dense_reference(rule, data):
    x, t = data
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(D)
    m = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3).to(D)).eval()
    got = vis.lrp(m, x, t, rules={FIRST_LAYER: rule, "default": Epsilon(1e-6)}).relevance
    for n in range(3):
        h = m[:2](x[n:n + 1])
        y = m(x[n:n + 1])[0]
        R = torch.zeros(3, dtype=D)
        R[t[n]] = y[t[n]]
        W2 = m[3].weight
        z = h.reshape(-1)[:, None] * W2.T
        den = z.sum(0) + m[3].bias
        den = den + 1e-6 * torch.where(den >= 0, 1.0, -1.0)
        Rh = (z / den * R).sum(1).detach()
        W, _ = dense(lambda v: F.conv2d(v, conv.weight, None, padding=1), (3, 6, 6))
        W = W.T  # (in, out)
        if isinstance(rule, vis.Flat):
            zin = (W != 0).to(D)          # every input of the window, weight one, no bias
            den_in = zin.sum(0)
        else:
            zin = W ** 2
            bias2 = (conv.bias ** 2).reshape(-1, 1).expand(-1, 36).reshape(-1)
            den_in = zin.sum(0) + bias2
        den_in = den_in + 1e-6 * torch.where(den_in >= 0, 1.0, -1.0)
        expected = (zin / den_in * Rh).sum(1).reshape(3, 6, 6)
        torch.testing.assert_close(got[n], expected.detach())


def test_presets_are_the_rule_tables():
    p = vis.lrp_preset("epsilon_gamma_box", low=-2.0, high=3.0)
    assert p[nn.Conv2d] == Gamma(0.25, 1e-6) and p[nn.Linear] == Epsilon(1e-6)
    assert p[FIRST_LAYER] == ZBox(-2.0, 3.0, 1e-6)
    assert vis.lrp_preset("epsilon_plus_flat")[FIRST_LAYER] == vis.Flat(1e-6)
    assert vis.lrp_preset("epsilon_alpha2_beta1")[nn.Conv2d] == AlphaBeta(2.0, 1.0, 1e-6)
    m = net()
    x = torch.rand(2, 3, 6, 6, dtype=D)
    torch.testing.assert_close(vis.lrp(m, x, 1, rules="epsilon_plus").relevance,
                               vis.lrp(m, x, 1, rules=vis.lrp_preset("epsilon_plus")).relevance)


def test_lrp0_through_a_channel_shuffle_is_gradient_times_input():
    """ShuffleNet's channel shuffle (view, transpose, view) moves relevance with the values."""
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)
            self.b = nn.Conv2d(6, 6, 1, groups=2, bias=False)
            self.fc = nn.Linear(6, 3, bias=False)

        def forward(self, x):
            h = F.relu(self.a(x))
            n, c, hh, ww = h.size()
            h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(n, c, hh, ww)
            h = F.relu(self.b(h))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(7)
    m = Shuffle().to(D).eval()
    x = torch.rand(2, 3, 6, 6, dtype=D)
    got = vis.lrp(m, x, [0, 2], rules="zero").relevance
    xr = x.clone().requires_grad_(True)
    out = m(xr)
    (g,) = torch.autograd.grad(out[torch.arange(2), torch.tensor([0, 2])].sum(), xr)
    torch.testing.assert_close(got, g * x)
