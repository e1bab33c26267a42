"""regularize_ against the step-by-step reference in _reference.py."""
import pytest
import torch

import cnnvis_ext
from cnnvis_ext import _reference as R
from cnnvis_ext import ops

KWARGS = [
    dict(),
    dict(lr=0.0),
    dict(lr=0.5, decay=0.1),
    dict(lr=0.0, decay=0.5),
    dict(blur_sigma=0.5),
    dict(blur_sigma=3.0),                 # kernel wider than the small images
    dict(norm_pct=30),
    dict(contrib_pct=40),
    dict(norm_pct=100),
    dict(contrib_pct=100, lr=0.0),
    dict(lo=0.0, hi=0.2),
    dict(lo=-0.3, hi=-0.3),
    dict(norm_pct=12.5, contrib_pct=50, lo=-1.0),
    dict(lr=0.3, decay=0.01, blur_sigma=1.0, norm_pct=20, contrib_pct=25, lo=-0.5, hi=0.7),
]
SHAPES = [(3, 3, 9, 11), (1, 1, 1, 1), (2, 4, 1, 7), (2, 3, 16, 5), (0, 3, 4, 4)]


def _run_both(x, g, **kw):
    a = x.clone()
    out = ops.regularize_(a, g, **kw)
    assert out is a
    b = R.regularize_(x.clone(), g, **kw)
    return a, b


