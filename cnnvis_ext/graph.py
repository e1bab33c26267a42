"""The model as the methods that rewrite or walk it see it: a dataflow graph.

A model is traced once with :mod:`torch.fx`, so that residual adds (in place or
not), concatenations, gates, functional calls and modules that are defined but
never called look the same whatever the model's ``forward`` is written like.
The fused modules of :mod:`cnnvis_ext.nn`, and any module the caller names,
stay leaves of the graph. A model that cannot be traced raises a
:class:`GraphTraceError` naming the module whose code stopped the trace and how
to make it a leaf; the methods that need only gradients work without a graph.

Also here: the exact folding of an eval-mode BatchNorm into the affine layer
before it, and the receptive field of a node (the input window that can change
one of its values).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple, Type, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .ops.common import pair


__all__ = ["GraphTraceError", "trace", "is_fused", "layer_node", "module_path", "batchnorm_affine",
           "fold_batchnorm", "ReceptiveField", "receptive_field", "ConvActPattern",
           "conv_act_patterns", "fusable_conv", "fusable_pool"]

LeafSpec = Union[str, Type[nn.Module]]


def is_fused(m: nn.Module) -> bool:
    """Whether ``m`` runs one of the package's fused ops (:mod:`cnnvis_ext.nn` marks its
    fused modules with ``fused_op = True``); such modules are always leaves of the graph."""
    return bool(getattr(type(m), "fused_op", False))


class GraphTraceError(TypeError):
    """The model's ``forward`` could not be traced into a graph (see the message)."""


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Sequence[LeafSpec]):
        super().__init__()
        self.leaf_names = {s for s in leaves if isinstance(s, str)}
        self.leaf_types = tuple(s for s in leaves if isinstance(s, type))
        self.current = ""
        self.failed_in: Optional[str] = None  # the innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or isinstance(m, self.leaf_types) or is_fused(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        outer = self.current
        self.current = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.current
            raise
        finally:
            self.current = outer


