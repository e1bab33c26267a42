"""total_variation / _total_variation_backward / total_variation_and_grad against _reference."""
import pytest
import torch

import cnnvis_ext
from cnnvis_ext import _reference as R
from cnnvis_ext import ops

SHAPES = [(1, 1, 1, 1), (2, 3, 1, 5), (2, 2, 6, 1), (3, 2, 7, 9), (1, 3, 17, 33), (0, 3, 4, 4)]
ISO = [("isotropic", 2.0), ("isotropic", 1.0), ("isotropic", 1.5), ("isotropic", 3.0),
       ("anisotropic", 2.0)]
REDUCTIONS = ["sum", "mean", "none"]


def _ref_grad(x, beta, eps, reduction, mode):
    xr = x.detach().clone().requires_grad_()
    v = R.total_variation(xr, beta, eps, reduction, mode)
    v.sum().backward()
    return v.detach(), xr.grad


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode,beta", ISO)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(shape, mode, beta, reduction, dtype):
    x = torch.randn(shape, dtype=dtype)
    eps = 1e-3
    ref_v, ref_g = _ref_grad(x, beta, eps, reduction, mode)
    v = ops.total_variation(x, beta, eps, reduction, mode)
    assert v.dtype == dtype and v.shape == ref_v.shape
    tol = _tol(dtype)
    if x.numel():
        torch.testing.assert_close(v, ref_v, **tol)
    v2, g2 = ops.total_variation_and_grad(x, beta, eps, reduction, mode)
    if x.numel():
        torch.testing.assert_close(v2, ref_v, **tol)
    torch.testing.assert_close(g2, ref_g, **tol)
    xr = x.clone().requires_grad_()
    ops.total_variation(xr, beta, eps, reduction, mode).sum().backward()
    torch.testing.assert_close(xr.grad, ref_g, **tol)


def test_empty_batch_values():
    x = torch.randn(0, 3, 4, 4)
    assert ops.total_variation(x).item() == 0.0
    assert ops.total_variation(x, reduction="none").shape == (0,)


def test_larger_image_and_band_split():
    # enough rows that the CPU launcher splits planes into bands
    x = torch.randn(1, 1, 300, 70, dtype=torch.float64)
    for mode, beta in ISO:
        ref_v, ref_g = _ref_grad(x, beta, 1e-8, "sum", mode)
        v, g = ops.total_variation_and_grad(x, beta, 1e-8, "sum", mode)
        torch.testing.assert_close(v, ref_v)
        torch.testing.assert_close(g, ref_g)


def test_anisotropic_matches_kornia_formula():
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64)
    ref = R.total_variation_kornia(x).sum(1)
    torch.testing.assert_close(ops.total_variation(x, mode="anisotropic", reduction="none"), ref)


def test_matches_kornia_when_installed():
    kornia = pytest.importorskip("kornia")
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    ref = kornia.losses.total_variation(x, reduction="sum").sum(1)
    torch.testing.assert_close(ops.total_variation(x, mode="anisotropic", reduction="none"), ref)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous(layout):
    base = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3)
    else:
        x = torch.randn(2, 3, 16, 10, dtype=torch.float64)[:, :, ::2]
    ref_v, ref_g = _ref_grad(x, 1.0, 1e-8, "none", "isotropic")
    v, g = ops.total_variation_and_grad(x, 1.0, 1e-8, "none")
    torch.testing.assert_close(v, ref_v)
    torch.testing.assert_close(g, ref_g)


@pytest.mark.parametrize("mode,beta", [("isotropic", 2.0), ("isotropic", 1.0), ("isotropic", 1.3)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(mode, beta, reduction):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: ops.total_variation(t, beta, 1e-2, reduction, mode), (x,))


def test_gradcheck_anisotropic():
    # away from the kinks of |.|: differences of an integer grid plus a small ramp
    x = (torch.randint(0, 5, (1, 2, 4, 5)).double() + 0.01 * torch.rand(1, 2, 4, 5)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: ops.total_variation(t, mode="anisotropic", reduction="none"), (x,))


def test_top_level_exports():
    assert cnnvis_ext.total_variation is ops.total_variation
    assert cnnvis_ext.total_variation_and_grad is ops.total_variation_and_grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["isotropic", "anisotropic"])
def test_opcheck(reduction, mode):
    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    args = (x, 1.0, 1e-8, reduction, mode)
    torch.library.opcheck(torch.ops.cnnvis.total_variation.default, args)
    torch.library.opcheck(torch.ops.cnnvis.total_variation_and_grad.default,
                          (x.detach(), 2.0, 1e-8, reduction, mode))
    go = torch.randn(2) if reduction == "none" else torch.randn(())
    torch.library.opcheck(torch.ops.cnnvis._total_variation_backward.default,
                          (go, x.detach(), 1.0, 1e-8, reduction, mode))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    f = torch.compile(lambda t: ops.total_variation(t, 1.0) * 2, fullgraph=True, backend="eager")
    f(x).backward()
    xr = x.detach().clone().requires_grad_()
    (R.total_variation(xr, 1.0) * 2).backward()
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randn(3, 4, 4)), ValueError, "x: expected a 4-D"),
    (dict(x=torch.ones(1, 1, 3, 3, dtype=torch.int64)), TypeError, "x: expected a floating"),
    (dict(beta=0.0), ValueError, "beta: expected a finite value > 0"),
    (dict(beta=-1.0), ValueError, "beta:"),
    (dict(beta=float("nan")), ValueError, "beta:"),
    (dict(eps=-1.0), ValueError, "eps: expected a finite value >= 0"),
    (dict(reduction="max"), ValueError, "reduction: expected 'sum', 'mean' or 'none'"),
    (dict(mode="l2"), ValueError, "mode: expected 'isotropic' or 'anisotropic'"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(x=torch.randn(1, 1, 3, 3), beta=2.0, eps=1e-8, reduction="sum", mode="isotropic")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ops.total_variation(**args)
    with pytest.raises(exc, match=match):
        ops.total_variation_and_grad(**args)


def test_bad_grad_out():
    x = torch.randn(2, 1, 3, 3)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        torch.ops.cnnvis._total_variation_backward(torch.ones(3), x, 2.0, 1e-8, "none", "isotropic")
    with pytest.raises(ValueError, match="grad_out: expected a single value"):
        torch.ops.cnnvis._total_variation_backward(torch.ones(2), x, 2.0, 1e-8, "sum", "isotropic")


def test_half_on_cpu_is_rejected():
    with pytest.raises(TypeError, match="x: dtype"):
        ops.total_variation(torch.randn(1, 1, 3, 3).half())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode,beta", ISO)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_matches_cpu(dtype, mode, beta, reduction):
    x = torch.randn(3, 2, 37, 45, dtype=torch.float64)
    ref_v, ref_g = _ref_grad(x, beta, 1e-3, reduction, mode)
    xc = x.to("cuda", dtype)
    v, g = ops.total_variation_and_grad(xc, beta, 1e-3, reduction, mode)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    if mode == "anisotropic":  # sign() of rounded differences may flip in low precision
        tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=5e-2, atol=2.1)
    torch.testing.assert_close(v.double().cpu(), ref_v, **tol)
    torch.testing.assert_close(g.double().cpu(), ref_g, **tol)
    xr = xc.clone().requires_grad_()
    ops.total_variation(xr, beta, 1e-3, reduction, mode).sum().backward()
    torch.testing.assert_close(xr.grad.double().cpu(), ref_g, **tol)
