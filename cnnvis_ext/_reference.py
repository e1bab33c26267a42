"""Plain-PyTorch versions of every cnnvis op.

These are the test oracle and the benchmark baselines: each function is
written with stock ``torch`` / ``torch.nn.functional`` calls only, so it is
independent of the extension's kernels. Each op's section is self-contained.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


# --------------------------------------------------------------------------
# conv_relu_pool
# --------------------------------------------------------------------------

def conv_relu_pool(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
                   dilation=1, groups: int = 1, pool_kernel=2, pool_stride=None, pool_padding=0,
                   ceil_mode: bool = False) -> Tuple[Tensor, Tensor]:
    """``max_pool2d(relu(conv2d(x)))`` and the int64 max_pool2d indices.

    Returns ``(out, indices)``; indices are flat positions in the conv output
    (what ``max_unpool2d`` takes), compare them with
    ``cnnvis_ext.ops.switches_to_indices`` of the op's switches.
    """
    y = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    if pool_stride is None:
        pool_stride = pool_kernel
    return F.max_pool2d(y, pool_kernel, pool_stride, pool_padding, ceil_mode=ceil_mode,
                        return_indices=True)


def conv_output_size(x_shape: Sequence[int], weight_shape: Sequence[int], stride=1, padding=0,
                     dilation=1) -> Tuple[int, int]:
    """(H, W) of ``conv2d``'s output, computed by running it on a meta tensor."""
    x = torch.empty(tuple(x_shape), device="meta")
    w = torch.empty(tuple(weight_shape), device="meta")
    groups = x.shape[1] // w.shape[1]
    return tuple(F.conv2d(x, w, None, stride, padding, dilation, groups).shape[-2:])


# --------------------------------------------------------------------------
# unpool_conv_transpose (issue 3: one deconvnet step)
# --------------------------------------------------------------------------

def unpool_conv_transpose(p: Tensor, indices: Optional[Tensor], weight: Tensor, stride=1,
                          padding=0, dilation=1, groups: int = 1, output_size=None,
                          input_size=None, rectify: bool = True) -> Tensor:
    """``conv_transpose2d(relu(unpool(p)), weight)`` with int64 max_pool2d ``indices``.

    Unpools with ``scatter_add`` (values of colliding indices add up, as in the
    gradient of ``max_pool2d``; identical to ``F.max_unpool2d`` when no two
    indices collide), then rectifies. ``indices=None`` means no pooling.
    ``output_padding`` is chosen so the result is ``input_size`` (the
    smallest size when ``None``).
    """
    n, c = p.shape[:2]
    if indices is None:
        u = p
    else:
        h, w = output_size
        u = torch.zeros(n, c, h * w, dtype=p.dtype, device=p.device)
        u.scatter_add_(2, indices.reshape(n, c, -1), p.reshape(n, c, -1))
        u = u.view(n, c, h, w)
    if rectify:
        u = F.relu(u)
    pair = lambda a: (a, a) if isinstance(a, int) else tuple(a)  # noqa: E731
    st, pd, dl = pair(stride), pair(padding), pair(dilation)
    smallest = [(u.shape[2 + i] - 1) * st[i] - 2 * pd[i] + dl[i] * (weight.shape[2 + i] - 1) + 1
                for i in range(2)]
    op = (0, 0) if input_size is None else tuple(input_size[i] - smallest[i] for i in range(2))
    return F.conv_transpose2d(u, weight, None, st, pd, op, groups, dl)