@pytest.mark.parametrize("kw", KWARGS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_step_by_step_reference(kw, shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    g = torch.randn_like(x)
    a, b = _run_both(x, g, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, b, **tol)
    assert torch.equal(a == 0, b == 0)  # the same pixels were clipped


def test_percentile_selection_is_exact_on_a_larger_image():
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    g = torch.randn_like(x)
    for pct in (0.1, 1, 10, 33.3, 50, 90, 99.9):
        a, b = _run_both(x, g, lr=0.2, norm_pct=pct, contrib_pct=pct / 2)
        assert torch.equal(a == 0, b == 0), pct  # the selection is exact
        # the step x + lr * g may round once differently (fused multiply-add or not)
        torch.testing.assert_close(a, b, rtol=0, atol=4 * torch.finfo(x.dtype).eps)


def test_clips_the_expected_share_of_pixels():
    x = torch.randn(1, 3, 40, 50, dtype=torch.float64)
    ops.regularize_(x, torch.zeros_like(x), norm_pct=25)
    zeroed = (x.abs().sum(1) == 0).sum().item()
    assert zeroed == 500  # 25 % of 2000 distinct norms are strictly below the quantile


def test_ties_are_kept():
    x = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    ops.regularize_(x, torch.zeros_like(x), lr=0.0, norm_pct=80)
    assert (x == 1).all()  # all norms equal: none strictly below the quantile


def test_nan_image_is_not_clipped():
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    y = x.clone()
    ops.regularize_(y, torch.zeros_like(y), lr=0.0, norm_pct=50)
    assert torch.equal(y[0].isnan(), x[0].isnan()) and (y[0].nan_to_num() == x[0].nan_to_num()).all()
    assert (y[1] == 0).any()


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_x_is_updated_in_place(layout):
    base = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 3, 20, 12, dtype=torch.float64)[:, :, ::2]
    g = torch.randn(x.shape, dtype=torch.float64)
    ref = R.regularize_(x.clone(), g, lr=0.1, blur_sigma=0.8, norm_pct=10, hi=0.5)
    ptr = x.data_ptr()
    ops.regularize_(x, g, lr=0.1, blur_sigma=0.8, norm_pct=10, hi=0.5)
    assert x.data_ptr() == ptr
    torch.testing.assert_close(x, ref)
    if layout == "channels_last":
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_opcheck():
    x = torch.randn(2, 3, 6, 7)
    g = torch.randn_like(x)
    for args in [(0.1, 0.01, 0.0, 10.0, 20.0, -1.0, 1.0), (1.0, 0.0, 1.0, 0.0, 0.0, float("-inf"), float("inf"))]:
        torch.library.opcheck(torch.ops.cnnvis.regularize_.default, (x.clone(), g) + args)


def test_torch_compile_fullgraph():
    x = torch.randn(2, 3, 8, 8)
    g = torch.randn_like(x)

    def step(t, d):
        ops.regularize_(t, d, lr=0.5, norm_pct=20, lo=-1, hi=1)
        return t * 2

    y = torch.compile(step, fullgraph=True, backend="aot_eager")(x.clone(), g)
    torch.testing.assert_close(y, R.regularize_(x.clone(), g, lr=0.5, norm_pct=20, lo=-1, hi=1) * 2)


def test_top_level_export():
    assert cnnvis_ext.regularize_ is ops.regularize_


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randn(3, 4, 4)), ValueError, "x: expected a 4-D"),
    (dict(x=torch.ones(1, 1, 3, 3, dtype=torch.int64)), TypeError, "x: expected a floating"),
    (dict(grad=torch.randn(1, 1, 3, 4)), ValueError, "grad: expected the shape of x"),
    (dict(grad=torch.randn(1, 1, 3, 3, dtype=torch.float64)), TypeError, "grad: dtype"),
    (dict(lr=float("nan")), ValueError, "lr: expected a finite value"),
    (dict(decay=1.5), ValueError, r"decay: expected a value in \[0, 1\]"),
    (dict(decay=-0.1), ValueError, "decay:"),
    (dict(blur_sigma=-1.0), ValueError, "blur_sigma: expected a finite value >= 0"),
    (dict(norm_pct=-1.0), ValueError, r"norm_pct: expected a percentile in \[0, 100\]"),
    (dict(norm_pct=101.0), ValueError, "norm_pct:"),
    (dict(norm_pct=float("nan")), ValueError, "norm_pct:"),
    (dict(contrib_pct=100.5), ValueError, r"contrib_pct: expected a percentile in \[0, 100\]"),
    (dict(lo=1.0, hi=0.0), ValueError, "lo: expected lo <= hi"),
    (dict(x=torch.randn(1, 1, 3, 3).half(), grad=torch.randn(1, 1, 3, 3).half()), TypeError, "x: dtype"),
    (dict(x=torch.randn(1, 1, 1, 3).expand(1, 1, 3, 3)), ValueError, "x: has internally overlapping"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(x=torch.randn(1, 1, 3, 3), grad=torch.randn(1, 1, 3, 3))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ops.regularize_(**args)


@pytest.mark.cuda
@pytest.mark.parametrize("kw", KWARGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(kw, dtype):
    x = torch.randn(3, 3, 33, 41, dtype=torch.float64)
    g = torch.randn_like(x)
    ref = R.regularize_(x.clone(), g, **kw)
    xc = x.to("cuda", dtype)
    ops.regularize_(xc, g.to("cuda", dtype), **kw)
    if dtype in (torch.float32, torch.float64):
        tol = dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xc.double().cpu(), ref, **tol)
    else:  # low precision may move a pixel across a threshold: compare the bulk
        close = (xc.double().cpu() - ref).abs() <= 0.05 + 0.02 * ref.abs()
        assert close.float().mean() > 0.97


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["narrow", "quantized", "signed_zero", "huge_range"])
def test_selection_on_hard_distributions(dtype, kind):
    # narrow ranges share their top bits (radix refinement), quantized values
    # tie, contributions are signed and include -0.0 / 0.0
    n, c, h, w = 2, 3, 30, 40
    if kind == "narrow":
        x = 1 + 1e-3 * torch.rand(n, c, h, w, dtype=dtype)
    elif kind == "quantized":
        x = torch.randint(-3, 4, (n, c, h, w)).to(dtype)
    elif kind == "signed_zero":
        x = torch.randint(-1, 2, (n, c, h, w)).to(dtype) * 0.5
    else:
        x = torch.randn(n, c, h, w, dtype=dtype) * torch.logspace(-20, 20, w, dtype=dtype)
    g = torch.randn_like(x)
    for pct in (5, 37.5, 50, 95):
        a, b = _run_both(x, g, lr=0.0, norm_pct=pct, contrib_pct=pct)
        assert torch.equal(a == 0, b == 0), pct
        torch.testing.assert_close(a, b, rtol=0, atol=0)
