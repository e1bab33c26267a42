"""cnnvis_ext: fast fused ops and visualization loops for looking inside CNNs.

Importing the package loads the compiled kernels and registers the
``torch.ops.cnnvis.*`` operators.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C
from . import ops
from .ops import (conv_relu_pool, gaussian_blur, indices_to_switches, regularize_,
                  switches_to_indices, total_variation, total_variation_and_grad,
                  unpool_conv_transpose)
from . import nn
from .nn import ConvReLUPool2d, fuse
from . import vis
from .vis import deconvnet, top_activations  # noqa: F401
from . import models

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """Facts about the compiled extension.

    Returns a dict with ``version``, ``cuda_compiled`` (whether CUDA kernels
    were built), ``cuda_version`` (the CUDA version they target, or ``None``),
    ``torch_version`` (the torch they were compiled against), ``compiler`` and
    ``openmp``.
    """
    return dict(_C.build_info())


__all__ = [
    "build_info",
    "ops",
    "nn",
    "vis",
    "models",
    "conv_relu_pool",
    "switches_to_indices",
    "indices_to_switches",
    "unpool_conv_transpose",
    "total_variation",
    "total_variation_and_grad",
    "gaussian_blur",
    "regularize_",
    "deconvnet",
    "top_activations",
    "ConvReLUPool2d",
    "fuse",
]
