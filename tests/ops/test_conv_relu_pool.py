"""conv_relu_pool: forward, switches, backward, registrations, modules, fuse(), bad input."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext import _reference as ref
from cnnvis_ext.nn import ConvReLU2d, ConvReLUPool2d, fuse
from cnnvis_ext.ops import conv_relu_pool, indices_to_switches, switches_to_indices

# (N, C_in, H, W, C_out, k, stride, padding, dilation, groups, pool_k, pool_s, pool_p, ceil)
CONFIGS = [
    (2, 3, 12, 12, 4, 3, 1, 1, 1, 1, 2, 2, 0, False),
    (2, 3, 9, 11, 5, 3, 1, 1, 1, 1, 3, 2, 1, True),     # overlapping, padded, ceil
    (1, 4, 13, 10, 6, 5, 2, 2, 1, 2, 2, 2, 0, True),    # stride, groups, odd sizes
    (3, 2, 10, 9, 3, 3, 1, 2, 2, 1, 3, 1, 0, False),    # dilation, stride-1 pool
    (2, 4, 8, 8, 4, 3, 1, 1, 1, 4, 1, 1, 0, False),     # depthwise, no pooling
    (1, 3, 11, 7, 2, (3, 1), (1, 2), (1, 0), 1, 1, (2, 3), (1, 2), (1, 1), True),
    (2, 2, 7, 7, 3, 1, 1, 0, 1, 1, 2, 3, 1, False),     # gaps between windows
    (1, 1, 5, 5, 1, 3, 1, 0, 1, 1, 3, 3, 0, False),     # a single window
]


# Shapes where the CPU backward's automatic choice is the switch-sparse
# formulation (kW * C_in >= 16, groups 1, pooling) rather than the dense one.
SPARSE_CONFIGS = [
    (2, 8, 12, 12, 16, 3, 1, 1, 1, 1, 2, 2, 0, False),
    (2, 16, 11, 9, 12, 3, 2, 1, 1, 1, 3, 2, 1, True),   # strided conv, overlapping padded pool
    (1, 8, 13, 12, 10, 3, 1, 2, 2, 1, 2, 2, 0, True),   # dilation: kW runs of C_in values
    (2, 6, 10, 10, 7, (3, 5), (2, 1), (1, 2), 1, 1, (2, 3), (1, 2), (1, 1), False),
]


@pytest.fixture(params=["auto", "sparse", "dense"])
def backward_path(request, monkeypatch):
    """Runs a test under each formulation of the CPU backward (CNNVIS_CONV_BACKWARD)."""
    monkeypatch.setenv("CNNVIS_CONV_BACKWARD", request.param)
    return request.param


def _args(cfg, dtype=torch.float64, bias=True, requires_grad=False):
    n, cin, h, w, cout, k, s, p, d, g, pk, ps, pp, ceil = cfg
    k2 = k if isinstance(k, tuple) else (k, k)
    x = torch.randn(n, cin, h, w, dtype=dtype, requires_grad=requires_grad)
    wt = torch.randn(cout, cin // g, *k2, dtype=dtype, requires_grad=requires_grad)
    b = torch.randn(cout, dtype=dtype, requires_grad=requires_grad) if bias else None
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g, pool_kernel=pk,
                          pool_stride=ps, pool_padding=pp, ceil_mode=ceil)


def _op_args(x, wt, b, kw):
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return (x, wt, b, pair(kw["stride"]), pair(kw["padding"]), pair(kw["dilation"]), kw["groups"],
            pair(kw["pool_kernel"]), pair(kw["pool_stride"]), pair(kw["pool_padding"]),
            kw["ceil_mode"])


def _conv_size(x, wt, kw):
    return ref.conv_output_size(x.shape, wt.shape, kw["stride"], kw["padding"], kw["dilation"])


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_reference(cfg, dtype, bias):
    x, wt, b, kw = _args(cfg, dtype, bias)
    out, sw = conv_relu_pool(x, wt, b, **kw)
    expected, idx = ref.conv_relu_pool(x, wt, b, **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, expected, **tol)
    assert sw.dtype == torch.uint8 and sw.shape == out.shape
    got = switches_to_indices(sw, _conv_size(x, wt, kw), kw["pool_kernel"], kw["pool_stride"],
                              kw["pool_padding"])
    if dtype == torch.float64:  # float32 rounding may reorder near-ties; compare exactly in float64
        positive = expected > 0
        assert torch.equal(got[positive], idx[positive])
    # wherever out == 0 the switch must still point inside the map (checked by switches_to_indices)


@pytest.mark.parametrize("cfg", CONFIGS + SPARSE_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_backward_matches_reference(cfg, bias, backward_path):
    x, wt, b, kw = _args(cfg, torch.float64, bias, requires_grad=True)
    out, _ = conv_relu_pool(x, wt, b, **kw)
    g = torch.randn_like(out)
    inputs = [t for t in (x, wt, b) if t is not None]
    grads = torch.autograd.grad(out, inputs, g)
    expected_out, _ = ref.conv_relu_pool(x, wt, b, **kw)
    expected = torch.autograd.grad(expected_out, inputs, g)
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cfg", CONFIGS[:6] + SPARSE_CONFIGS[:2])
def test_gradcheck(cfg, backward_path):
    x, wt, b, kw = _args(cfg, torch.float64, True, requires_grad=True)
    # keep conv outputs away from 0 and from ties so finite differences stay on one branch
    with torch.no_grad():
        x.mul_(2)

    def f(x, wt, b):
        return conv_relu_pool(x, wt, b, **kw)[0]

    assert torch.autograd.gradcheck(f, (x, wt, b), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward(cfg, requires_grad):
    x, wt, b, kw = _args(cfg, torch.float32, True, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.cnnvis.conv_relu_pool.default, _op_args(x, wt, b, kw))


@pytest.mark.parametrize("cfg", CONFIGS[:4] + SPARSE_CONFIGS[:2])
@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False], [True, False, True]])
def test_opcheck_backward(cfg, mask, backward_path):
    x, wt, b, kw = _args(cfg, torch.float32, True)
    out, sw = conv_relu_pool(x, wt, b, **kw)
    args = _op_args(x, wt, b, kw)
    bargs = (torch.randn_like(out), x, wt, out, sw) + args[3:] + (mask,)
    torch.library.opcheck(torch.ops.cnnvis._conv_relu_pool_backward.default, bargs)


def test_layouts_and_noncontiguous_inputs():
    x, wt, b, kw = _args(CONFIGS[1], torch.float64)
    expected, _ = ref.conv_relu_pool(x, wt, b, **kw)
    variants = [
        x.contiguous(memory_format=torch.channels_last),
        torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype)[..., ::2],
        x.transpose(2, 3).contiguous().transpose(2, 3),
    ]
    variants[1].copy_(x)
    for xv in variants:
        out, _ = conv_relu_pool(xv, wt.transpose(2, 3).contiguous().transpose(2, 3), b, **kw)
        torch.testing.assert_close(out, expected)
    out, _ = conv_relu_pool(x, wt.contiguous(memory_format=torch.channels_last), b[::1], **kw)
    torch.testing.assert_close(out, expected)


def test_channels_last_gradients():
    x, wt, b, kw = _args(CONFIGS[0], torch.float64, True, requires_grad=True)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out, _ = conv_relu_pool(xc, wt, b, **kw)
    g = torch.randn_like(out).contiguous()  # a grad in another layout than out
    gx, = torch.autograd.grad(out, xc, g)
    e_out, _ = ref.conv_relu_pool(x, wt, b, **kw)
    ex, = torch.autograd.grad(e_out, x, g)
    torch.testing.assert_close(gx, ex)


@pytest.mark.parametrize("cfg", [CONFIGS[0], SPARSE_CONFIGS[0]])
def test_empty_batch(cfg, backward_path):
    x, wt, b, kw = _args(cfg, torch.float32, True)
    x = x[:0].requires_grad_()
    wt.requires_grad_()
    out, sw = conv_relu_pool(x, wt, b, **kw)
    assert out.shape[0] == 0 and out.shape[1] == wt.shape[0] and sw.shape == out.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(wt.grad) == 0


def test_nan_propagates_like_pytorch():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    wt = torch.zeros(2, 2, 1, 1, dtype=torch.float64)
    wt[0, 0] = wt[1, 1] = 1.0
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 4, 5] = float("nan")
    out, sw = conv_relu_pool(x, wt, None, pool_kernel=2)
    expected, idx = ref.conv_relu_pool(x, wt, None, pool_kernel=2)
    torch.testing.assert_close(out, expected, equal_nan=True)
    nan = torch.isnan(expected)
    assert nan.sum() >= 2  # 0 * NaN spreads NaN to the other channel too
    got = switches_to_indices(sw, (6, 6), 2)
    assert torch.equal(got[nan], idx[nan])


def test_backward_nan_gradient_propagates_like_pytorch(backward_path):
    # A NaN in grad_out reaches x and weight through the window's switch;
    # where out == 0 it is masked, as in the eager composition.
    x, wt, b, kw = _args(SPARSE_CONFIGS[0], torch.float64, True, requires_grad=True)
    out, _ = conv_relu_pool(x, wt, b, **kw)
    g = torch.randn_like(out)
    g[0, 1, 2, 3] = float("nan")
    g[1, 0, 0, 0] = float("nan")
    grads = torch.autograd.grad(out, (x, wt), g)
    expected_out, _ = ref.conv_relu_pool(x, wt, b, **kw)
    expected = torch.autograd.grad(expected_out, (x, wt), g)
    for a, e in zip(grads, expected):
        assert torch.equal(torch.isnan(a), torch.isnan(e))
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, equal_nan=True)


def _check_grads_against_reference(x, wt, tol, **kw):
    """x and weight gradients of conv_relu_pool (no bias) against the reference's."""
    out, _ = conv_relu_pool(x, wt, None, **kw)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, wt), g)
    e_out, _ = ref.conv_relu_pool(x, wt, None, **kw)
    expected = torch.autograd.grad(e_out, (x, wt), g)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def test_sparse_backward_float32_large_channels(backward_path):
    # The vector accumulators (8 floats, 64-float tiles) and their tails.
    torch.manual_seed(3)
    x = torch.randn(3, 37, 10, 9, requires_grad=True)
    wt = (torch.randn(70, 37, 3, 3) * 0.1).requires_grad_()
    _check_grads_against_reference(x, wt, 1e-4, padding=1, pool_kernel=2)


