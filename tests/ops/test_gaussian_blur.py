"""gaussian_blur / _gaussian_blur_backward against _reference."""
import math

import pytest
import torch

import cnnvis_ext
from cnnvis_ext import _reference as R
from cnnvis_ext import ops

CASES = [  # shape, sigma, kernel_size
    ((2, 3, 9, 11), 1.0, None),
    ((1, 1, 1, 1), 2.0, None),        # 1x1 image, kernel much wider
    ((1, 2, 3, 20), 1.5, None),       # kernel taller than the image
    ((2, 1, 5, 4), 3.0, None),        # wider than both sides: repeated reflection
    ((2, 3, 16, 17), 0.7, 5),
    ((1, 1, 2, 7), 0.0, None),        # identity
    ((3, 2, 1, 9), 1.0, 9),           # single row
    ((1, 2, 31, 1), 0.5, None),       # single column
    ((0, 3, 5, 5), 1.0, None),        # empty batch
]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape,sigma,kernel_size", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_adjoint_match_reference(shape, sigma, kernel_size, dtype):
    x = torch.randn(shape, dtype=dtype)
    y = ops.gaussian_blur(x, sigma, kernel_size)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y, R.gaussian_blur(x, sigma, kernel_size), **_tol(dtype))
    g = torch.randn(shape, dtype=dtype)
    xr = x.clone().requires_grad_()
    R.gaussian_blur(xr, sigma, kernel_size).backward(g)
    xo = x.clone().requires_grad_()
    ops.gaussian_blur(xo, sigma, kernel_size).backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, **_tol(dtype))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision_formula(sigma, dtype):
    x = torch.randn(2, 3, 23, 30, dtype=dtype)
    k = ops.gaussian_blur_kernel_size(sigma)
    torch.testing.assert_close(ops.gaussian_blur(x, sigma), R.gaussian_blur_torchvision(x, sigma, k),
                               **_tol(dtype))


def test_matches_torchvision_when_importable():
    try:
        import torchvision.transforms.functional as TF
    except Exception:  # absent, or broken beside this torch
        pytest.skip("torchvision not importable")
    x = torch.rand(2, 3, 20, 24)
    torch.testing.assert_close(ops.gaussian_blur(x, 1.2, 9), TF.gaussian_blur(x, [9, 9], [1.2, 1.2]),
                               rtol=1e-5, atol=1e-5)


def test_default_kernel_size():
    assert ops.gaussian_blur_kernel_size(0.0) == 1
    assert ops.gaussian_blur_kernel_size(1.0) == 7
    assert ops.gaussian_blur_kernel_size(0.5) == 5
    assert ops.gaussian_blur_kernel_size(2.0) == 13
    x = torch.randn(1, 1, 30, 30, dtype=torch.float64)
    torch.testing.assert_close(ops.gaussian_blur(x, 1.0), ops.gaussian_blur(x, 1.0, 7))


@pytest.mark.parametrize("sigma_shape", [(2, 1), (1, 3), (3,), (2, 3), (), (1, 1)])
def test_per_image_and_per_channel_sigma(sigma_shape):
    x = torch.randn(2, 3, 12, 13, dtype=torch.float64)
    sigma = torch.rand(sigma_shape, dtype=torch.float64) * 2
    k = 2 * math.ceil(3 * float(sigma.max())) + 1
    torch.testing.assert_close(ops.gaussian_blur(x, sigma), R.gaussian_blur(x, sigma, k))
    # channel (n, c) with its own sigma equals a scalar blur of that channel
    full = sigma.expand(2, 3)
    y = ops.gaussian_blur(x, sigma, k)
    torch.testing.assert_close(y[1, 2:3][None], ops.gaussian_blur(x[1, 2:3][None], float(full[1, 2]), k))


def test_float32_sigma_tensor():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ops.gaussian_blur(x, torch.tensor([[1.0], [0.5]])),
                               R.gaussian_blur(x, torch.tensor([[1.0], [0.5]]), 7), rtol=1e-5, atol=1e-5)


