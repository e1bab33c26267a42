"""unpool_conv_transpose and _unpool_conv_transpose_backward: the shared op checks against
ops.reference (sparse and dense paths), and the scatter-specific ones."""
import pytest
import torch
import torch.nn.functional as F

from cnnvis_ext.ops import (conv_relu_pool, indices_to_switches, reference as ref,
                            switches_to_indices, unpool_conv_transpose)

from .op_tester import Bad, OpTester, Sample

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
SMALL = [
    (1, 2, 6, 7, 3, 3, 1, 1, 1, 1, 3, 2, 1, True),      # overlapping, padded, ceil
    (1, 2, 7, 6, 2, 3, 2, 1, 1, 2, 2, 2, 0, False),     # stride, groups
    (1, 2, 5, 6, 2, (3, 1), 1, (1, 0), 1, 1, 1, 1, 0, False),  # no pooling
]


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


def _op_sample(cfg, algorithm="auto", density=1.0, rectify=True, top=None):
    p, sw, wt, kw, _ = _sample(cfg, density=density)
    p = p if top is None else top(p)
    return Sample((p, sw, wt), dict(kw, rectify=rectify, algorithm=algorithm), grad=(0, 2),
                  batched=(0, 1), name=f"{'-'.join(map(str, cfg))}-{algorithm}-d{density}-r{rectify}")


def _expected(top, idx, wt, kw, rectify=True):
    return ref.unpool_conv_transpose(top, idx, wt, kw["stride"], kw["padding"], kw["dilation"],
                                     kw["groups"], kw["output_size"], kw["input_size"], rectify)


def reference(p, switches, weight, stride=1, padding=0, dilation=1, groups=1, pool_kernel=2,
              pool_stride=None, pool_padding=0, output_size=None, input_size=None, rectify=True,
              algorithm="auto"):
    """ops.reference.unpool_conv_transpose called as the op is (switches, not indices)."""
    idx = None if switches is None else switches_to_indices(
        switches, output_size, pool_kernel, pool_stride, pool_padding)
    return ref.unpool_conv_transpose(p, idx, weight, stride, padding, dilation, groups,
                                     output_size, input_size, rectify)


def _raw_args(top, sw, wt, kw, rectify=True):
    pk = _pair(kw["pool_kernel"])
    return (top, sw, wt, list(_pair(kw["stride"])), list(_pair(kw["padding"])),
            list(_pair(kw["dilation"])), kw["groups"], list(pk), list(_pair(kw["pool_stride"])),
            list(_pair(kw["pool_padding"])), list(kw["output_size"]), list(kw["input_size"]),
            rectify)


def _away_from_kink(p):
    return torch.where(p.abs() < 0.05, torch.full_like(p, 0.3), p)


class TestUnpoolConvTranspose(OpTester):
    op = unpool_conv_transpose
    reference = reference
    samples = [_op_sample(cfg, algorithm, density, rectify) for cfg in CONFIGS for algorithm in ALGOS
               for density, rectify in [(1.0, True), (0.1, False)]]
    gradcheck_samples = [_op_sample(cfg, "auto", 0.6, rectify, _away_from_kink)
                         for cfg, rectify in [(SMALL[0], True), (SMALL[1], True), (SMALL[2], False)]]
    opcheck_samples = [_op_sample(cfg, density=0.5) for cfg in (CONFIGS[0], CONFIGS[2], CONFIGS[4])]
    layout_samples = [_op_sample(CONFIGS[1], algorithm) for algorithm in ("sparse", "dense")]
    empty_samples = [_op_sample(CONFIGS[0])]
    compile_samples = [_op_sample(CONFIGS[0])]
    cuda_samples = [_op_sample(cfg, algorithm, 0.2) for cfg in CONFIGS for algorithm in ALGOS]

    def cuda_tol(self, dtype):
        return {torch.float64: dict(rtol=1e-10, atol=1e-10),
                torch.float32: dict(rtol=1e-4, atol=1e-3)}.get(dtype, dict(rtol=5e-2, atol=5e-1))

    def compare(self, got, expected, sample, tol):
        super().compare(got, expected, sample, tol)
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


