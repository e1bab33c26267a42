"""Modules built on the fused ops, and :func:`fuse`, which swaps them into a model."""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops

__all__ = ["ConvReLUPool2d", "ConvReLU2d", "fuse"]


def _as_pair(v, name):
    return tuple(ops._pair(v, name))


class ConvReLUPool2d(nn.Module):
    r"""Drop-in for ``nn.Sequential(nn.Conv2d(...), nn.ReLU(), nn.MaxPool2d(...))``.

    Runs :func:`cnnvis_ext.ops.conv_relu_pool`. Its parameters are named
    ``weight`` and ``bias`` like :class:`torch.nn.Conv2d`'s, so a Conv2d
    ``state_dict`` loads into it, and it is initialized the same way.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        groups, bias: as in :class:`torch.nn.Conv2d` (``padding`` may be
            ``"valid"`` or, for odd effective kernels, ``"same"``).
        pool_kernel_size: max-pooling window (``1``: no pooling).
        pool_stride: pooling stride, defaults to ``pool_kernel_size``.
        pool_padding, ceil_mode: as in :class:`torch.nn.MaxPool2d`.
        return_switches: if True, ``forward`` returns ``(out, switches)``.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output: :math:`(N, C_{out}, H_p, W_p)` as the three modules give.

    Example:
        >>> m = ConvReLUPool2d(3, 16, 5, padding=2, pool_kernel_size=2)
        >>> m(torch.randn(4, 3, 32, 32)).shape
        torch.Size([4, 16, 16, 16])
    """

    #: Marks a module that runs a fused op: a leaf of :func:`cnnvis_ext.graph.trace`.
    fused_op = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, pool_kernel_size=2,
                 pool_stride=None, pool_padding=0, ceil_mode: bool = False,
                 return_switches: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: in_channels={in_channels} and out_channels={out_channels} "
                             f"must both be divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _as_pair(kernel_size, "kernel_size")
        self.stride = _as_pair(stride, "stride")
        self.dilation = _as_pair(dilation, "dilation")
        self.padding = self._resolve_padding(padding)
        self.groups = groups
        self.pool_kernel_size = _as_pair(pool_kernel_size, "pool_kernel_size")
        self.pool_stride = (self.pool_kernel_size if pool_stride is None
                            else _as_pair(pool_stride, "pool_stride"))
        self.pool_padding = _as_pair(pool_padding, "pool_padding")
        self.ceil_mode = bool(ceil_mode)
        self.return_switches = return_switches
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        if bias is False:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _resolve_padding(self, padding) -> Tuple[int, int]:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            if padding == "same":
                if self.stride != (1, 1):
                    raise ValueError("padding: 'same' needs stride 1")
                tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                if any(t % 2 for t in tot):
                    raise ValueError("padding: 'same' needs an odd effective kernel size "
                                     "(symmetric padding)")
                return (tot[0] // 2, tot[1] // 2)
            raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
        return _as_pair(padding, "padding")

    def reset_parameters(self) -> None:
        # The initialization of nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            if fan_in:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, pool: Optional[nn.MaxPool2d] = None) -> "ConvReLUPool2d":
        """Build a fused module that shares ``conv``'s parameters (no copy)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv: padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
        if pool is not None:
            if not isinstance(pool, nn.MaxPool2d):
                raise TypeError(f"pool: expected nn.MaxPool2d, got {type(pool).__name__}")
            if _as_pair(pool.dilation, "dilation") != (1, 1) or pool.return_indices:
                raise ValueError("pool: dilated pooling and return_indices are not supported")
        pk = (1, 1) if pool is None else _as_pair(pool.kernel_size, "kernel_size")
        ps = (1, 1) if pool is None else _as_pair(pool.stride if pool.stride is not None else pk,
                                                  "stride")
        pp = (0, 0) if pool is None else _as_pair(pool.padding, "padding")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_channels, m.out_channels = conv.in_channels, conv.out_channels
        m.kernel_size = _as_pair(conv.kernel_size, "kernel_size")
        m.stride = _as_pair(conv.stride, "stride")
        m.dilation = _as_pair(conv.dilation, "dilation")
        m.padding = m._resolve_padding(conv.padding)
        m.groups = conv.groups
        m.pool_kernel_size, m.pool_stride, m.pool_padding = pk, ps, pp
        m.ceil_mode = bool(pool.ceil_mode) if pool is not None else False
        m.return_switches = False
        m.weight = conv.weight
        if conv.bias is not None:
            m.bias = conv.bias
        else:
            m.register_parameter("bias", None)
        m.train(conv.training)
        return m

    def forward_with_switches(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Return ``(out, switches)`` (see :func:`cnnvis_ext.ops.conv_relu_pool`)."""
        return ops.conv_relu_pool(x, self.weight, self.bias, self.stride, self.padding,
                                  self.dilation, self.groups, self.pool_kernel_size,
                                  self.pool_stride, self.pool_padding, self.ceil_mode)

    def forward(self, x: Tensor):
        out, switches = self.forward_with_switches(x)
        return (out, switches) if self.return_switches else out

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        s += (f", pool_kernel_size={self.pool_kernel_size}, pool_stride={self.pool_stride}")
        if self.pool_padding != (0, 0):
            s += f", pool_padding={self.pool_padding}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s


class ConvReLU2d(ConvReLUPool2d):
    """Drop-in for ``nn.Sequential(nn.Conv2d(...), nn.ReLU())``: a :class:`ConvReLUPool2d` without pooling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, pool_kernel_size=1, device=device, dtype=dtype)


def _fusable_conv(m: nn.Module) -> bool:
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros":
        return False
    if isinstance(m.padding, str):
        if m.padding == "same":
            tot = [d * (k - 1) for d, k in zip(_as_pair(m.dilation, "d"), _as_pair(m.kernel_size, "k"))]
            return _as_pair(m.stride, "s") == (1, 1) and not any(t % 2 for t in tot)
        return m.padding == "valid"
    return True


def _fusable_pool(m: nn.Module) -> bool:
    if type(m) is not nn.MaxPool2d or m.return_indices:
        return False
    if _as_pair(m.dilation, "dilation") != (1, 1):
        return False
    k = _as_pair(m.kernel_size, "kernel_size")
    return k[0] * k[1] <= 255


def fuse(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every Conv2d→ReLU(→MaxPool2d) run inside ``nn.Sequential`` containers.

    Each run becomes a :class:`ConvReLUPool2d` (or :class:`ConvReLU2d`) that
    shares the conv's ``weight`` and ``bias`` Parameters; the ReLU and
    MaxPool2d that were absorbed are replaced by :class:`torch.nn.Identity`
    so every other module keeps its name and index (``features.10`` still
    names the same point of the network, now the fused block's output).
    Modules that cannot be fused (other padding modes, dilated or
    index-returning pools, a conv followed by anything else) stay as they are.

    Works on torchvision's VGG and AlexNet definitions and on any model built
    the same way. Pooling windows larger than 255 positions are not fused.

    Args:
        model: the model.
        inplace: modify ``model`` (default) or a deep copy of it.

    Returns:
        The fused model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for container in list(model.modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules.keys())
        i = 0
        while i < len(names):
            conv = container._modules[names[i]]
            nxt = container._modules[names[i + 1]] if i + 1 < len(names) else None
            if _fusable_conv(conv) and type(nxt) is nn.ReLU:
                pool = container._modules[names[i + 2]] if i + 2 < len(names) else None
                if not _fusable_pool(pool):
                    pool = None
                cls = ConvReLUPool2d if pool is not None else ConvReLU2d
                fused = cls.from_modules(conv, pool)
                fused.__class__ = cls
                container._modules[names[i]] = fused
                container._modules[names[i + 1]] = nn.Identity()
                if pool is not None:
                    container._modules[names[i + 2]] = nn.Identity()
                i += 3 if pool is not None else 2
            else:
                i += 1
    return model