def trace(model: nn.Module, leaf_modules: Iterable[LeafSpec] = ()) -> fx.GraphModule:
    """Trace ``model`` into a :class:`torch.fx.GraphModule` that shares its parameters.

    Args:
        model: any ``nn.Module``.
        leaf_modules: module names (as in ``named_modules()``) or module classes to keep
            as single nodes instead of tracing through them: the way to trace a model
            one of whose submodules has data-dependent control flow.

    Raises:
        GraphTraceError: naming the module whose ``forward`` stopped the trace.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    leaves = list(leaf_modules)
    for s in leaves:
        if not (isinstance(s, str) or (isinstance(s, type) and issubclass(s, nn.Module))):
            raise TypeError(f"leaf_modules: expected module names or nn.Module classes, got {s!r}")
    tracer = _Tracer(leaves)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ... by construct
        where = tracer.failed_in or ""
        mod = model.get_submodule(where) if where else model
        what = f"module {where!r} ({type(mod).__name__})" if where else \
            f"the top-level forward of {type(model).__name__}"
        hint = (f"pass leaf_modules=[{where!r}] (or its class {type(mod).__name__}) to keep it "
                "as one node" if where else "the construct is in the model's own forward, "
                "which cannot be a leaf")
        raise GraphTraceError(
            f"model: torch.fx could not trace {what}: {type(e).__name__}: {e}. To trace the rest, "
            f"{hint}. Saliency, Grad-CAM, guided backprop, activation maximization and "
            "inversion need no graph and work on this model as it is") from e
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def module_path(node: fx.Node) -> str:
    """The name of the module a node belongs to: its target for a module call, else the
    innermost module whose ``forward`` made the call (``""`` at the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return _strip_call_index(next(reversed(stack))) if stack else ""


def _strip_call_index(key: str) -> str:
    return key.split("@", 1)[0]


def _in_first_call(node: fx.Node, layer: str) -> bool:
    """Whether ``node`` is computed by the first call of module ``layer``."""
    if node.op == "call_module" and str(node.target) == layer:
        return True
    stack = node.meta.get("nn_module_stack") or {}
    return layer in stack  # later calls are keyed "layer@1", "layer@2", ...


def layer_node(gm: fx.GraphModule, layer: str) -> fx.Node:
    """The node whose value is the output of the module called ``layer``.

    A leaf module is its call node; a traced-through module is the last node of its
    ``forward``. For a module called more than once (a ReLU shared by two places), the
    output of its first call, as :func:`cnnvis_ext._modules.forward_until` records it.
    """
    found = None
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method") and _in_first_call(node, layer):
            if found is not None and node.op == "call_module" and str(node.target) == layer \
                    and found.op == "call_module" and str(found.target) == layer:
                break  # a second call of a leaf module
            found = node
    if found is None:
        raise KeyError(f"layer: {layer!r} is not called by the traced forward of the model")
    return found


# ----------------------------------------------------------------------------- BatchNorm folding

def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel, for ``bn`` in eval mode.

    Computed from the live running statistics and affine parameters (so it
    keeps their autograd graph); a BatchNorm without running statistics, or in
    training mode, has no such form and raises a ValueError.
    """
    if bn.training or bn.running_var is None or bn.running_mean is None:
        raise ValueError(f"{type(bn).__name__} must be in eval mode with running statistics to be "
                         "folded (call model.eval())")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], bn: nn.modules.batchnorm._BatchNorm
                   ) -> Tuple[Tensor, Tensor]:
    """Weight and bias of the layer ``bn(layer(x))``, for a convolution or linear ``layer``
    whose output channels are ``weight``'s first dimension."""
    scale, shift = batchnorm_affine(bn)
    scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias * scale + shift
    return w, b


# ----------------------------------------------------------------------------- receptive fields

@dataclass(frozen=True)
class ReceptiveField:
    """Where the value at ``(row, col)`` of a node's map comes from in the input image:
    rows ``[row * stride[0] + lo[0], row * stride[0] + hi[0]]`` and columns
    ``[col * stride[1] + lo[1], col * stride[1] + hi[1]]`` (inclusive, before clipping to
    the image). ``whole``: every pixel can matter (global pooling, a gate, a linear layer
    or an operation the geometry does not know sit below)."""

    stride: Tuple[int, int] = (1, 1)
    lo: Tuple[int, int] = (0, 0)
    hi: Tuple[int, int] = (0, 0)
    whole: bool = False

    def box(self, row: int, col: int, size: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """``(top, left, bottom, right)``, bottom/right exclusive, clipped to ``size``."""
        if self.whole:
            return 0, 0, size[0], size[1]
        t, l = row * self.stride[0] + self.lo[0], col * self.stride[1] + self.lo[1]
        b, r = row * self.stride[0] + self.hi[0] + 1, col * self.stride[1] + self.hi[1] + 1
        return max(t, 0), max(l, 0), min(b, size[0]), min(r, size[1])

    def then(self, k, s, p, d=(1, 1)) -> "ReceptiveField":
        """This field seen through a window op (kernel ``k``, stride ``s``, padding ``p``,
        dilation ``d``) applied after it."""
        if self.whole:
            return self
        st = tuple(self.stride[i] * s[i] for i in range(2))
        lo = tuple(self.lo[i] - self.stride[i] * p[i] for i in range(2))
        hi = tuple(self.hi[i] + self.stride[i] * (d[i] * (k[i] - 1) - p[i]) for i in range(2))
        return ReceptiveField(st, lo, hi)  # type: ignore[arg-type]


_WHOLE = ReceptiveField(whole=True)
_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid,
                      nn.Hardsigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.BatchNorm2d,
                      nn.Identity, nn.Dropout, nn.Dropout2d, nn.GroupNorm)
_POINTWISE_FUNCS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub,
                    operator.truediv, torch.add, torch.mul, torch.cat, torch.relu, F.relu,
                    F.relu6, F.hardtanh, F.silu, F.hardswish, F.gelu, torch.sigmoid, F.sigmoid,
                    F.hardsigmoid, torch.tanh, torch.clamp, torch.chunk, torch.split,
                    operator.getitem, torch.flatten, torch.transpose, torch.stack,
                    torch.channel_shuffle, F.dropout}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "clamp", "chunk", "split", "view", "reshape",
                      "contiguous", "transpose", "permute", "mul", "add", "add_", "mul_",
                      "__getitem__", "flatten", "float", "to", "type_as"}