def test_sparse_backward_wide_layer_pairs(backward_path):
    # Enough channels that the input gradient's scatter groups neighbouring
    # pooled positions in pairs (see switch_sparse.cpp, kPairEntries).
    torch.manual_seed(4)
    x = torch.randn(1, 8, 12, 11, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(600, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    _check_grads_against_reference(x, wt, 1e-10, padding=1, pool_kernel=2, ceil_mode=True)


def test_sparse_backward_many_images(backward_path):
    # At least 2 images per thread: the input gradient's scatter runs one task
    # per image, grouping fused with the products.
    torch.manual_seed(5)
    x = torch.randn(6, 16, 16, 15, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(24, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    _check_grads_against_reference(x, wt, 1e-10, padding=1, pool_kernel=2)


def test_pool_kernel_one_is_conv_relu():
    x, wt, b, kw = _args(CONFIGS[0], torch.float64, True)
    out, sw = conv_relu_pool(x, wt, b, padding=1, pool_kernel=1)
    torch.testing.assert_close(out, F.relu(F.conv2d(x, wt, b, padding=1)))
    assert torch.count_nonzero(sw) == 0


def test_switches_interoperate_with_max_unpool2d():
    x, wt, b, kw = _args(CONFIGS[0], torch.float64, True)
    out, sw = conv_relu_pool(x, wt, b, **kw)
    size = _conv_size(x, wt, kw)
    idx = switches_to_indices(sw, size, 2, 2, 0)
    unpooled = F.max_unpool2d(out, idx, 2, 2, 0, output_size=size)
    y = F.relu(F.conv2d(x, wt, b, padding=1))
    pooled, ref_idx = F.max_pool2d(y, 2, 2, return_indices=True)
    torch.testing.assert_close(unpooled, F.max_unpool2d(pooled, ref_idx, 2, 2, output_size=size))
    assert torch.equal(indices_to_switches(ref_idx, size, 2)[pooled > 0], sw[pooled > 0])


def test_autograd_saves_no_full_resolution_tensor():
    x, wt, b, kw = _args((4, 3, 16, 16, 8, 3, 1, 1, 1, 1, 2, 2, 0, False), torch.float32, True,
                         requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, sw = conv_relu_pool(x, wt, b, **kw)
    extra = [t for t in saved if t.data_ptr() not in (x.data_ptr(), wt.data_ptr(), b.data_ptr())]
    extra_bytes = sum(t.numel() * t.element_size() for t in extra)
    assert extra_bytes == out.numel() * (4 + 1)  # out (float32) + switches (uint8)
    conv_numel = 4 * 8 * 16 * 16
    assert all(t.numel() < conv_numel for t in extra)


def test_build_info():
    info = cnnvis_ext.build_info()
    assert set(info) >= {"version", "cuda_compiled", "cuda_version"}
    assert info["version"] == cnnvis_ext.__version__
    assert isinstance(info["cuda_compiled"], bool)
    assert (info["cuda_version"] is None) == (not info["cuda_compiled"])


# ---------------------------------------------------------------- modules / fuse

def _vgg_like(cfg=(8, "M", 16, "M", 16, 16, "M"), in_ch=3, num_classes=10):
    # torchvision's VGG `make_layers` structure: features / avgpool / classifier
    layers, c = [], in_ch
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier = nn.Sequential(nn.Linear(c * 4, 32), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(32, num_classes))

    def forward(x):
        return model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))

    model.forward = forward
    return model


def _alexnet_like():
    # torchvision's AlexNet feature structure (overlapping 3x3/2 pools, stride-4 first conv)
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(8, 12, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(12, 16, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize("make,size", [(_vgg_like, 32), (_alexnet_like, 95)])
def test_fuse_keeps_outputs_names_and_parameters(make, size):
    model = make().eval()
    x = torch.randn(2, 3, size, size)
    expected = model(x)
    names_before = [n for n, _ in model.named_modules()]
    params_before = {n: p for n, p in model.named_parameters()}
    fused = fuse(model)
    assert fused is model
    kinds = [type(m) for m in model.modules()]
    assert ConvReLUPool2d in kinds
    assert nn.Conv2d not in kinds  # every conv was followed by ReLU
    assert [n for n, _ in model.named_modules()] == names_before
    for n, p in model.named_parameters():
        assert p is params_before[n]  # shared, not copied
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_fuse_leaves_unfusable_modules():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),      # padding mode
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),            # BN folded
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, dilation=2),  # dilated pool
        nn.Conv2d(4, 4, 3, padding="same"), nn.ReLU(), nn.AvgPool2d(2),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    expected = model(x)
    fuse(model)
    kinds = [type(m) for m in model]
    assert kinds[0] is nn.Conv2d and kinds[2] is ConvReLU2d and kinds[4] is nn.Identity
    assert kinds[5] is ConvReLU2d and kinds[7] is nn.MaxPool2d
    assert kinds[8] is ConvReLU2d and kinds[10] is nn.AvgPool2d
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_fuse_not_inplace_copies():
    model = _alexnet_like()
    fused = fuse(model, inplace=False)
    assert fused is not model and type(model[0]) is nn.Conv2d


def test_module_loads_conv_state_dict_and_matches_sequential():
    conv = nn.Conv2d(3, 6, 5, padding=2)
    seq = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    m = ConvReLUPool2d(3, 6, 5, padding=2, pool_kernel_size=3, pool_stride=2, pool_padding=1,
                       ceil_mode=True)
    m.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 17, 15)
    torch.testing.assert_close(m(x), seq(x))
    out, sw = m.forward_with_switches(x)
    assert sw.dtype == torch.uint8
    assert "pool_kernel_size=(3, 3)" in repr(m)


def test_module_init_matches_conv2d_distribution():
    torch.manual_seed(1)
    m = ConvReLUPool2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)
    assert m.weight.abs().max() <= bound + 1e-6 and m.bias.abs().max() <= bound + 1e-6


