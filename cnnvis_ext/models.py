"""The example network of the survey: a small CONV → RELU → POOL ConvNet for 32×32 images.

The survey's running example is a ConvNet for CIFAR-10: an INPUT volume of
32×32×3, blocks of CONV → RELU → POOL, and an FC layer that gives the
1×1×10 class scores fed to a softmax. :func:`cifar_cnn` builds that network
from the fused :class:`cnnvis_ext.nn.ConvReLUPool2d` blocks, so every block
runs one ``conv_relu_pool`` kernel and records its max-pool switches (which
the deconvnet reuses).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

from torch import nn

from .nn import ConvReLUPool2d

__all__ = ["cifar_cnn", "residual_cnn", "BasicBlock", "DEFAULT_CHANNELS"]

#: Filters of the default network's conv blocks (three blocks: 32→16→8→4 px).
DEFAULT_CHANNELS = (16, 32, 64)


def cifar_cnn(num_classes: int = 10, *, in_channels: int = 3, input_size: int = 32,
              channels: Sequence[int] = DEFAULT_CHANNELS, kernel_size: int = 3,
              pool: int = 2, hidden: Optional[int] = 64, dropout: float = 0.0) -> nn.Sequential:
    r"""The survey's example ConvNet: ``[CONV → RELU → POOL] × len(channels) → FC (→ RELU → FC)``.

    Every conv block is one fused :class:`~cnnvis_ext.nn.ConvReLUPool2d` with
    ``"same"`` padding (the volume keeps its width and height through the
    convolution) followed by ``pool``×``pool`` max pooling. The network returns
    class *logits*; the softmax is applied by the loss
    (:func:`torch.nn.functional.cross_entropy`) or by the caller.

    Layers are named ``conv1``, ``conv2``, ..., ``flatten``, then either ``fc``
    (``hidden=None``) or ``fc1``, ``relu``, (``dropout``,) ``fc2``: the names
    the visualization functions and the ``cnnvis`` command line take.

    The simplest network of the survey, ``INPUT [32×32×3] → CONV (12 filters)
    [32×32×12] → RELU → POOL [16×16×12] → FC [1×1×10]``, is
    ``cifar_cnn(channels=(12,), hidden=None)``.

    Args:
        num_classes: number of output classes (``10`` for CIFAR-10 and the digits).
        in_channels: channels of the input volume.
        input_size: width and height of the (square) input; must be divisible
            by ``pool ** len(channels)``.
        channels: filters of each conv block, one entry per block.
        kernel_size: odd size of the square conv kernels.
        pool: max-pooling window and stride of every block (``1``: no pooling).
        hidden: width of the hidden FC layer, or ``None`` for a single FC layer.
        dropout: dropout probability before the last FC layer (``0``: none).

    Returns:
        An :class:`torch.nn.Sequential` mapping ``(N, in_channels, input_size,
        input_size)`` images to ``(N, num_classes)`` logits.

    Example:
        >>> net = cifar_cnn(channels=(12,), hidden=None)
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> net.conv1(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 12, 16, 16])
    """
    channels = tuple(int(c) for c in channels)
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"channels: expected a non-empty sequence of positive ints, got {channels}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("input_size", input_size), ("pool", pool)):
        if int(value) != value or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected a positive odd int, got {kernel_size!r}")
    if hidden is not None and hidden <= 0:
        raise ValueError(f"hidden: expected a positive int or None, got {hidden!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
    side = input_size
    for _ in channels:
        if side % pool:
            raise ValueError(f"input_size: {input_size} is not divisible by pool**blocks = "
                             f"{pool}**{len(channels)}")
        side //= pool

    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    c_in = in_channels
    for i, c_out in enumerate(channels, start=1):
        layers[f"conv{i}"] = ConvReLUPool2d(c_in, c_out, kernel_size, padding=kernel_size // 2,
                                            pool_kernel_size=pool)
        c_in = c_out
    layers["flatten"] = nn.Flatten()
    features = c_in * side * side
    if hidden is None:
        if dropout:
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc"] = nn.Linear(features, num_classes)
    else:
        layers["fc1"] = nn.Linear(features, hidden)
        layers["relu"] = nn.ReLU()
        if dropout:
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc2"] = nn.Linear(hidden, num_classes)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """A residual block as torchvision's ResNets write it: conv-BN-ReLU-conv-BN, an in-place
    add of the (projected) input, and the same ReLU module called again after the add."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def residual_cnn(num_classes: int = 10, *, in_channels: int = 3, width: int = 16) -> nn.Module:
    """A small residual network with BatchNorm for 32x32 inputs: a modern architecture beside
    the survey's chain, to show the toolkit on one.

    ``stem`` (conv-BN-ReLU), ``block1`` (width), ``block2`` (2 x width, stride 2), ``block3``
    (4 x width, stride 2), global average pooling and ``fc``. Any input size works.

    Example:
        >>> residual_cnn()(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("width", width)):
        if int(value) != value or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    w = int(width)
    return nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                               nn.ReLU(inplace=True))),
        ("block1", BasicBlock(w, w)),
        ("block2", BasicBlock(w, 2 * w, 2)),
        ("block3", BasicBlock(2 * w, 4 * w, 2)),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4 * w, num_classes)),
    ]))