def _window_of_module(m: nn.Module):
    """``(kernel, stride, padding, dilation)`` of a module that slides a window, else None."""
    if isinstance(m, nn.Conv2d) or is_fused(m):
        pad = m.padding
        if isinstance(pad, str):  # 'same' keeps the size: centred window; 'valid': none
            k, d = pair(m.kernel_size, "size"), pair(m.dilation, "size")
            pad = (0, 0) if pad == "valid" else tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
        conv = (pair(m.kernel_size, "size"), pair(m.stride, "size"), pair(pad, "size"),
                pair(m.dilation, "size"))
        if hasattr(m, "pool_kernel_size"):
            return conv, (pair(m.pool_kernel_size, "size"), pair(m.pool_stride, "size"),
                          pair(m.pool_padding, "size"), (1, 1))
        return (conv,)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        s = m.stride if m.stride is not None else m.kernel_size
        d = getattr(m, "dilation", 1)
        return ((pair(m.kernel_size, "size"), pair(s, "size"), pair(m.padding, "size"),
                 pair(d, "size")),)
    return None


def _window_of_function(node: fx.Node):
    f = node.target
    if f in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d, torch.nn.functional.max_pool2d):
        args = list(node.args) + [None] * 6
        kw = node.kwargs
        k = kw.get("kernel_size", args[1])
        s = kw.get("stride", args[2]) or k
        p = kw.get("padding", args[3] if args[3] is not None else 0)
        d = kw.get("dilation", args[4] if f is not F.avg_pool2d and args[4] is not None else 1)
        if all(isinstance(v, (int, tuple, list)) for v in (k, s, p, d)):
            return ((pair(k, "size"), pair(s, "size"), pair(p, "size"), pair(d, "size")),)
    if f in (F.conv2d, torch.conv2d):
        return None  # the weight's size is a runtime value: unknown geometry
    return None


def receptive_field(gm: fx.GraphModule, node: fx.Node) -> ReceptiveField:
    """The :class:`ReceptiveField` of ``node``'s map in the graph's (first) input image.

    The geometry of convolutions and pools (modules or ``F.max_pool2d`` calls with
    constant arguments) is followed exactly; element-wise operations, concatenations,
    residual adds and shape changes take the union of their inputs; anything global
    (adaptive pooling, linear layers, gates from a global mean) or unknown makes the
    field the whole image.
    """
    fields: Dict[fx.Node, Optional[ReceptiveField]] = {}  # None: a constant, no pixels
    modules = dict(gm.named_modules())
    first_input = True
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            fields[n] = ReceptiveField() if first_input else _WHOLE
            first_input = False
            continue
        ins = [fields[a] for a in n.all_input_nodes if fields.get(a) is not None]
        if n.op == "get_attr" or not ins or _is_metadata(n):
            fields[n] = None
            continue
        merged = _union(ins)
        if n.op == "call_module":
            m = modules[str(n.target)]
            win = _window_of_module(m)
            if win is not None:
                for w in win:
                    merged = merged.then(*w)
                fields[n] = merged
            elif isinstance(m, _POINTWISE_MODULES) or getattr(type(m), "identity", False) or \
                    (isinstance(m, nn.Sequential) and not len(m)):
                fields[n] = merged
            elif isinstance(m, nn.Flatten):
                fields[n] = _WHOLE
            else:
                fields[n] = _WHOLE
        elif n.op == "call_function":
            win = _window_of_function(n)
            if win is not None:
                for w in win:
                    merged = merged.then(*w)
                fields[n] = merged
            elif n.target in _POINTWISE_FUNCS:
                fields[n] = merged
            else:
                fields[n] = _WHOLE
        elif n.op == "call_method":
            fields[n] = merged if n.target in _POINTWISE_METHODS else _WHOLE
        else:
            fields[n] = merged
        if n is node:
            break
    return fields.get(node) or ReceptiveField()


def _is_metadata(n: fx.Node) -> bool:
    """Sizes, ranks and dtypes read off a tensor: values that carry no pixels."""
    if n.op == "call_method":
        return n.target in ("size", "dim", "numel")
    return n.op == "call_function" and n.target in (getattr, len) and (
        n.target is len or (len(n.args) > 1 and n.args[1] in ("shape", "dtype", "device", "ndim")))


def _union(fs: Sequence[ReceptiveField]) -> ReceptiveField:
    if any(f.whole for f in fs) or len({f.stride for f in fs}) > 1:
        return _WHOLE
    lo = tuple(min(f.lo[i] for f in fs) for i in range(2))
    hi = tuple(max(f.hi[i] for f in fs) for i in range(2))
    return ReceptiveField(fs[0].stride, lo, hi)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fusion patterns

