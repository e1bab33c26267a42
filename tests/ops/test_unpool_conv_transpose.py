"""unpool_conv_transpose: forward (sparse and dense paths) against the reference, backward,
registrations (gradcheck, opcheck, torch.compile), and bad input."""
import pytest
import torch
import torch.nn.functional as F

import cnnvis_ext  # noqa: F401
from cnnvis_ext import _reference as ref
from cnnvis_ext.ops import (conv_relu_pool, indices_to_switches, switches_to_indices,
                            unpool_conv_transpose)

# (N, C_in, H, W, C_out, k, stride, padding, dilation, groups, pool_k, pool_s, pool_p, ceil)
CONFIGS = [
    (2, 3, 12, 12, 4, 3, 1, 1, 1, 1, 2, 2, 0, False),
    (2, 3, 9, 11, 5, 3, 1, 1, 1, 1, 3, 2, 1, True),     # overlapping, padded, ceil
    (1, 4, 10, 13, 6, 5, 2, 2, 1, 2, 2, 2, 0, True),    # stride (output_padding 1), groups
    (3, 2, 10, 9, 3, 3, 1, 2, 2, 1, 3, 1, 0, False),    # dilation, stride-1 overlapping pool
    (2, 4, 8, 8, 4, 3, 1, 1, 1, 4, 1, 1, 0, False),     # depthwise, no pooling
    (1, 3, 11, 7, 2, (3, 1), (1, 2), (1, 0), 1, 1, (2, 3), (1, 2), (1, 1), True),
    (2, 2, 7, 7, 3, 1, 1, 0, 1, 1, 2, 3, 1, False),     # gaps between windows
]
ALGOS = ["sparse", "dense", "auto"]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _sample(cfg, dtype=torch.float64, density=1.0, signed=True):
    """(p, switches, weight, kwargs, indices) from a real conv_relu_pool forward."""
    n, cin, h, w, cout, k, s, p, d, g, pk, ps, pp, ceil = cfg
    x = torch.randn(n, cin, h, w, dtype=dtype)
    wt = torch.randn(cout, cin // g, *_pair(k), dtype=dtype)
    out, sw = conv_relu_pool(x, wt, None, s, p, d, g, pk, ps, pp, ceil)
    conv_size = ref.conv_output_size(x.shape, wt.shape, s, p, d)
    top = torch.randn(out.shape, dtype=dtype) if signed else out.detach().clone() + 0.5
    top = top * (torch.rand(out.shape) < density)
    kw = dict(stride=s, padding=p, dilation=d, groups=g, pool_kernel=pk, pool_stride=ps,
              pool_padding=pp, output_size=conv_size, input_size=(h, w))
    no_pool = _pair(pk) == (1, 1) and _pair(ps) == (1, 1)
    idx = None if no_pool else switches_to_indices(sw, conv_size, pk, ps, pp)
    return top, (None if no_pool else sw), wt, kw, idx


def _expected(top, idx, wt, kw, rectify=True):
    return ref.unpool_conv_transpose(top, idx, wt, kw["stride"], kw["padding"], kw["dilation"],
                                     kw["groups"], kw["output_size"], kw["input_size"], rectify)


def _raw_args(top, sw, wt, kw, rectify=True):
    pk = _pair(kw["pool_kernel"])
    return (top, sw, wt, list(_pair(kw["stride"])), list(_pair(kw["padding"])),
            list(_pair(kw["dilation"])), kw["groups"], list(pk), list(_pair(kw["pool_stride"])),
            list(_pair(kw["pool_padding"])), list(kw["output_size"]), list(kw["input_size"]),
            rectify)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("density, rectify", [(1.0, True), (0.1, False)])
def test_forward_matches_reference(cfg, algorithm, density, rectify):
    top, sw, wt, kw, idx = _sample(cfg, density=density)
    got = unpool_conv_transpose(top, sw, wt, **kw, rectify=rectify, algorithm=algorithm)
    torch.testing.assert_close(got, _expected(top, idx, wt, kw, rectify), rtol=1e-10, atol=1e-10)
    assert got.shape == (top.shape[0], wt.shape[1] * kw["groups"], *kw["input_size"])
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("algorithm", ALGOS)
def test_float32_and_one_hot(algorithm):
    top, sw, wt, kw, idx = _sample(CONFIGS[0], dtype=torch.float32, signed=False)
    one_hot = torch.zeros_like(top)
    one_hot[1, 2, 3, 4] = top[1, 2, 3, 4]
    for t in (top, one_hot):
        got = unpool_conv_transpose(t, sw, wt, **kw, algorithm=algorithm)
        torch.testing.assert_close(got, _expected(t, idx, wt, kw), rtol=1e-5, atol=1e-5)


def test_matches_max_unpool2d_without_collisions():
    top, sw, wt, kw, idx = _sample(CONFIGS[0])
    u = F.max_unpool2d(F.relu(top), idx, 2, 2, output_size=kw["output_size"])
    expected = F.conv_transpose2d(u, wt, None, 1, 1)
    torch.testing.assert_close(unpool_conv_transpose(top, sw, wt, **kw), expected)


def test_overlapping_collisions_sum():
    # Two overlapping windows whose switches name the same position: values add up.
    p = torch.tensor([[[[2.0, 3.0]]]], dtype=torch.float64)
    sw = torch.tensor([[[[2, 0]]]], dtype=torch.uint8)  # window 0 at x=0..2, window 1 at x=2..4
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    out = unpool_conv_transpose(p, sw, w, pool_kernel=(1, 3), pool_stride=(1, 2),
                                output_size=(1, 5), input_size=(1, 5))
    assert out.flatten().tolist() == [0.0, 0.0, 5.0, 0.0, 0.0]
    # ... and the rectification applies to the sum (Zeiler & Fergus: unpool, then rectify)
    p = torch.tensor([[[[-2.0, 3.0]]]], dtype=torch.float64)
    for algorithm in ("sparse", "dense"):
        out = unpool_conv_transpose(p, sw, w, pool_kernel=(1, 3), pool_stride=(1, 2),
                                    output_size=(1, 5), input_size=(1, 5), algorithm=algorithm)
        assert out.flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_channels_last_and_non_contiguous_inputs():
    top, sw, wt, kw, idx = _sample(CONFIGS[1])
    expected = _expected(top, idx, wt, kw)
    big = torch.randn(top.shape[0], top.shape[1] * 2, *top.shape[2:], dtype=top.dtype)
    big[:, ::2] = top
    for t, s in [(top.contiguous(memory_format=torch.channels_last), sw.contiguous()),
                 (big[:, ::2], sw.contiguous(memory_format=torch.channels_last))]:
        for algorithm in ("sparse", "dense"):
            got = unpool_conv_transpose(t, s, wt.transpose(2, 3).contiguous().transpose(2, 3),
                                        **kw, algorithm=algorithm)
            torch.testing.assert_close(got, expected)


def test_empty_batch_and_nan():
    top, sw, wt, kw, idx = _sample(CONFIGS[0])
    out = unpool_conv_transpose(top[:0], sw[:0], wt, **kw)
    assert out.shape == (0, 3, 12, 12)
    expected = ref.unpool_conv_transpose(top[:0], idx[:0], wt, kw["stride"], kw["padding"],
                                         kw["dilation"], kw["groups"], kw["output_size"],
                                         kw["input_size"])
    assert expected.shape == out.shape
    top = top.clone()
    top[0, 1, 2, 2] = float("nan")
    for algorithm in ("sparse", "dense"):
        got = unpool_conv_transpose(top, sw, wt, **kw, algorithm=algorithm)
        assert got.isnan().any() and not got[1].isnan().any()


def test_indices_round_trip_from_max_pool2d():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y = F.relu(F.conv2d(x, w, padding=1))
    out, idx = F.max_pool2d(y, 3, 2, 1, return_indices=True)
    sw = indices_to_switches(idx, (8, 8), 3, 2, 1)
    top = torch.randn_like(out)
    got = unpool_conv_transpose(top, sw, w, padding=1, pool_kernel=3, pool_stride=2,
                                pool_padding=1, output_size=(8, 8), input_size=(8, 8))
    expected = ref.unpool_conv_transpose(top, idx, w, 1, 1, 1, 1, (8, 8), (8, 8))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[2], CONFIGS[4]])
