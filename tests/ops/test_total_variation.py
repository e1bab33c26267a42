"""total_variation, total_variation_and_grad and _total_variation_backward: the shared op
checks against ops.reference, and the TV-specific ones."""
import pytest
import torch

import cnnvis_ext
from cnnvis_ext import ops
from cnnvis_ext.ops import reference as R

from .op_tester import Bad, OpTester, Sample

SHAPES = [(1, 1, 1, 1), (2, 3, 1, 5), (2, 2, 6, 1), (3, 2, 7, 9), (1, 3, 17, 33), (0, 3, 4, 4)]
ISO = [("isotropic", 2.0), ("isotropic", 1.0), ("isotropic", 1.5), ("isotropic", 3.0),
       ("anisotropic", 2.0)]
REDUCTIONS = ["sum", "mean", "none"]


def _sample(shape, mode="isotropic", beta=2.0, reduction="sum", eps=1e-3, grad=(0,), x=None):
    x = torch.randn(shape, dtype=torch.float64) if x is None else x
    return Sample((x,), dict(beta=beta, eps=eps, reduction=reduction, mode=mode), grad=grad,
                  name=f"{'x'.join(map(str, x.shape))}-{mode[:5]}{beta}-{reduction}")


def _value_and_grad(x, beta=2.0, eps=1e-8, reduction="sum", mode="isotropic"):
    """total_variation_and_grad from the reference's autograd: the value and the gradient
    of its sum."""
    xr = x.detach().clone().requires_grad_()
    v = R.total_variation(xr, beta, eps, reduction, mode)
    v.sum().backward()
    return v.detach(), xr.grad


SAMPLES = [_sample(shape, mode, beta, reduction)
           for shape in SHAPES for mode, beta in ISO for reduction in REDUCTIONS]
# away from the kinks of |.|: differences of an integer grid plus a small ramp
_GRID = torch.randint(0, 5, (1, 2, 4, 5)).double() + 0.01 * torch.rand(1, 2, 4, 5)
GRADCHECK = ([_sample((2, 2, 5, 6), "isotropic", beta, reduction, eps=1e-2)
              for beta in (2.0, 1.0, 1.3) for reduction in REDUCTIONS]
             + [_sample(None, "anisotropic", reduction="none", x=_GRID)])
FEW = [_sample((2, 3, 8, 10), mode, beta, reduction)
       for (mode, beta), reduction in [(ISO[0], "sum"), (ISO[1], "none"), (ISO[4], "mean")]]


def _bad_rows(op):
    def row(exc, match, fake=True, **change):
        args = dict(x=torch.randn(1, 1, 3, 3), beta=2.0, eps=1e-8, reduction="sum",
                    mode="isotropic")
        args.update(change)
        x = args.pop("x")
        return Bad(lambda t: op(t, **args), (x,), exc, match, fake,
                   name=f"{op.__name__}-{match[:30]}")

    return [
        row(ValueError, "x: expected a 4-D", x=torch.randn(3, 4, 4)),
        row(TypeError, "x: expected a floating", x=torch.ones(1, 1, 3, 3, dtype=torch.int64)),
        row(ValueError, "beta: expected a finite value > 0", beta=0.0),
        row(ValueError, "beta:", beta=-1.0),
        row(ValueError, "beta:", beta=float("nan")),
        row(ValueError, "eps: expected a finite value >= 0", eps=-1.0),
        row(ValueError, "reduction: expected 'sum', 'mean' or 'none'", reduction="max"),
        row(ValueError, "mode: expected 'isotropic' or 'anisotropic'", mode="l2"),
        row(TypeError, "x: dtype", fake=False, x=torch.randn(1, 1, 3, 3).half()),  # CPU kernel
        Bad(op, ([[1.0]],), TypeError, "x: expected a tensor, got list",
            name=f"{op.__name__}-list"),
    ]


_backward = torch.ops.cnnvis._total_variation_backward
BAD_GRAD_OUT = [
    Bad(lambda g, x: _backward(g, x, 2.0, 1e-8, "none", "isotropic"),
        (torch.ones(3), torch.randn(2, 1, 3, 3)), ValueError, "grad_out: expected shape"),
    Bad(lambda g, x: _backward(g, x, 2.0, 1e-8, "sum", "isotropic"),
        (torch.ones(2), torch.randn(2, 1, 3, 3)), ValueError, "grad_out: expected a single value"),
]


