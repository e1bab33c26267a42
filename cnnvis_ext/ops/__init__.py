"""Typed Python wrappers of the ``torch.ops.cnnvis`` operators.

One module per op holds its wrapper and registers, beside it, the op's fake
(meta) kernel and its autograd formula with :mod:`torch.library`, so that
every op works under autograd and ``torch.compile(fullgraph=True)``. The
schemas and the argument checks live in C++ (``csrc/<op>.cpp``); the fake
kernels run those checks through ``_C``, so each error message is written
once. ``common`` holds the argument helpers, ``reference`` the plain-PyTorch
version of every op (the test oracle and the benchmark baseline).
"""
from __future__ import annotations

from .. import _C  # noqa: F401  (loads the op registrations)
from . import reference
from .common import IntOrPair, pair
from .conv_relu_pool import (conv_relu_pool, conv_relu_pool_output_size, indices_to_switches,
                             switches_to_indices)
from .gaussian_blur import gaussian_blur, gaussian_blur_kernel_size
from .regularize import regularize_
from .total_variation import total_variation, total_variation_and_grad
from .unpool_conv_transpose import unpool_conv_transpose

__all__ = [
    "conv_relu_pool",
    "switches_to_indices",
    "indices_to_switches",
    "conv_relu_pool_output_size",
    "unpool_conv_transpose",
    "total_variation",
    "total_variation_and_grad",
    "gaussian_blur",
    "gaussian_blur_kernel_size",
    "regularize_",
]