def test_compile_fullgraph_fused_model():
    model = fuse(_vgg_like().eval())  # eval: no dropout randomness; gradients still flow
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model.forward(x))
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    model.forward(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_compile_inductor_dynamic_shapes():
    m = ConvReLUPool2d(3, 4, 3, padding=1, pool_kernel_size=2)
    compiled = torch.compile(m, fullgraph=True, dynamic=True)
    for n, s in [(2, 8), (3, 10)]:
        x = torch.randn(n, 3, s, s)
        torch.testing.assert_close(compiled(x), m(x))


# ---------------------------------------------------------------- bad input

def _good():
    return torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda x, w, b, kw: (x[0], w, b, kw), ValueError, "x: expected a 4-D"),
    (lambda x, w, b, kw: (x, w[0], b, kw), ValueError, "weight: expected a 4-D"),
    (lambda x, w, b, kw: (x, w.double(), b, kw), TypeError, "weight: dtype"),
    (lambda x, w, b, kw: (x, w, b.double(), kw), TypeError, "bias: dtype"),
    (lambda x, w, b, kw: (x.long(), w, b, kw), TypeError, "x: expected a floating"),
    (lambda x, w, b, kw: (x, w, b[:3], kw), ValueError, "bias: expected shape"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "groups": 2}), ValueError, "x: has 4 channels"),
    (lambda x, w, b, kw: (x, w[:5], b[:5], {**kw, "groups": 2}), ValueError, "weight: C_out"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "groups": 0}), ValueError, "groups"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "stride": 0}), ValueError, "stride"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "padding": -1}), ValueError, "padding"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "dilation": 0}), ValueError, "dilation"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "pool_kernel": 0}), ValueError, "pool_kernel"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "pool_stride": -2}), ValueError, "pool_stride"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "pool_padding": 2}), ValueError, "pool_padding"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "pool_kernel": 9}), ValueError, "pool_kernel: window"),
    (lambda x, w, b, kw: (x, w, b, {**kw, "pool_kernel": 16}), ValueError, "255"),
    (lambda x, w, b, kw: (x[..., :2, :2], w, b, {**kw, "padding": 0}), ValueError, "x: padded"),
])
def test_bad_input(mutate, exc, match):
    x, w, b = _good()
    args = mutate(x, w, b, dict(padding=1, pool_kernel=2))
    with pytest.raises(exc, match=match):
        conv_relu_pool(args[0], args[1], args[2], **args[3])