class TestTotalVariation(OpTester):
    op = ops.total_variation
    reference = R.total_variation
    samples = SAMPLES
    gradcheck_samples = GRADCHECK
    opcheck_samples = [_sample((2, 3, 5, 7), mode, 1.0, reduction)
                       for mode in ("isotropic", "anisotropic") for reduction in REDUCTIONS]
    layout_samples = FEW
    empty_samples = FEW
    compile_samples = FEW[:2]
    cuda_samples = [_sample((3, 2, 37, 45), mode, beta, reduction)
                    for mode, beta in ISO for reduction in REDUCTIONS]
    bad = _bad_rows(ops.total_variation) + BAD_GRAD_OUT

    def cuda_tol(self, dtype):
        # sign() of rounded differences may flip in low precision
        if dtype in (torch.float16, torch.bfloat16):
            return dict(rtol=5e-2, atol=2.1)
        return dict(rtol=1e-4, atol=1e-3)


class TestTotalVariationAndGrad(OpTester):
    op = ops.total_variation_and_grad
    reference = _value_and_grad
    samples = [_sample(s.args[0].shape, s.kwargs["mode"], s.kwargs["beta"],
                       s.kwargs["reduction"], grad=()) for s in SAMPLES]
    opcheck_samples = [_sample((2, 3, 5, 7), mode, 2.0, reduction, grad=())
                       for mode in ("isotropic", "anisotropic") for reduction in REDUCTIONS]
    layout_samples = [_sample(s.args[0].shape, s.kwargs["mode"], s.kwargs["beta"],
                              s.kwargs["reduction"], grad=()) for s in FEW]
    empty_samples = layout_samples
    compile_samples = layout_samples[:2]
    cuda_samples = [_sample(s.args[0].shape, s.kwargs["mode"], s.kwargs["beta"],
                            s.kwargs["reduction"], grad=()) for s in TestTotalVariation.cuda_samples]
    bad = _bad_rows(ops.total_variation_and_grad)
    cuda_tol = TestTotalVariation.cuda_tol


def test_empty_batch_values():
    x = torch.randn(0, 3, 4, 4)
    assert ops.total_variation(x).item() == 0.0
    assert ops.total_variation(x, reduction="none").shape == (0,)


def test_larger_image_and_band_split():
    # enough rows that the CPU launcher splits planes into bands
    x = torch.randn(1, 1, 300, 70, dtype=torch.float64)
    for mode, beta in ISO:
        ref_v, ref_g = _value_and_grad(x, beta, 1e-8, "sum", mode)
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


def test_top_level_exports():
    assert cnnvis_ext.total_variation is ops.total_variation
    assert cnnvis_ext.total_variation_and_grad is ops.total_variation_and_grad


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), 1e200, float("nan")])
def test_gradient_at_overflowing_pixels_matches_autograd(beta, value):
    # For beta not in {1, 2} the derivative beta * t^(beta/2 - 1) was formed as beta * v / t,
    # inf / inf = NaN where a pixel (or its squared differences) overflow; plain PyTorch gives
    # 0 (beta < 2) or inf there.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=g)
    x[0, 1, 2, 3] = value
    a = x.clone().requires_grad_()
    R.total_variation(a, beta=beta).backward()
    b = x.clone().requires_grad_()
    ops.total_variation(b, beta=beta).backward()
    torch.testing.assert_close(b.grad, a.grad, equal_nan=True)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("mode,beta", [("isotropic", 2.0), ("isotropic", 1.0), ("isotropic", 1.5),
                                       ("anisotropic", 2.0)])
def test_double_backward_against_gradgradcheck(mode, beta, reduction):
    # both faces: the wrapper (value and gradient from one pass when x requires grad) and the
    # op itself; the second derivative goes through _total_variation_backward's autograd formula
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    for fn in (lambda t: ops.total_variation(t, beta=beta, reduction=reduction, mode=mode),
               lambda t: torch.ops.cnnvis.total_variation(t, beta, 1e-8, reduction, mode)):
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_autograd_reuses_the_forward_gradient_and_allows_a_second_backward():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    v = ops.total_variation(x, beta=1.5, reduction="none")
    _, expected = ops.total_variation_and_grad(x.detach(), beta=1.5, reduction="none")
    w = torch.tensor([0.5, -2.0], dtype=torch.float64)
    (g1,) = torch.autograd.grad(v, x, w, retain_graph=True)  # scales the forward's gradient
    (g2,) = torch.autograd.grad(v, x, w)                      # recomputes it
    torch.testing.assert_close(g1, expected * w.view(-1, 1, 1, 1))
    torch.testing.assert_close(g2, g1)
    y = x.detach().requires_grad_()
    ops.total_variation(y).backward()  # a loss of the TV alone: the gradient as computed
    torch.testing.assert_close(y.grad, ops.total_variation_and_grad(x.detach())[1])
