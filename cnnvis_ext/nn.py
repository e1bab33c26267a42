"""Modules built on the fused ops, and :func:`fuse`, which swaps them into a model."""
from __future__ import annotations

import copy
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import graph, ops
from .graph import fold_batchnorm
from .ops.common import pair

__all__ = ["ConvReLUPool2d", "ConvReLU2d", "FoldedBatchNorm2d", "fuse"]


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
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = self._resolve_padding(padding)
        self.groups = groups
        self.pool_kernel_size = pair(pool_kernel_size, "pool_kernel_size")
        self.pool_stride = (self.pool_kernel_size if pool_stride is None
                            else pair(pool_stride, "pool_stride"))
        self.pool_padding = pair(pool_padding, "pool_padding")
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
        return pair(padding, "padding")

    def reset_parameters(self) -> None:
        # The initialization of nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            if fan_in:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)

    #: ``"relu"`` or ``"relu6"`` (``min(max(x, 0), 6)``, MobileNet's activation).
    activation = "relu"
    #: A BatchNorm folded into the convolution on every forward (see :meth:`from_modules`).
    batchnorm: Optional[nn.Module] = None

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, pool: Optional[nn.MaxPool2d] = None, *,
                     batchnorm: Optional[nn.Module] = None, activation: str = "relu"
                     ) -> "ConvReLUPool2d":
        """Build a fused module that shares ``conv``'s parameters (no copy).

        ``batchnorm``: a BatchNorm2d (or a module holding its parameters and buffers)
        applied between the convolution and the activation. It is not registered
        here (its parameters keep their own names in the model); on every forward
        in eval mode it is folded exactly into the convolution's weight and bias from
        its live parameters and statistics (autograd reaches them), at the cost of
        a pass over the weights only. In training mode the module runs convolution,
        batch statistics and activation unfused: a training BatchNorm is never folded.
        ``activation``: ``"relu"`` or ``"relu6"``.
        """
        if activation not in ("relu", "relu6"):
            raise ValueError(f"activation: expected 'relu' or 'relu6', got {activation!r}")
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv: padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
        if pool is not None:
            if not isinstance(pool, nn.MaxPool2d):
                raise TypeError(f"pool: expected nn.MaxPool2d, got {type(pool).__name__}")
            if pair(pool.dilation, "dilation") != (1, 1) or pool.return_indices:
                raise ValueError("pool: dilated pooling and return_indices are not supported")
        pk = (1, 1) if pool is None else pair(pool.kernel_size, "kernel_size")
        ps = (1, 1) if pool is None else pair(pool.stride if pool.stride is not None else pk,
                                                  "stride")
        pp = (0, 0) if pool is None else pair(pool.padding, "padding")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_channels, m.out_channels = conv.in_channels, conv.out_channels
        m.kernel_size = pair(conv.kernel_size, "kernel_size")
        m.stride = pair(conv.stride, "stride")
        m.dilation = pair(conv.dilation, "dilation")
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
        m.activation = activation
        m.__dict__["batchnorm"] = batchnorm  # a reference, not a submodule (no second copy
        return m                             # of its parameters in state_dict)

    def batchnorm_training(self) -> bool:
        """Whether a folded BatchNorm is in training mode (the module then runs unfused)."""
        bn = self.__dict__.get("batchnorm")
        return bn is not None and bn.training

    def folded_weight_bias(self) -> Tuple[Tensor, Optional[Tensor]]:
        """The weight and bias of the convolution with the eval BatchNorm folded in."""
        bn = self.__dict__.get("batchnorm")
        if bn is None:
            return self.weight, self.bias
        return fold_batchnorm(self.weight, self.bias, bn)

    def _unfused(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Convolution, training BatchNorm, activation, pooling as plain ops (training mode)."""
        bn = self.__dict__["batchnorm"]
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        y = bn(y) if isinstance(bn, nn.modules.batchnorm._BatchNorm) else _batch_norm_train(bn, y)
        y = F.relu6(y) if self.activation == "relu6" else F.relu(y)
        if self.pool_kernel_size == (1, 1) and self.pool_stride == (1, 1) and \
                self.pool_padding == (0, 0):
            return y, torch.zeros(y.shape, dtype=torch.uint8, device=y.device)
        out, idx = F.max_pool2d(y, self.pool_kernel_size, self.pool_stride, self.pool_padding,
                                ceil_mode=self.ceil_mode, return_indices=True)
        return out, ops.indices_to_switches(idx, tuple(y.shape[-2:]), self.pool_kernel_size,
                                            self.pool_stride, self.pool_padding)

    def forward_with_switches(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Return ``(out, switches)`` (see :func:`cnnvis_ext.ops.conv_relu_pool`)."""
        if self.batchnorm_training():
            return self._unfused(x)
        w, b = self.folded_weight_bias()
        out, switches = ops.conv_relu_pool(x, w, b, self.stride, self.padding, self.dilation,
                                           self.groups, self.pool_kernel_size, self.pool_stride,
                                           self.pool_padding, self.ceil_mode)
        if self.activation == "relu6":  # max-pooling commutes with the clamp at 6
            out = out.clamp(max=6.0)
        return out, switches

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
        if self.activation != "relu":
            s += f", activation={self.activation!r}"
        if self.__dict__.get("batchnorm") is not None:
            s += ", batchnorm folded"
        return s


class ConvReLU2d(ConvReLUPool2d):
    """Drop-in for ``nn.Sequential(nn.Conv2d(...), nn.ReLU())``: a :class:`ConvReLUPool2d` without pooling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, pool_kernel_size=1, device=device, dtype=dtype)


class FoldedBatchNorm2d(nn.Module):
    """A BatchNorm2d whose arithmetic a fused convolution before it has taken over.

    It holds the BatchNorm's parameters and running statistics under their own
    names (the model's ``state_dict`` keeps its keys and loads as before) and
    passes its input through; the fused module folds it (eval mode) or runs it
    (training mode, updating the statistics as the BatchNorm would).
    """

    #: Marks a module that passes its input through (for the graph's receptive fields).
    identity = True

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        for name in ("weight", "bias"):
            self.register_parameter(name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, folded into the convolution before it"


def _batch_norm_train(bn: nn.Module, y: Tensor) -> Tensor:
    """What ``nn.BatchNorm2d.forward`` does in training mode, with ``bn``'s parameters."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, factor,
                        bn.eps)


def _fused_from(conv: nn.Conv2d, bn: Optional[nn.Module], activation: str, pool_args
                ) -> ConvReLUPool2d:
    pool = None
    if pool_args is not None:
        k, st, pad, ceil = pool_args
        pool = nn.MaxPool2d(k, st, pad, ceil_mode=ceil)
    cls = ConvReLUPool2d if pool is not None else ConvReLU2d
    fused = ConvReLUPool2d.from_modules(conv, pool, batchnorm=bn, activation=activation)
    fused.__class__ = cls
    return fused


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _structural_copy(m: nn.Module) -> nn.Module:
    """A copy of the container hierarchy of ``m`` whose leaves (and every parameter and
    buffer) are ``m``'s own: swapping modules in it leaves ``m`` as it was."""
    if not m._modules:
        return m
    c = copy.copy(m)
    c._modules = type(m._modules)((k, None if v is None else _structural_copy(v))
                                  for k, v in m._modules.items())
    c._parameters = dict(m._parameters)
    c._buffers = dict(m._buffers)
    return c


def fuse(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Run every ``Conv2d -> [BatchNorm2d] -> ReLU / ReLU6 -> [MaxPool2d]`` of ``model`` as one
    fused op.

    The runs are found in the model's dataflow (:func:`cnnvis_ext.graph.conv_act_patterns`):
    anywhere in the model, as modules or functional calls (``F.relu``, ``x.relu()``,
    ``F.relu6``, ``F.max_pool2d``), in place or not, as long as each step is the only user
    of the one before it. Each becomes a :class:`ConvReLUPool2d` / :class:`ConvReLU2d` that
    shares the convolution's ``weight`` and ``bias`` Parameters; an eval-mode BatchNorm is
    folded into them exactly, on every forward, from its live parameters and statistics
    (gradients reach the convolution's and the BatchNorm's weight and bias), and a
    BatchNorm in training mode is never folded (the block then runs unfused, updating the
    statistics). Nothing else changes: other modules keep their names, the ``state_dict``
    keeps its keys, and the results are those of the model as it was.

    Two forms of result:

    * when every run is made of modules each called once (VGG, AlexNet, MobileNet, your
      ``nn.Sequential`` blocks), the modules are swapped in place: the convolution's name
      holds the fused module (its output is the block's output), the absorbed ReLU and
      MaxPool become ``nn.Identity`` and the BatchNorm a :class:`FoldedBatchNorm2d`, so
      hooks and layer names keep working;
    * otherwise (a ReLU module called twice, as in torchvision's ResNets; functional
      calls) the result is a :class:`torch.fx.GraphModule` with the same submodules
      (containers included) and parameters, whose forward runs the fused graph; ``model``
      itself is left as it was. Hooks on containers (``layer3``) see no call there: name
      leaf modules.

    A model that :func:`cnnvis_ext.graph.trace` cannot trace has only the runs inside its
    ``nn.Sequential`` containers (Conv2d, ReLU, MaxPool2d modules side by side) fused.

    Args:
        model: the model.
        inplace: swap modules in ``model`` itself (default) or in a deep copy of it.

    Returns:
        The fused model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    try:
        gm = graph.trace(model)
    except graph.GraphTraceError:
        return _fuse_sequential(model if inplace else copy.deepcopy(model))
    patterns = graph.conv_act_patterns(gm)
    calls: Dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    swappable = all(n.op == "call_module" and calls[str(n.target)] == 1
                    for p in patterns for n in p.nodes)
    if swappable:
        target = model if inplace else copy.deepcopy(model)
        for p in patterns:
            bn = None
            if p.bn is not None:
                bn = FoldedBatchNorm2d(target.get_submodule(str(p.bn.target)))
                _set_submodule(target, str(p.bn.target), bn)
            conv = target.get_submodule(str(p.conv.target))
            _set_submodule(target, str(p.conv.target), _fused_from(conv, bn, p.activation,
                                                                   p.pool_args))
            for n in (p.act, p.pool):
                if n is not None:
                    _set_submodule(target, str(n.target), nn.Identity())
        return target
    return _fuse_graph(model if inplace else copy.deepcopy(model), gm, patterns)


def _fuse_graph(model: nn.Module, gm: torch.fx.GraphModule, patterns) -> nn.Module:
    tree = _structural_copy(model)
    g = gm.graph
    for p in patterns:
        bn = tree.get_submodule(str(p.bn.target)) if p.bn is not None else None
        conv = tree.get_submodule(str(p.conv.target))
        _set_submodule(tree, str(p.conv.target), _fused_from(conv, bn, p.activation, p.pool_args))
        last = p.pool or p.act
        last.replace_all_uses_with(p.conv)
        for n in (p.pool, p.act, p.bn):
            if n is not None:
                g.erase_node(n)
    g.lint()
    fused = torch.fx.GraphModule(tree, g, class_name=type(model).__name__)
    for name, child in tree.named_children():  # the containers themselves, not fx's stand-ins
        setattr(fused, name, child)
    fused.train(model.training)
    return fused


def _fuse_sequential(model: nn.Module) -> nn.Module:
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

    (The fallback of :func:`fuse` for models that cannot be traced.)
    """
    for container in list(model.modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules.keys())
        i = 0
        while i < len(names):
            conv = container._modules[names[i]]
            nxt = container._modules[names[i + 1]] if i + 1 < len(names) else None
            if graph.fusable_conv(conv) and type(nxt) is nn.ReLU:
                pool = container._modules[names[i + 2]] if i + 2 < len(names) else None
                if not graph.fusable_pool(pool):
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