def test_nan_on_both_paths():
    top, sw, wt, kw, idx = _sample(CONFIGS[0])
    top[0, 1, 2, 2] = float("nan")
    for algorithm in ("sparse", "dense"):
        got = unpool_conv_transpose(top, sw, wt, **kw, algorithm=algorithm)
        assert got.isnan().any() and not got[1].isnan().any()



# ----------------------------------------------------------------------------- bad input

def _bad(change, exc, match, fake=True, name=""):
    top, sw, wt, kw, _ = _sample(CONFIGS[0])
    t, s, w, k = change(top, sw, wt, kw)
    return Bad(lambda t, s, w: unpool_conv_transpose(t, s, w, **k), (t, s, w), exc, match, fake,
               name=name or match)


TestUnpoolConvTranspose.bad = [
    _bad(lambda t, s, w, k: (t, s.long(), w, k), TypeError, "switches", name="switches-int64"),
    _bad(lambda t, s, w, k: (t, s[:, :, :-1], w, k), ValueError, "switches", name="switches-shape"),
    _bad(lambda t, s, w, k: (t, None, w, k), ValueError, "switches", name="switches-none"),
    _bad(lambda t, s, w, k: (t, torch.full_like(s, 7), w, k), ValueError, "switches",
         fake=False, name="switches-value"),  # values: only the kernels read them
    _bad(lambda t, s, w, k: (t, s, w, {**k, "output_size": (20, 20)}), ValueError, "output_size"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "input_size": (15, 15)}), ValueError, "input_size"),
    _bad(lambda t, s, w, k: (t, s, w.float(), k), TypeError, "weight", name="weight-dtype"),
    _bad(lambda t, s, w, k: (t, s, w[:3], k), ValueError, "weight", name="weight-c_out"),
    _bad(lambda t, s, w, k: (t, s, w[0], k), ValueError, "weight", name="weight-3d"),
    _bad(lambda t, s, w, k: (t[0], s[0], w, k), ValueError, "p", name="p-3d"),
    _bad(lambda t, s, w, k: (t.long(), s, w.long(), k), TypeError, "p", name="p-int64"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "stride": 0}), ValueError, "stride"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "padding": -1}), ValueError, "padding"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "groups": 0}), ValueError, "groups"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "pool_kernel": 16, "pool_stride": 2}), ValueError,
         "pool_kernel"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "pool_padding": 2}), ValueError, "pool_padding"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "algorithm": "fast"}), ValueError, "algorithm"),
    _bad(lambda t, s, w, k: ([1.0], s, w, k), TypeError, "p: expected a tensor, got list"),
    _bad(lambda t, s, w, k: (t, s, w, {**k, "output_size": (12, 12, 1)}), ValueError,
         "output_size: expected an int or a pair of ints", name="output_size-triple"),
]
_TOP, _SW, _WT, _KW, _ = _sample(CONFIGS[0])
TestUnpoolConvTranspose.bad.append(Bad(
    lambda g, *args: torch.ops.cnnvis._unpool_conv_transpose_backward(g, *args, [True, True]),
    (torch.zeros(1, 3, 4, 4, dtype=_TOP.dtype),) + _raw_args(_TOP, _SW, _WT, _KW),
    ValueError, "grad_out"))


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
def test_cuda_gradcheck():
    top, sw, wt, kw, idx = _sample(CONFIGS[2], dtype=torch.float64, density=0.5)
    top, wt = top.cuda().requires_grad_(True), wt.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: unpool_conv_transpose(a, sw.cuda(), b, **kw), (top, wt))


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


def _good():
    top, sw, wt, kw, _ = _sample(CONFIGS[0])
    return top, sw, wt, kw


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


@pytest.mark.parametrize("pooled", [True, False])
def test_double_backward(pooled):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=g)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    pk = 2 if pooled else 1
    out, sw = conv_relu_pool(x, w.detach(), None, padding=1, pool_kernel=pk)
    p = torch.randn(out.shape, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda a, c: unpool_conv_transpose(a, sw if pooled else None, c, padding=1, pool_kernel=pk,
                                           output_size=(6, 6), input_size=(6, 6)), (p, w))