@pytest.mark.parametrize("algorithm", ["sparse", "dense"])
def test_backward_matches_reference(cfg, algorithm):
    top, sw, wt, kw, idx = _sample(cfg, density=0.7)
    top.requires_grad_(True)
    wt.requires_grad_(True)
    got = unpool_conv_transpose(top, sw, wt, **kw, algorithm=algorithm)
    g = torch.randn_like(got)
    gp, gw = torch.autograd.grad(got, (top, wt), g)
    ep, ew = torch.autograd.grad(_expected(top, idx, wt, kw), (top, wt), g)
    torch.testing.assert_close(gp, ep)
    torch.testing.assert_close(gw, ew)


SMALL = [
    (1, 2, 6, 7, 3, 3, 1, 1, 1, 1, 3, 2, 1, True),      # overlapping, padded, ceil
    (1, 2, 7, 6, 2, 3, 2, 1, 1, 2, 2, 2, 0, False),     # stride, groups
    (1, 2, 5, 6, 2, (3, 1), 1, (1, 0), 1, 1, 1, 1, 0, False),  # no pooling
]


@pytest.mark.parametrize("cfg, rectify", [(SMALL[0], True), (SMALL[1], True), (SMALL[2], False)])
def test_gradcheck(cfg, rectify):
    top, sw, wt, kw, _ = _sample(cfg, density=0.6)
    # keep p away from the ReLU kink
    top = torch.where(top.abs() < 0.05, torch.full_like(top, 0.3), top).requires_grad_(True)
    wt.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: unpool_conv_transpose(a, sw, b, **kw, rectify=rectify), (top, wt))


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2], CONFIGS[4]])
def test_opcheck(cfg):
    top, sw, wt, kw, _ = _sample(cfg, density=0.5)
    args = _raw_args(top.requires_grad_(True), sw, wt.requires_grad_(True), kw)
    torch.library.opcheck(torch.ops.cnnvis.unpool_conv_transpose.default, args)
    g = torch.randn(top.shape[0], wt.shape[1] * kw["groups"], *kw["input_size"], dtype=top.dtype)
    torch.library.opcheck(torch.ops.cnnvis._unpool_conv_transpose_backward.default,
                          (g,) + tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                       for a in args) + ([True, True],))