@dataclass
class ConvActPattern:
    """``Conv2d -> [BatchNorm2d] -> ReLU / ReLU6 -> [MaxPool2d]`` found by dataflow: each node
    is the only user of the one before it. ``pool_args`` holds ``(kernel, stride, padding,
    ceil_mode)`` of the pooling (a module or a ``max_pool2d`` call with constant arguments)."""

    conv: fx.Node
    bn: Optional[fx.Node]
    act: fx.Node
    activation: str
    pool: Optional[fx.Node]
    pool_args: Optional[Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int], bool]]

    @property
    def nodes(self):
        return [n for n in (self.conv, self.bn, self.act, self.pool) if n is not None]


def _activation_kind(node: fx.Node, modules) -> Optional[str]:
    """``"relu"`` / ``"relu6"`` for a ReLU-family node, whatever its spelling, else None."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) in (nn.ReLU6, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0:
            return "relu6"
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_, F.relu_):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is F.hardtanh:
            args = list(node.args) + [None, None]
            lo = node.kwargs.get("min_val", args[1] if args[1] is not None else -1.0)
            hi = node.kwargs.get("max_val", args[2] if args[2] is not None else 1.0)
            return "relu6" if (lo, hi) == (0.0, 6.0) else None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _pool_module_args(m: nn.Module):
    """``(kernel, stride, padding, ceil_mode)`` of a fusable MaxPool2d module, else None."""
    if type(m) is not nn.MaxPool2d or m.return_indices or pair(m.dilation, "size") != (1, 1):
        return None
    k = pair(m.kernel_size, "size")
    args = (k, pair(m.stride if m.stride is not None else m.kernel_size, "size"),
            pair(m.padding, "size"), bool(m.ceil_mode))
    return args if k[0] * k[1] <= 255 else None


def fusable_pool(m: nn.Module) -> bool:
    """Whether the fused op can take max pooling module ``m`` (no indices, no dilation, at most
    255 window positions)."""
    return _pool_module_args(m) is not None


def _pool_args(node: fx.Node, modules):
    """The fusable max-pooling of a node (no indices, no dilation, at most 255 positions)."""
    if node.op == "call_module":
        return _pool_module_args(modules[str(node.target)])
    elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
        names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                 "return_indices"]
        given = dict(zip(names, node.args), **node.kwargs)
        if given.get("return_indices") or pair(given.get("dilation", 1) or 1, "size") != (1, 1):
            return None
        vals = [given.get("kernel_size"), given.get("stride") or given.get("kernel_size"),
                given.get("padding", 0), given.get("ceil_mode", False)]
        if not all(isinstance(v, (int, bool, tuple, list)) for v in vals):
            return None
        args = (pair(vals[0], "size"), pair(vals[1], "size"), pair(vals[2], "size"), bool(vals[3]))
    else:
        return None
    return args if args[0][0] * args[0][1] <= 255 else None


def fusable_conv(m: nn.Module) -> bool:
    """Whether the fused op can take convolution module ``m`` (zero padding; 'same' only with
    stride 1 and an odd effective kernel)."""
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros":
        return False
    if isinstance(m.padding, str) and m.padding == "same":
        tot = [d * (k - 1) for d, k in zip(pair(m.dilation, "size"), pair(m.kernel_size, "size"))]
        return pair(m.stride, "size") == (1, 1) and not any(t % 2 for t in tot)
    return True


def conv_act_patterns(gm: fx.GraphModule):
    """Every :class:`ConvActPattern` of a traced model, in graph order."""
    modules = dict(gm.named_modules())
    found = []

    def only_user(n):
        users = list(n.users)
        return users[0] if len(users) == 1 else None

    for node in gm.graph.nodes:
        if node.op != "call_module" or not fusable_conv(modules[str(node.target)]):
            continue
        nxt, bn = only_user(node), None
        if nxt is not None and nxt.op == "call_module" and \
                type(modules[str(nxt.target)]) is nn.BatchNorm2d and \
                modules[str(nxt.target)].track_running_stats and len(nxt.all_input_nodes) == 1:
            bn, nxt = nxt, only_user(nxt)
        kind = _activation_kind(nxt, modules) if nxt is not None else None
        if kind is None or nxt.all_input_nodes[0] is not (bn or node):
            continue
        act, pool, pool_args = nxt, None, None
        after = only_user(act)
        if after is not None and after.all_input_nodes[:1] == [act]:
            pool_args = _pool_args(after, modules)
            pool = after if pool_args is not None else None
        found.append(ConvActPattern(node, bn, act, kind, pool, pool_args))
    return found
