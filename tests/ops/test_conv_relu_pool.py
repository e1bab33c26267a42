"""conv_relu_pool and _conv_relu_pool_backward: the shared op checks against ops.reference, the
backward's formulations, switches, the modules and fuse()."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext.nn import ConvReLU2d, ConvReLUPool2d, fuse
from cnnvis_ext.ops import conv_relu_pool, indices_to_switches, reference as ref, switches_to_indices

from .op_tester import Bad, OpTester, Sample

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
# A small shape of the switch-sparse formulation, for gradcheck.
SMALL_SPARSE = (1, 6, 6, 6, 3, 3, 1, 1, 1, 1, 2, 2, 0, False)


def _args(cfg, dtype=torch.float64, bias=True, requires_grad=False):
    n, cin, h, w, cout, k, s, p, d, g, pk, ps, pp, ceil = cfg
    k2 = k if isinstance(k, tuple) else (k, k)
    x = torch.randn(n, cin, h, w, dtype=dtype, requires_grad=requires_grad)
    wt = torch.randn(cout, cin // g, *k2, dtype=dtype, requires_grad=requires_grad)
    b = torch.randn(cout, dtype=dtype, requires_grad=requires_grad) if bias else None
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g, pool_kernel=pk,
                          pool_stride=ps, pool_padding=pp, ceil_mode=ceil)


def _sample(cfg, bias=True, scale=1.0):
    x, wt, b, kw = _args(cfg, bias=bias)
    return Sample((x * scale, wt, b), kw, grad=(0, 1, 2) if bias else (0, 1),
                  name=f"{'-'.join(map(str, cfg))}-{'bias' if bias else 'nobias'}")


def _conv_size(x, wt, kw):
    return ref.conv_output_size(x.shape, wt.shape, kw.get("stride", 1), kw.get("padding", 0),
                                kw.get("dilation", 1))


class TestConvReLUPool(OpTester):
    op = conv_relu_pool
    reference = ref.conv_relu_pool
    samples = [_sample(cfg, bias) for cfg in CONFIGS + SPARSE_CONFIGS for bias in (True, False)]
    # conv outputs away from 0 and from ties, so that finite differences stay on one branch
    gradcheck_samples = [_sample(cfg, scale=2.0) for cfg in CONFIGS[:6] + [SMALL_SPARSE]]
    opcheck_samples = [_sample(cfg) for cfg in CONFIGS + SPARSE_CONFIGS[:2]]
    layout_samples = [_sample(CONFIGS[0]), _sample(CONFIGS[1]), _sample(SPARSE_CONFIGS[0])]
    empty_samples = layout_samples
    compile_samples = [_sample(CONFIGS[1]), _sample(CONFIGS[2], bias=False)]
    cuda_samples = [_sample(cfg) for cfg in CONFIGS]
    cuda_dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    cuda_reference_on_device = True

    def cuda_tol(self, dtype):
        return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)

    def compare(self, got, expected, sample, tol):
        out, sw = got
        e_out, e_idx = expected
        torch.testing.assert_close(out, e_out, equal_nan=True, **tol)
        assert sw.dtype == torch.uint8 and sw.shape == out.shape
        x, wt, _ = sample.args
        kw = sample.kwargs
        # switches_to_indices also checks that every switch points inside the map
        idx = switches_to_indices(sw, _conv_size(x, wt, kw), kw.get("pool_kernel", 2),
                                  kw.get("pool_stride"), kw.get("pool_padding", 0))
        if out.dtype == torch.float64:  # lower precisions may round near-ties the other way
            positive = e_out > 0
            assert torch.equal(idx[positive], e_idx[positive])

    def compare_grads(self, got, expected, tol):
        if expected and expected[0].dtype in (torch.float16, torch.bfloat16):
            for g, e in zip(got, expected):
                torch.testing.assert_close(g.float(), e.float(), rtol=5e-2,
                                           atol=5e-2 * e.abs().max().item())
            return
        super().compare_grads(got, expected, tol)

# ---------------------------------------------------------------- the backward's formulations

@pytest.fixture(params=["sparse", "dense"])
def backward_path(request, monkeypatch):
    """Runs a test under each forced formulation of the CPU backward (CNNVIS_CONV_BACKWARD);
    the automatic choice runs in TestConvReLUPool."""
    monkeypatch.setenv("CNNVIS_CONV_BACKWARD", request.param)
    return request.param


@pytest.mark.parametrize("cfg", CONFIGS + SPARSE_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_backward_paths_match_reference(cfg, bias, backward_path):
    TestConvReLUPool().check_against_reference(_sample(cfg, bias))


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], SMALL_SPARSE])
def test_backward_paths_gradcheck(cfg, backward_path):
    TestConvReLUPool().test_gradcheck(_sample(cfg, scale=2.0))


@pytest.mark.parametrize("cfg", CONFIGS[:4] + SPARSE_CONFIGS[:2])
@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False], [True, False, True]])
def test_opcheck_backward_masks(cfg, mask, backward_path):
    x, wt, b, kw = _args(cfg, torch.float32, True)
    out, sw = conv_relu_pool(x, wt, b, **kw)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    args = (pair(kw["stride"]), pair(kw["padding"]), pair(kw["dilation"]), kw["groups"],
            pair(kw["pool_kernel"]), pair(kw["pool_stride"]), pair(kw["pool_padding"]),
            kw["ceil_mode"], mask)
    torch.library.opcheck(torch.ops.cnnvis._conv_relu_pool_backward.default,
                          (torch.randn_like(out), x, wt, out, sw) + args)


def test_empty_batch_backward_paths(backward_path):
    TestConvReLUPool().test_empty_batch(_sample(SPARSE_CONFIGS[0]))


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


@pytest.fixture(params=["auto", "sparse", "dense"])
def any_backward_path(request, monkeypatch):
    monkeypatch.setenv("CNNVIS_CONV_BACKWARD", request.param)
    return request.param


def test_backward_nan_gradient_propagates_like_pytorch(any_backward_path):
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
    sample = Sample((x.detach(), wt.detach(), None), kw, grad=(0, 1))
    TestConvReLUPool().check_against_reference(sample, tol=dict(rtol=tol, atol=tol))


def test_sparse_backward_float32_large_channels(any_backward_path):
    # The vector accumulators (8 floats, 64-float tiles) and their tails.
    torch.manual_seed(3)
    x = torch.randn(3, 37, 10, 9)
    wt = torch.randn(70, 37, 3, 3) * 0.1
    _check_grads_against_reference(x, wt, 1e-4, padding=1, pool_kernel=2)


def test_sparse_backward_wide_layer_pairs(any_backward_path):
    # Enough channels that the input gradient's scatter groups neighbouring
    # pooled positions in pairs (see switch_sparse.cpp, kPairEntries).
    torch.manual_seed(4)
    x = torch.randn(1, 8, 12, 11, dtype=torch.float64)
    wt = torch.randn(600, 8, 3, 3, dtype=torch.float64)
    _check_grads_against_reference(x, wt, 1e-10, padding=1, pool_kernel=2, ceil_mode=True)


def test_sparse_backward_many_images(any_backward_path):
    # At least 2 images per thread: the input gradient's scatter runs one task
    # per image, grouping fused with the products.
    torch.manual_seed(5)
    x = torch.randn(6, 16, 16, 15, dtype=torch.float64)
    wt = torch.randn(24, 16, 3, 3, dtype=torch.float64)
    _check_grads_against_reference(x, wt, 1e-10, padding=1, pool_kernel=2)


# ---------------------------------------------------------------- switches and what is saved

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


def test_output_size_matches_the_op():
    for cfg in CONFIGS:
        x, wt, b, kw = _args(cfg)
        conv, pooled = cnnvis_ext.ops.conv_relu_pool_output_size(x.shape, wt.shape, **kw)
        assert conv == _conv_size(x, wt, kw)
        assert pooled == tuple(conv_relu_pool(x, wt, b, **kw)[0].shape[2:])
    with pytest.raises(ValueError, match="x: padded input of size"):
        cnnvis_ext.ops.conv_relu_pool_output_size((1, 3, 2, 2), (4, 3, 5, 5))


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


def test_switch_conversion_errors():
    with pytest.raises(TypeError, match="switches: expected a uint8"):
        switches_to_indices(torch.zeros(1, 1, 2, 2, dtype=torch.int64), (4, 4))
    with pytest.raises(ValueError, match="switches: some switch points outside"):
        switches_to_indices(torch.full((1, 1, 2, 2), 3, dtype=torch.uint8), (3, 3))
    with pytest.raises(TypeError, match="indices: expected an int64"):
        indices_to_switches(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), (4, 4))


# ---------------------------------------------------------------- bad input

def _good():
    return torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)


def _bad(exc, match, x=None, w=None, b=None, fake=True, name="", **change):
    gx, gw, gb = _good()
    kw = dict(padding=1, pool_kernel=2)
    kw.update(change)
    args = (gx if x is None else x, gw if w is None else w, gb if b is None else b)
    if b is False:
        args = args[:2] + (None,)
    return Bad(lambda x, w, b: conv_relu_pool(x, w, b, **kw), args, exc, match, fake,
               name=name or match[:40])


_X, _W, _B = _good()
_OUT, _SW = conv_relu_pool(_X, _W, _B, padding=1)
_BW_ARGS = ([1, 1], [1, 1], [1, 1], 1, [2, 2], [2, 2], [0, 0], False, [True, True, True])


def _bad_backward(exc, match, grad_out=_OUT, switches=_SW):
    return Bad(lambda g, x, w, o, s: torch.ops.cnnvis._conv_relu_pool_backward(g, x, w, o, s,
                                                                               *_BW_ARGS),
               (torch.ones_like(grad_out), _X, _W, _OUT, switches), exc, match)


TestConvReLUPool.bad = [
    _bad(ValueError, "x: expected a 4-D", x=_X[0]),
    _bad(ValueError, "weight: expected a 4-D", w=_W[0]),
    _bad(TypeError, "weight: dtype", w=_W.double()),
    _bad(TypeError, "bias: dtype", b=_B.double()),
    _bad(TypeError, "x: expected a floating", x=_X.long()),
    _bad(ValueError, "bias: expected shape", b=_B[:3]),
    _bad(ValueError, "x: has 4 channels", groups=2),
    _bad(ValueError, "weight: C_out", w=_W[:5], b=_B[:5], groups=2),
    _bad(ValueError, "groups", groups=0),
    _bad(ValueError, "stride", stride=0),
    _bad(ValueError, "padding", padding=-1),
    _bad(ValueError, "dilation", dilation=0),
    _bad(ValueError, "pool_kernel", pool_kernel=0),
    _bad(ValueError, "pool_stride", pool_stride=-2),
    _bad(ValueError, "pool_padding", pool_padding=2),
    _bad(ValueError, "pool_kernel: window", pool_kernel=9),
    _bad(ValueError, "255", pool_kernel=16),
    _bad(ValueError, "x: padded", x=_X[..., :2, :2], padding=0),
    _bad(ValueError, "weight: on meta", w=_W.to("meta"), b=False),
    _bad(ValueError, "weight: expected non-empty", x=_X[:, :0], w=_W[:, :0]),
    _bad(TypeError, "x: dtype Half is not supported on CPU", x=_X.half(), w=_W.half(),
         b=_B.half(), fake=False),  # the CPU kernel's dtypes
    _bad(TypeError, "stride: expected an int or a pair of ints", stride=True),
    _bad(ValueError, "stride: expected an int or a pair of ints", stride=(1, 2, 3),
         name="stride-triple"),
    _bad(TypeError, "weight: expected a tensor, got list", w=[[1.0]]),
    # sizes past int64 or 2^31: an error naming the argument, not a wrapped product passing the
    # 255-positions check or a message blaming another argument with a negative size
    _bad(ValueError, "pool_kernel: expected values <= 2147483647", pool_kernel=[2 ** 32, 2 ** 32],
         name="pool_kernel-2^32"),
    _bad(ValueError, "pool_kernel: a window of .* more than 255", pool_kernel=[255, 2],
         name="pool_kernel-255x2"),
    _bad(ValueError, "dilation: expected values <= 2147483647", dilation=2 ** 62),
    _bad(ValueError, "padding: expected values <= 2147483647", padding=2 ** 62),
    _bad(ValueError, "stride: expected values <= 2147483647", stride=[1, 2 ** 40]),
    _bad(ValueError, "pool_stride: expected values <= 2147483647", pool_stride=2 ** 63 - 1),
    _bad(ValueError, "padding: expected values <= 2147483647", padding=2 ** 64,
         name="padding-2^64"),
    _bad(ValueError, r"x: padded input of size \(8, 8\) is smaller than the dilated kernel "
         r"\(4294967295, 4294967295\)", dilation=2 ** 31 - 1, padding=0, name="dilation-2^31-1"),
    _bad_backward(TypeError, "switches: expected uint8", switches=_SW.long()),
    _bad_backward(ValueError, "switches: expected shape", switches=_SW[:, :, :2]),
    _bad_backward(ValueError, "grad_out: expected shape", grad_out=_OUT[:, :3]),
]


@pytest.mark.parametrize("path", ["sparse", "dense", "auto"])
@pytest.mark.parametrize("bad_switch", [4, 255])
def test_backward_refuses_switches_outside_the_window(monkeypatch, path, bad_switch):
    # A 2x2 window has switches 0..3: both backward formulations (the switch-sparse one and the
    # dense gather, CNNVIS_CONV_BACKWARD) must refuse others, not drop their gradient.
    monkeypatch.setenv("CNNVIS_CONV_BACKWARD", path)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(16, 4, 3, 3)
    out, sw = torch.ops.cnnvis.conv_relu_pool(x, w, None, [1, 1], [1, 1], [1, 1], 1, [2, 2],
                                              [2, 2], [0, 0], False)
    sw = sw.clone()
    sw[1, 3, 2, 1] = bad_switch
    with pytest.raises(ValueError, match="switches: some switch points outside"):
        torch.ops.cnnvis._conv_relu_pool_backward(torch.ones_like(out), x, w, out, sw, *_BW_ARGS)


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
def test_cuda_opcheck_and_indices():
    x, wt, b, kw = _args(CONFIGS[1], torch.float64, True)
    x, wt, b = x.cuda(), wt.cuda(), b.cuda()
    TestConvReLUPool().test_opcheck(Sample((x, wt, b), kw, grad=(0, 1, 2)))
    out, sw = conv_relu_pool(x, wt, b, **kw)
    expected, idx = ref.conv_relu_pool(x, wt, b, **kw)
    got = switches_to_indices(sw, _conv_size(x, wt, kw), kw["pool_kernel"], kw["pool_stride"],
                              kw["pool_padding"])
    assert torch.equal(got[expected > 0], idx[expected > 0])
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




@pytest.mark.parametrize("pool_kernel,bias", [(2, True), (3, False), (1, True)])
def test_double_backward(pool_kernel, bias):
    # create_graph: the gradients are differentiable again (a gradient penalty through the op);
    # the backward op has no derivative, so they come from the plain-PyTorch formula
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)
    assert torch.autograd.gradgradcheck(
        lambda *t: conv_relu_pool(t[0], t[1], t[2] if bias else None, padding=1,
                                  pool_kernel=pool_kernel, pool_stride=2)[0], inputs)