def test_torch_compile_fullgraph():
    top, sw, wt, kw, idx = _sample(CONFIGS[0])
    fn = torch.compile(lambda a: unpool_conv_transpose(a, sw, wt, **kw), fullgraph=True,
                       backend="eager")
    torch.testing.assert_close(fn(top), _expected(top, idx, wt, kw))


# ----------------------------------------------------------------------------- bad input

def _good():
    top, sw, wt, kw, _ = _sample(CONFIGS[0])
    return top, sw, wt, kw


@pytest.mark.parametrize("change, exc, match", [
    (lambda t, s, w, k: (t, s.long(), w, k), TypeError, "switches"),
    (lambda t, s, w, k: (t, s[:, :, :-1], w, k), ValueError, "switches"),
    (lambda t, s, w, k: (t, None, w, k), ValueError, "switches"),
    (lambda t, s, w, k: (t, torch.full_like(s, 7), w, k), ValueError, "switches"),
    (lambda t, s, w, k: (t, s, w, {**k, "output_size": (20, 20)}), ValueError, "output_size"),
    (lambda t, s, w, k: (t, s, w, {**k, "input_size": (15, 15)}), ValueError, "input_size"),
    (lambda t, s, w, k: (t, s, w.float(), k), TypeError, "weight"),
    (lambda t, s, w, k: (t, s, w[:3], k), ValueError, "weight"),
    (lambda t, s, w, k: (t, s, w[0], k), ValueError, "weight"),
    (lambda t, s, w, k: (t[0], s[0], w, k), ValueError, "p"),
    (lambda t, s, w, k: (t.long(), s, w.long(), k), TypeError, "p"),
    (lambda t, s, w, k: (t, s, w, {**k, "stride": 0}), ValueError, "stride"),
    (lambda t, s, w, k: (t, s, w, {**k, "padding": -1}), ValueError, "padding"),
    (lambda t, s, w, k: (t, s, w, {**k, "groups": 0}), ValueError, "groups"),
    (lambda t, s, w, k: (t, s, w, {**k, "pool_kernel": 16, "pool_stride": 2}), ValueError,
     "pool_kernel"),
    (lambda t, s, w, k: (t, s, w, {**k, "pool_padding": 2}), ValueError, "pool_padding"),
    (lambda t, s, w, k: (t, s, w, {**k, "algorithm": "fast"}), ValueError, "algorithm"),
])
def test_bad_input(change, exc, match):
    top, sw, wt, kw = change(*_good())
    with pytest.raises(exc, match=match):
        unpool_conv_transpose(top, sw, wt, **kw)


def test_bad_grad_out():
    top, sw, wt, kw = _good()
    args = _raw_args(top, sw, wt, kw)
    with pytest.raises(ValueError, match="grad_out"):
        torch.ops.cnnvis._unpool_conv_transpose_backward(torch.zeros(1, 3, 4, 4, dtype=top.dtype),
                                                          *args, [True, True])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algorithm", ["sparse", "dense"])