def test_constant_image_is_preserved():
    x = torch.full((1, 2, 5, 6), 3.0, dtype=torch.float64)
    for sigma in (0.5, 2.0, 10.0):
        torch.testing.assert_close(ops.gaussian_blur(x, sigma), x)


def test_adjoint_identity():
    # <B x, g> == <x, B^T g>, including the border rows/cols and kernels wider than the image
    for shape, sigma in [((2, 2, 13, 9), 1.3), ((1, 1, 4, 3), 4.0)]:
        x = torch.randn(shape, dtype=torch.float64)
        g = torch.randn(shape, dtype=torch.float64)
        k = ops.gaussian_blur_kernel_size(sigma)
        lhs = (ops.gaussian_blur(x, sigma) * g).sum()
        rhs = (x * torch.ops.cnnvis._gaussian_blur_backward(g, torch.tensor(sigma), k)).sum()
        torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous(layout):
    base = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3)
    else:
        x = base[:, :, ::2, 1:]
    torch.testing.assert_close(ops.gaussian_blur(x, 1.1), R.gaussian_blur(x, 1.1))


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([[0.8], [1.7]], dtype=torch.float64)
    f = lambda t: ops.gaussian_blur(t, sigma, 7)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_opcheck():
    x = torch.randn(2, 3, 7, 8, requires_grad=True)
    for sigma in (torch.tensor(1.0, dtype=torch.float64), torch.rand(2, 1) + 0.2):
        torch.library.opcheck(torch.ops.cnnvis.gaussian_blur.default, (x, sigma, 5))
        torch.library.opcheck(torch.ops.cnnvis._gaussian_blur_backward.default,
                              (x.detach(), sigma, 5))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    f = torch.compile(lambda t: ops.gaussian_blur(t, 1.0).square().sum(), fullgraph=True,
                      backend="eager")
    f(x).backward()
    xr = x.detach().clone().requires_grad_()
    R.gaussian_blur(xr, 1.0).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_top_level_export():
    assert cnnvis_ext.gaussian_blur is ops.gaussian_blur


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), -1.0), ValueError, "sigma: expected finite values >= 0"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), float("nan")), ValueError, "sigma:"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), torch.tensor([-1.0])), ValueError, "sigma:"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), torch.tensor([-1.0]), 3), ValueError, "sigma:"),
    (lambda: ops.gaussian_blur(torch.randn(2, 3, 4, 4), torch.ones(3, 3)), ValueError, "sigma: expected a float or a tensor broadcastable"),
    (lambda: ops.gaussian_blur(torch.randn(2, 3, 4, 4), torch.ones(1, 2, 3)), ValueError, "sigma:"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), torch.ones(1, dtype=torch.int64)), TypeError, "sigma: expected a float"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), "1"), TypeError, "sigma: expected a float"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), 1.0, 4), ValueError, "kernel_size: expected an odd value"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), 1.0, 0), ValueError, "kernel_size:"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4), 1.0, 2.5), TypeError, "kernel_size:"),
    (lambda: ops.gaussian_blur(torch.randn(1, 4, 4), 1.0), ValueError, "x: expected a 4-D"),
    (lambda: ops.gaussian_blur(torch.ones(1, 1, 4, 4, dtype=torch.int32), 1.0), TypeError, "x: expected a floating"),
    (lambda: ops.gaussian_blur(torch.randn(1, 1, 4, 4).half(), 1.0), TypeError, "x: dtype"),
    (lambda: torch.ops.cnnvis._gaussian_blur_backward(torch.randn(4, 4), torch.tensor(1.0), 3), ValueError, "grad_out: expected a 4-D"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,sigma,kernel_size", CASES + [((2, 3, 70, 90), 12.0, None)])
def test_cuda_matches_reference(dtype, shape, sigma, kernel_size):
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    ref = R.gaussian_blur(xr, sigma, kernel_size)
    ref.backward(g)
    xc = x.to("cuda", dtype).requires_grad_()
    y = ops.gaussian_blur(xc, sigma, kernel_size)
    y.backward(g.to("cuda", dtype))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(y.double().cpu(), ref.detach(), **tol)
    torch.testing.assert_close(xc.grad.double().cpu(), xr.grad, **tol)