def test_bad_input_under_fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, w, b = _good()
    with FakeTensorMode() as mode:
        fx, fw = mode.from_tensor(x), mode.from_tensor(w)
        with pytest.raises(ValueError, match="x: has 4 channels"):
            conv_relu_pool(fx, fw, None, padding=1, groups=2)


def test_bad_backward_inputs():
    x, w, b = _good()
    out, sw = conv_relu_pool(x, w, b, padding=1)
    args = ([1, 1], [1, 1], [1, 1], 1, [2, 2], [2, 2], [0, 0], False, [True, True, True])
    bw = torch.ops.cnnvis._conv_relu_pool_backward
    with pytest.raises(TypeError, match="switches: expected uint8"):
        bw(torch.ones_like(out), x, w, out, sw.long(), *args)
    with pytest.raises(ValueError, match="switches: expected shape"):
        bw(torch.ones_like(out), x, w, out, sw[:, :, :2], *args)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        bw(torch.ones_like(out)[:, :3], x, w, out, sw, *args)


def test_cpu_rejects_half():
    x, w, b = _good()
    with pytest.raises(TypeError, match="x: dtype Half is not supported on CPU"):
        conv_relu_pool(x.half(), w.half(), b.half(), padding=1)


def test_device_mismatch_names_argument():
    x, w, b = _good()
    with pytest.raises(ValueError, match="weight: on meta"):
        conv_relu_pool(x, w.to("meta"), None, padding=1)