def test_cuda_matches_cpu(dtype, algorithm):
    top, sw, wt, kw, idx = _sample(CONFIGS[1], dtype=torch.float32, density=0.3)
    expected = _expected(top, idx, wt, kw)
    got = unpool_conv_transpose(top.cuda().to(dtype), sw.cuda(), wt.cuda().to(dtype), **kw,
                                algorithm=algorithm)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.float().cpu(), expected, rtol=tol, atol=tol * 10)


@pytest.mark.cuda
def test_cuda_backward():
    top, sw, wt, kw, idx = _sample(CONFIGS[2], dtype=torch.float64, density=0.5)
    top, wt = top.cuda().requires_grad_(True), wt.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: unpool_conv_transpose(a, sw.cuda(), b, **kw), (top, wt))


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("algorithm", ALGOS)
def test_cuda_float64_every_config(cfg, algorithm):
    top, sw, wt, kw, idx = _sample(cfg, density=0.2)
    expected = _expected(top, idx, wt, kw)
    got = unpool_conv_transpose(top.cuda(), None if sw is None else sw.cuda(), wt.cuda(), **kw,
                                algorithm=algorithm)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
def test_cuda_one_hot_empty_and_bad_switches():
    top, sw, wt, kw, idx = _sample(CONFIGS[0], dtype=torch.float32, signed=False)
    one_hot = torch.zeros_like(top)
    one_hot[1, 2, 3, 4] = top[1, 2, 3, 4]
    got = unpool_conv_transpose(one_hot.cuda(), sw.cuda(), wt.cuda(), **kw)  # auto: sparse
    torch.testing.assert_close(got.cpu(), _expected(one_hot, idx, wt, kw), rtol=1e-5, atol=1e-5)
    assert unpool_conv_transpose(top[:0].cuda(), sw[:0].cuda(), wt.cuda(), **kw).shape == (0, 3, 12, 12)
    with pytest.raises(ValueError, match="switches"):
        unpool_conv_transpose(top.cuda(), torch.full_like(sw, 7).cuda(), wt.cuda(), **kw)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_backward_low_precision(dtype):
    top, sw, wt, kw, idx = _sample(CONFIGS[1], dtype=torch.float32, density=0.7)
    top.requires_grad_(True)
    wt.requires_grad_(True)
    g = torch.randn(top.shape[0], wt.shape[1], *kw["input_size"])
    ep, ew = torch.autograd.grad(_expected(top, idx, wt, kw), (top, wt), g)
    tc = top.detach().cuda().to(dtype).requires_grad_(True)
    wc = wt.detach().cuda().to(dtype).requires_grad_(True)
    gp, gw = torch.autograd.grad(unpool_conv_transpose(tc, sw.cuda(), wc, **kw), (tc, wc),
                                 g.cuda().to(dtype))
    torch.testing.assert_close(gp.float().cpu(), ep, rtol=5e-2, atol=5e-1)
    torch.testing.assert_close(gw.float().cpu(), ew, rtol=5e-2, atol=5e-1)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("density", [1.0, 0.02])
def test_bad_switch_values_raise_on_every_path(algorithm, density):
    top, sw, wt, kw = _good()
    top = top * (torch.rand(top.shape) < density)
    top[0, 0, 0, 0] = 1.0
    bad = sw.clone()
    bad[0, 0, 0, 0] = 9  # a 2x2 window has positions 0..3
    with pytest.raises(ValueError, match="switches"):
        unpool_conv_transpose(top, bad, wt, **kw, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("dilation", [1, 2])
def test_wide_layers_float32(algorithm, dilation):
    # Channel counts that exercise the vector accumulators of the switch-sparse
    # scatter (64-float chunks, 8-float vectors, scalar tails).
    torch.manual_seed(5)
    cfg = (2, 37, 12, 11, 70, 3, 1, dilation, dilation, 1, 2, 2, 0, False)
    top, sw, wt, kw, idx = _sample(cfg, torch.float32)
    got = unpool_conv_transpose(top, sw, wt, **kw, algorithm=algorithm)
    expected = _expected(top.double(), idx, wt.double(), kw)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-3)


