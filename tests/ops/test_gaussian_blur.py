"""gaussian_blur and _gaussian_blur_backward: the shared op checks against ops.reference,
and the blur-specific ones."""
import math

import pytest
import torch

import cnnvis_ext
from cnnvis_ext import ops
from cnnvis_ext.ops import reference as R

from .op_tester import TOL, Bad, OpTester, Sample

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
SIGMA_SHAPES = [(2, 1), (1, 3), (3,), (2, 3), (), (1, 1)]


def _sample(shape, sigma, kernel_size=None):
    if isinstance(sigma, torch.Tensor):
        per_image = sigma.dim() == 2 and sigma.shape[0] > 1
        name = f"sigma{tuple(sigma.shape)}"
    else:
        per_image, name = False, f"sigma{sigma}"
    return Sample((torch.randn(shape, dtype=torch.float64), sigma, kernel_size), grad=(0,),
                  batched=(0, 1) if per_image else (0,),
                  name=f"{'x'.join(map(str, shape))}-{name}-k{kernel_size}")


def _sigma(shape):
    return torch.rand(shape, dtype=torch.float64) * 2


SAMPLES = ([_sample(*case) for case in CASES]
           + [_sample((2, 3, 12, 13), _sigma(shape)) for shape in SIGMA_SHAPES])
LAYOUT = [_sample((2, 3, 10, 12), 1.1), _sample((2, 3, 10, 12), _sigma((2, 1)), 7)]


def _blur(x, sigma, kernel_size=None):
    return lambda: ops.gaussian_blur(x, sigma, kernel_size)


def _bad(exc, match, x, sigma, kernel_size=None, **flags):
    return Bad(ops.gaussian_blur, (x, sigma, kernel_size), exc, match, **flags)


_IMG = torch.randn(1, 1, 4, 4)
_IMGS = torch.randn(2, 3, 4, 4)
_values = dict(fake=False)  # sigma's values: only the kernels read them
_default_size = dict(fake=False, compile=False)  # the default kernel size reads a tensor sigma
BAD = [
    _bad(ValueError, "sigma: expected finite values >= 0", _IMG, -1.0, **_values),
    _bad(ValueError, "sigma: expected finite values >= 0", _IMG, float("nan"), **_values,
         name="sigma-nan"),
    _bad(ValueError, "sigma: expected finite values >= 0", _IMG, torch.tensor([-1.0]),
         **_default_size, name="sigma-negative-tensor"),
    _bad(ValueError, "sigma: expected finite values >= 0", _IMG, torch.tensor([-1.0]), 3,
         **_values, name="sigma-negative-tensor-k3"),
    _bad(ValueError, "sigma: expected a float or a tensor broadcastable", _IMGS,
         torch.ones(3, 3), **_default_size, name="sigma-3x3"),
    _bad(ValueError, "sigma: expected a float or a tensor broadcastable", _IMGS,
         torch.ones(3, 3), 7, name="sigma-3x3-k7"),
    _bad(ValueError, "sigma: expected a float or a tensor broadcastable", _IMGS,
         torch.ones(1, 2, 3), 7, name="sigma-3d"),
    _bad(TypeError, "sigma: expected a float", _IMG, torch.ones(1, dtype=torch.int64),
         **_default_size, name="sigma-int64"),
    _bad(TypeError, "sigma: expected a float", _IMG, torch.ones(1, dtype=torch.int64), 3,
         name="sigma-int64-k3"),
    _bad(TypeError, "sigma: expected a float", _IMG, "1", name="sigma-str"),
    _bad(ValueError, "kernel_size: expected an odd value", _IMG, 1.0, 4),
    _bad(ValueError, "kernel_size:", _IMG, 1.0, 0, name="kernel_size-0"),
    _bad(TypeError, "kernel_size:", _IMG, 1.0, 2.5, name="kernel_size-float"),
    _bad(ValueError, "x: expected a 4-D", torch.randn(1, 4, 4), 1.0),
    _bad(TypeError, "x: expected a floating", torch.ones(1, 1, 4, 4, dtype=torch.int32), 1.0),
    _bad(TypeError, "x: expected a tensor, got list", [[1.0]], 1.0),
    _bad(TypeError, "x: dtype", _IMG.half(), 1.0, fake=False),  # the CPU kernel's dtypes
    Bad(torch.ops.cnnvis._gaussian_blur_backward, (torch.randn(4, 4), torch.tensor(1.0), 3),
        ValueError, "grad_out: expected a 4-D"),
    # kernels far wider than the image: an error naming the argument, not std::bad_alloc
    _bad(ValueError, r"sigma: 1e\+09 needs a kernel of 6000000001 taps, more than an image of "
         r"\(H, W\) = \(4, 4\) can use \(at most 129", _IMG, 1e9, name="sigma-1e9"),
    _bad(ValueError, "sigma: 1e\\+300 needs a kernel", _IMG, 1e300, name="sigma-1e300"),
    _bad(ValueError, r"kernel_size: 2147483649 taps are more than an image of \(H, W\) = "
         r"\(4, 4\) can use: at most 129", _IMG, 1.0, 2 ** 31 + 1, name="kernel_size-2^31+1"),
    _bad(ValueError, "kernel_size: 131 taps", _IMG, 1.0, 131, name="kernel_size-131"),
    _bad(ValueError, "kernel_size: .* does not fit in int64", _IMG, 1.0, 2 ** 64 + 1,
         name="kernel_size-2^64"),
    _bad(ValueError, "sigma: on meta but x is on cpu", _IMG, torch.tensor(1.0, device="meta"),
         name="sigma-meta"),
]


class TestGaussianBlur(OpTester):
    op = ops.gaussian_blur
    reference = R.gaussian_blur
    samples = SAMPLES
    gradcheck_samples = [_sample((2, 2, 6, 5), torch.tensor([[0.8], [1.7]], dtype=torch.float64),
                                 7)]
    opcheck_samples = [_sample((2, 3, 7, 8), torch.tensor(1.0, dtype=torch.float64), 5),
                       _sample((2, 3, 7, 8), torch.rand(2, 1) + 0.2, 5)]
    layout_samples = LAYOUT
    empty_samples = LAYOUT
    compile_samples = [_sample((2, 3, 9, 9), 1.0)]
    cuda_samples = [_sample(*case) for case in CASES + [((2, 3, 70, 90), 12.0, None)]]
    bad = BAD

    def cuda_tol(self, dtype):
        return TOL[dtype] if dtype in (torch.float64, torch.float32) else dict(rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision_formula(sigma, dtype):
    x = torch.randn(2, 3, 23, 30, dtype=dtype)
    k = ops.gaussian_blur_kernel_size(sigma)
    torch.testing.assert_close(ops.gaussian_blur(x, sigma), R.gaussian_blur_torchvision(x, sigma, k),
                               **TOL[dtype])


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


@pytest.mark.parametrize("sigma_shape", SIGMA_SHAPES)
def test_each_channel_has_its_own_sigma(sigma_shape):
    # channel (n, c) with its own sigma equals a scalar blur of that channel
    x = torch.randn(2, 3, 12, 13, dtype=torch.float64)
    sigma = _sigma(sigma_shape)
    k = 2 * math.ceil(3 * float(sigma.max())) + 1
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


def test_gradgradcheck():
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([[0.8], [1.7]], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: ops.gaussian_blur(t, sigma, 7), (x,))


def test_top_level_export():
    assert cnnvis_ext.gaussian_blur is ops.gaussian_blur
