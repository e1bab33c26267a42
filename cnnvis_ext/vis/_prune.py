"""Channel-pruned forward pass for channel objectives.

When every objective of a batch is ``channel(layer, c)`` and ``layer`` is
computed, inside an ``nn.Sequential``, by a convolution followed only by
channel-wise modules (ReLU, max/avg pooling, Identity, Dropout in eval mode),
only the objective's channel of that convolution matters. The loop then runs
the model up to the convolution's input and computes one output channel per
image as a grouped convolution (weights ``W[c_i]`` for image ``i``), through
the fused ``conv_relu_pool`` op for fused modules. Everything else the
network would compute at that layer is skipped.
"""
from __future__ import annotations

from typing import List, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._modules import StopForward
from ..nn import ConvReLUPool2d

_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout, nn.LeakyReLU, nn.ELU,
                nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ReLU6)


class _Captured(StopForward):
    pass


class PrunedChannels:
    """The plan for one layer: the conv module and the channel-wise tail after it."""

    def __init__(self, conv: nn.Module, tail: List[nn.Module], out_channels: int):
        self.conv, self.tail, self.out_channels = conv, tail, out_channels

    @staticmethod
    def plan(model: nn.Module, layer: str) -> Optional["PrunedChannels"]:
        if not layer:
            return None
        parent_name, _, child = layer.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(parent) is not nn.Sequential:
            return None
        names = list(parent._modules.keys())
        if child not in names:
            return None
        tail: List[nn.Module] = []
        for name in reversed(names[: names.index(child) + 1]):
            m = parent._modules[name]
            if isinstance(m, ConvReLUPool2d) or type(m) is nn.Conv2d:
                if m.groups != 1 or (type(m) is nn.Conv2d and m.padding_mode != "zeros"):
                    return None
                if isinstance(m, ConvReLUPool2d) and (m.return_switches or m.batchnorm_training()):
                    return None
                if m._forward_hooks or m._forward_pre_hooks:
                    return None
                return PrunedChannels(m, list(reversed(tail)), m.out_channels)
            if isinstance(m, nn.Dropout) and m.training:
                return None
            if not isinstance(m, _CHANNELWISE) or m._forward_hooks or m._forward_pre_hooks:
                return None
            tail.append(m)
        return None

    def values(self, model: nn.Module, x: Tensor, channels: Tensor, k: int) -> Tensor:
        """Mean of channel ``channels[i // k]`` of the layer, per image, shape ``(B,)``."""
        store = {}

        def pre_hook(_m, inp):
            store["x"] = inp[0]
            raise _Captured()

        h = self.conv.register_forward_pre_hook(pre_hook)
        try:
            model(x)
        except _Captured:
            pass
        finally:
            h.remove()
        if "x" not in store:
            raise RuntimeError("layer: the convolution before the objective layer did not run")
        a = store["x"]
        b, cin, hh, ww = a.shape
        m = self.conv
        idx = channels.repeat_interleave(k) if k > 1 else channels
        weight, bias = m.folded_weight_bias() if isinstance(m, ConvReLUPool2d) else (m.weight, m.bias)
        w = weight[idx]  # (B, Cin, kh, kw)
        bias = bias[idx] if bias is not None else None
        a1 = a.reshape(1, b * cin, hh, ww)
        if isinstance(m, ConvReLUPool2d):
            y, _ = ops.conv_relu_pool(a1, w, bias, m.stride, m.padding, m.dilation, b,
                                      m.pool_kernel_size, m.pool_stride, m.pool_padding, m.ceil_mode)
            if m.activation == "relu6":
                y = y.clamp(max=6.0)
        else:
            y = F.conv2d(a1, w, bias, m.stride, m.padding, m.dilation, b)
        y = y.reshape(b, 1, *y.shape[-2:])
        for t in self.tail:
            y = t(y)
        return y.flatten(1).mean(1)