def test_switch_conversion_errors():
    with pytest.raises(TypeError, match="switches: expected a uint8"):
        switches_to_indices(torch.zeros(1, 1, 2, 2, dtype=torch.int64), (4, 4))
    with pytest.raises(ValueError, match="switches: some switch points outside"):
        switches_to_indices(torch.full((1, 1, 2, 2), 3, dtype=torch.uint8), (3, 3))
    with pytest.raises(TypeError, match="indices: expected an int64"):
        indices_to_switches(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), (4, 4))


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(cfg, dtype):
    x, wt, b, kw = _args(cfg, torch.float32, True)
    x, wt, b = (t.cuda().to(dtype).requires_grad_() for t in (x, wt, b))
    out, sw = conv_relu_pool(x, wt, b, **kw)
    expected, idx = ref.conv_relu_pool(x, wt, b, **kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, expected, **tol)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, wt, b), g)
    expected_grads = torch.autograd.grad(expected, (x, wt, b), g)
    for a, e in zip(grads, expected_grads):
        torch.testing.assert_close(a.float(), e.float(), rtol=5e-2, atol=5e-2 * e.abs().max().item())


@pytest.mark.cuda
def test_cuda_opcheck_and_indices():
    x, wt, b, kw = _args(CONFIGS[1], torch.float64, True)
    x, wt, b = x.cuda(), wt.cuda(), b.cuda()
    torch.library.opcheck(torch.ops.cnnvis.conv_relu_pool.default, _op_args(x, wt, b, kw))
    out, sw = conv_relu_pool(x, wt, b, **kw)
    expected, idx = ref.conv_relu_pool(x, wt, b, **kw)
    got = switches_to_indices(sw, _conv_size(x, wt, kw), kw["pool_kernel"], kw["pool_stride"],
                              kw["pool_padding"])
    assert torch.equal(got[expected > 0], idx[expected > 0])
