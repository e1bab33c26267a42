"""regularize_: the shared op checks against the step-by-step ops.reference.regularize_, and
the selection-specific ones."""
import pytest
import torch

import cnnvis_ext
from cnnvis_ext import ops
from cnnvis_ext.ops import reference as R

from .op_tester import Bad, OpTester, Sample

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


def _sample(shape, **kw):
    x = torch.randn(shape, dtype=torch.float64)
    return Sample((x, torch.randn_like(x)), kw, batched=(0, 1),
                  name="x".join(map(str, shape)) + "-" + "-".join(f"{k}{v}" for k, v in kw.items()))


def _bad(exc, match, fake=True, **change):
    args = dict(x=torch.randn(1, 1, 3, 3), grad=torch.randn(1, 1, 3, 3))
    args.update(change)
    x, grad = args.pop("x"), args.pop("grad")
    return Bad(lambda x, grad: ops.regularize_(x, grad, **args), (x, grad), exc, match, fake)


def _run_both(x, g, **kw):
    a = x.clone()
    out = ops.regularize_(a, g, **kw)
    assert out is a
    b = R.regularize_(x.clone(), g, **kw)
    return a, b


class TestRegularize(OpTester):
    op = ops.regularize_
    reference = R.regularize_
    inplace = 0
    samples = [_sample(shape, **kw) for kw in KWARGS for shape in SHAPES]
    opcheck_samples = [_sample((2, 3, 6, 7), lr=0.1, decay=0.01, norm_pct=10.0, contrib_pct=20.0,
                               lo=-1.0, hi=1.0),
                       _sample((2, 3, 6, 7), blur_sigma=1.0)]
    layout_samples = [_sample((2, 3, 10, 12), lr=0.1, blur_sigma=0.8, norm_pct=10, hi=0.5)]
    empty_samples = layout_samples
    compile_samples = [_sample((2, 3, 8, 8), lr=0.5, norm_pct=20, lo=-1, hi=1)]
    cuda_samples = [_sample((3, 3, 33, 41), **kw) for kw in KWARGS]
    bad = [
        _bad(ValueError, "x: expected a 4-D", x=torch.randn(3, 4, 4)),
        _bad(TypeError, "x: expected a floating", x=torch.ones(1, 1, 3, 3, dtype=torch.int64)),
        _bad(ValueError, "grad: expected the shape of x", grad=torch.randn(1, 1, 3, 4)),
        _bad(TypeError, "grad: dtype", grad=torch.randn(1, 1, 3, 3, dtype=torch.float64)),
        _bad(ValueError, "lr: expected a finite value", lr=float("nan")),
        _bad(ValueError, r"decay: expected a value in \[0, 1\]", decay=1.5),
        _bad(ValueError, "decay:", decay=-0.1),
        _bad(ValueError, "blur_sigma: expected a finite value >= 0", blur_sigma=-1.0),
        _bad(ValueError, r"norm_pct: expected a percentile in \[0, 100\]", norm_pct=-1.0),
        _bad(ValueError, "norm_pct:", norm_pct=101.0),
        _bad(ValueError, "norm_pct:", norm_pct=float("nan")),
        _bad(ValueError, r"contrib_pct: expected a percentile in \[0, 100\]", contrib_pct=100.5),
        _bad(ValueError, "lo: expected lo <= hi", lo=1.0, hi=0.0),
        _bad(TypeError, "x: dtype", fake=False,  # the CPU kernel's dtypes
             x=torch.randn(1, 1, 3, 3).half(), grad=torch.randn(1, 1, 3, 3).half()),
        _bad(ValueError, "x: has internally overlapping", x=torch.randn(1, 1, 1, 3).expand(1, 1, 3, 3)),
        _bad(TypeError, "grad: expected a tensor, got float", grad=1.0),
        _bad(ValueError, "blur_sigma: 1e\\+09 needs a kernel wider than an image of",
             blur_sigma=1e9),
        _bad(ValueError, "blur_sigma: .* needs a kernel wider", blur_sigma=1e300),
        _bad(ValueError, "grad: on meta but x is on cpu", grad=torch.randn(1, 1, 3, 3, device="meta")),
    ]

    def tol(self, dtype):
        return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)

    def cuda_tol(self, dtype):
        return dict(rtol=1e-5, atol=1e-5)

    def compare(self, got, expected, sample, tol):
        got = got.to(expected.device)
        if got.dtype in (torch.float16, torch.bfloat16):
            # low precision may move a pixel across a threshold: compare the bulk
            close = (got.double() - expected).abs() <= 0.05 + 0.02 * expected.abs()
            assert close.float().mean() > 0.97
            return
        torch.testing.assert_close(got.to(expected.dtype), expected, **tol)
        if got.dtype == expected.dtype:
            assert torch.equal(got == 0, expected == 0)  # the same pixels were clipped


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


def test_top_level_export():
    assert cnnvis_ext.regularize_ is ops.regularize_


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


# ------------------------------------------------------------- autograd
# regularize_ has no derivative: like torch's in-place ops without one, it refuses to run where
# autograd would record it, and bumps the version counter elsewhere.

def test_refuses_a_tensor_in_a_graph():
    a = torch.randn(1, 1, 4, 4, requires_grad=True)
    y = a * 2
    (y * y).sum()
    with pytest.raises(ValueError, match="x: requires grad; regularize_ updates x in place"):
        ops.regularize_(y, torch.randn(1, 1, 4, 4), lr=1.0)


def test_refuses_a_leaf_that_requires_grad():
    a = torch.randn(1, 1, 4, 4, requires_grad=True)
    before = a.detach().clone()
    with pytest.raises(ValueError, match="x: requires grad"):
        ops.regularize_(a, torch.randn(1, 1, 4, 4), lr=1.0)
    assert torch.equal(a.detach(), before)  # refused before anything was written


def test_refuses_a_grad_that_requires_grad():
    g = torch.randn(1, 1, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="grad: requires grad"):
        ops.regularize_(torch.randn(1, 1, 4, 4), g * 1, lr=1.0)


def test_under_no_grad_updates_a_leaf_and_bumps_its_version():
    a = torch.randn(1, 1, 4, 4, requires_grad=True)
    g = torch.randn(1, 1, 4, 4)
    expected = R.regularize_(a.detach().clone(), g, lr=0.5)
    version = a._version
    with torch.no_grad():
        ops.regularize_(a, g, lr=0.5)
    assert a._version > version
    torch.testing.assert_close(a.detach(), expected)


def test_a_graph_that_saved_x_sees_the_update():
    # the case: (y * y) saved y; updating y under no_grad must make backward raise,
    # not return the gradient of the old values
    a = torch.randn(1, 1, 4, 4, requires_grad=True)
    y = a * 2
    z = (y * y).sum()
    with torch.no_grad():
        ops.regularize_(y, torch.randn(1, 1, 4, 4), lr=1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(z, a)