# The CPU scatter's formulations (csrc/cpu/switch_sparse.cpp): column mode (kW * C_in < 16:
# a whole filter per column) masked-dense (2x2 or no pooling, short columns, dense maps)
# or per nonzero (sparse maps, other pools, long columns), and the run mode in several
# chunks per run (kW * C_in > 256 floats).
SCATTER_CONFIGS = [
    (2, 3, 14, 13, 24, 3, 1, 1, 1, 1, 1, 1, 0, False),   # column, no pooling (K = 1)
    (1, 3, 16, 15, 20, 3, 1, 1, 1, 1, 2, 2, 0, True),    # column, 2x2 pool, odd map
    (2, 3, 13, 14, 9, 7, 1, 3, 1, 1, 2, 2, 0, False),    # column of 147 values (10 vectors)
    (1, 2, 15, 17, 11, 3, 1, 2, (1, 2), 1, 3, 3, 0, True),  # column, dilation_w 2, 3x3 pool
    (1, 5, 12, 12, 7, (5, 3), 2, 2, 1, 1, 2, 2, 1, True),  # column, stride 2, padded pool
    (1, 100, 9, 10, 12, 3, 1, 1, 1, 1, 2, 2, 0, False),  # runs of 300 floats: two chunks
    # Wide maps, where neighbouring positions are grouped in pairs (at least
    # 16 * K^2 nonzeros at both): pair groups, single groups of either
    # position, targets on band and map edges, an odd last position.
    (1, 16, 12, 14, 600, 3, 1, 1, 1, 1, 2, 2, 0, False),  # 2x2 pools, runs of 3 vectors
    (1, 8, 13, 13, 560, 3, 1, 1, 1, 1, 2, 2, 0, True),   # PW odd (ceil mode)
    (1, 20, 9, 11, 40, 3, 1, 1, 1, 1, 1, 1, 0, False),   # no pooling (K = 1): runs of 60
    (1, 6, 11, 12, 300, 3, 2, 2, 1, 1, 2, 2, 0, False),  # stride 2, padding 2, runs of 18
    # Many images (at least 2 per thread): one task per image, its grouping
    # fused with its products.
    (5, 24, 10, 9, 40, 3, 1, 1, 1, 1, 2, 2, 0, True),
]


@pytest.mark.parametrize("cfg", SCATTER_CONFIGS)
@pytest.mark.parametrize("density", [1.0, 0.3, 0.01])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rectify", [True, False])
def test_scatter_formulations_match_reference(cfg, density, dtype, rectify):
    torch.manual_seed(11)
    top, sw, wt, kw, idx = _sample(cfg, dtype, density=density)
    got = unpool_conv_transpose(top, sw, wt, **kw, rectify=rectify, algorithm="sparse")
    expected = _expected(top.double(), idx, wt.double(), kw, rectify)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.double(), expected, **tol)


# Few images of few rows and many input channels (at least 128 per thread):
# the scatter's tasks split the input channels (per-tap runs, one chunk of
# channels per task) instead of bands of output rows.
SPLIT_CONFIGS = [
    (1, 390, 10, 9, 48, 3, 1, 1, 1, 1, 2, 2, 0, True),    # single groups, 2 or 3 chunks
    (1, 520, 8, 8, 300, 3, 1, 1, 1, 1, 2, 2, 0, False),   # pair groups, 4 or 3 chunks, padded
    (2, 300, 9, 8, 40, (3, 5), 2, (1, 2), 1, 1, 1, 1, 0, False),  # no pooling, stride 2
]


@pytest.mark.parametrize("cfg", SPLIT_CONFIGS)
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [1.0, 0.3])
def test_scatter_channel_split_matches_reference(cfg, threads, dtype, density):
    torch.manual_seed(12)
    top, sw, wt, kw, idx = _sample(cfg, dtype, density=density)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = unpool_conv_transpose(top, sw, wt, **kw, algorithm="sparse")
    finally:
        torch.set_num_threads(before)
    expected = _expected(top.double(), idx, wt.double(), kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.double(), expected, **tol)


# Column mode (two configs), run mode with single groups (the float32 AVX-512
# grouping compresses per switch slot), run mode with pairs, and one task per
# image.
@pytest.mark.parametrize("cfg", SCATTER_CONFIGS[1:3] + SCATTER_CONFIGS[5:7] + SCATTER_CONFIGS[-1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scatter_nan_and_bad_switch(cfg, dtype):
    top, sw, wt, kw, idx = _sample(cfg, dtype)
    top[0, 1, 0, 1] = float("nan")  # passes the rectification, as torch.relu lets it
    got = unpool_conv_transpose(top, sw, wt, **kw, algorithm="sparse")
    expected = _expected(top.double(), idx, wt.double(), kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.double(), expected, equal_nan=True, **tol)
    assert got.isnan().any()
    top[0, 2, 1, 0] = 1.0
    bad = sw.clone()
    bad[0, 2, 1, 0] = 4  # a 2x2 window has positions 0..3
    with pytest.raises(ValueError, match="switches"):
        unpool_conv_transpose(top.nan_to_num(), bad, wt, **kw, algorithm="sparse")
