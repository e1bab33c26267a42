"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) on any traced CNN.

:func:`lrp` traces the model into its dataflow graph
(:func:`cnnvis_ext.graph.trace`), runs it once recording every node's value,
and walks the graph backwards from the target logits, sharing each node's
relevance among its inputs:

* convolutions and linear layers (and the convolution inside the fused
  modules) take their :class:`~cnnvis_ext.vis.lrp_rules.Rule`:
  :class:`Epsilon`, :class:`Gamma`, :class:`AlphaBeta`, :class:`ZBox`,
  :class:`Flat`, :class:`WSquare`, or a named preset equal to zennit's
  composites (``"epsilon_plus"``, ``"epsilon_plus_flat"``,
  ``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``);
* canonization: an eval BatchNorm right after a convolution or linear layer
  (its only user) is merged exactly into it; one right before a convolution
  without padding is merged into that; any other is the affine map it is
  (epsilon rule);
* a residual addition shares relevance among its summands in proportion to
  their contributions (zennit's ``Norm`` on its ``Sum``); a concatenation splits
  it; a gate ``x * g`` (the factor with fewer elements, or a constant) passes
  all of it to ``x`` and none to ``g``;
* average and adaptive pooling, and means, use the epsilon rule; max pooling
  routes relevance to each window's maximum;
* element-wise activations (ReLU, ReLU6, SiLU, GELU, ...), dropout, LayerNorm
  and GroupNorm pass relevance through unchanged (as transformer LRP treats
  LayerNorm); reshapes, permutations and channel shuffles move it with the
  values.

With the epsilon rule and no biases (and no BatchNorm shifts), relevance is
conserved: it sums to the target logit at every cut of the graph.
"""
from __future__ import annotations

import operator
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .. import graph
from .._modules import get_layer
from ..graph import batchnorm_affine, fold_batchnorm
from ..nn import ConvReLUPool2d
from ._common import check_model, eval_mode, prepare_inputs
from .lrp_rules import (FIRST_LAYER, PRESETS, AlphaBeta, Epsilon, Flat, Gamma, Rule, WSquare, ZBox,
                        _as_rule, _conv_f, _div, _linear_f, _linear_rule, _route_max, preset)

__all__ = ["Rule", "Epsilon", "Gamma", "AlphaBeta", "ZBox", "Flat", "WSquare", "FIRST_LAYER",
           "PRESETS", "preset", "lrp", "LRPResult"]


class LRPResult(NamedTuple):
    """``relevance``: at the input, like the images (``(N, T, ...)`` for 2-D targets);
    ``layers``: module name -> relevance at its input (only with ``return_layers``)."""

    relevance: Tensor
    layers: Dict[str, Tensor]


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ELU,
                 nn.SELU, nn.CELU, nn.LeakyReLU, nn.Softplus, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
                 nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity, nn.LayerNorm, nn.GroupNorm)
_PASS_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.silu, F.hardswish,
               F.gelu, F.mish, F.elu, F.selu, F.leaky_relu, F.softplus, torch.sigmoid, F.sigmoid,
               F.hardsigmoid, torch.tanh, F.dropout, F.dropout2d, F.layer_norm, F.group_norm,
               torch.clone, operator.pos}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clone", "contiguous", "float",
                 "to", "type_as", "detach"}
#: Ops that only move values: relevance moves with them (their vector-Jacobian product).
_MOVE_FUNCS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.cat,
               torch.stack, torch.chunk, torch.split, torch.squeeze, torch.unsqueeze,
               operator.getitem, torch.channel_shuffle, F.pad, F.max_pool2d, torch.max_pool2d,
               F.interpolate}
_MOVE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "chunk", "split", "squeeze",
                 "unsqueeze", "__getitem__", "expand", "repeat"}
#: Linear maps without weights: the epsilon rule (zennit's Norm).
_NORM_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
_NORM_FUNCS = {F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, torch.sum}
_NORM_METHODS = {"mean", "sum"}
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_STRUCTURE_MODULES = (nn.Flatten, nn.Unflatten, nn.MaxPool2d, nn.ChannelShuffle, nn.Upsample)


class _Walk:
    """The backward walk over one traced model (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, env: Dict[fx.Node, object], rule_for, stabilizer: float):
        self.gm, self.env, self.rule_for, self.eps = gm, env, rule_for, stabilizer
        self.modules = dict(gm.named_modules())
        self.R: Dict[fx.Node, object] = {}
        self.folded_after: Dict[fx.Node, nn.Module] = {}   # conv node -> the BN after it
        self.folded_before: Dict[fx.Node, nn.Module] = {}  # conv node -> the BN before it
        self.skip_bn: set = set()
        self._canonize()

    # -- canonization -------------------------------------------------------------------
    def _module(self, n: fx.Node) -> Optional[nn.Module]:
        return self.modules.get(str(n.target)) if n.op == "call_module" else None

    def _canonize(self) -> None:
        for n in self.gm.graph.nodes:
            bn = self._module(n)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or len(n.all_input_nodes) != 1:
                continue
            below = n.all_input_nodes[0]
            lin = self._module(below)
            if type(lin) in (nn.Conv2d, nn.Linear) and len(below.users) == 1 \
                    and below not in self.folded_after:
                self.folded_after[below] = bn
                self.skip_bn.add(n)
                continue
            users = list(n.users)
            if len(users) == 1:
                conv = self._module(users[0])
                if type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros" \
                        and conv.padding in (0, (0, 0), "valid") and users[0] not in self.folded_before:
                    self.folded_before[users[0]] = bn
                    self.skip_bn.add(n)

    # -- relevance bookkeeping ----------------------------------------------------------
    def add(self, node, r) -> None:
        if not isinstance(node, fx.Node) or r is None:
            return
        old = self.R.get(node)
        self.R[node] = r if old is None else old + r

    def value(self, a):
        return self.env[a] if isinstance(a, fx.Node) else a

    # -- the walk -----------------------------------------------------------------------
    def run(self, start: Tensor) -> Dict[fx.Node, object]:
        out_node = next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")
        self.add(out_node.args[0] if not isinstance(out_node.args[0], (tuple, list))
                 else out_node.args[0][0], start)
        for n in reversed(self.gm.graph.nodes):
            if n.op in ("call_module", "call_function", "call_method") and n in self.R:
                self.step(n, self.R[n])
        return self.R

    def step(self, n: fx.Node, R) -> None:
        if isinstance(R, dict):  # relevance of a tuple-valued node, by item
            self._move(n, R)
            return
        if n.op == "call_module":
            self._module_step(n, self._module(n), R)
        elif n.op == "call_function":
            self._op_step(n, n.target, R, _PASS_FUNCS, _MOVE_FUNCS, _NORM_FUNCS)
        else:
            self._op_step(n, n.target, R, _PASS_METHODS, _MOVE_METHODS, _NORM_METHODS)

    def _module_step(self, n, m, R) -> None:
        a = n.args[0]
        x = self.value(a)
        if n in self.skip_bn:
            self.add(a, R)
        elif type(m) in (nn.Conv2d, nn.Linear) or isinstance(m, ConvReLUPool2d):
            self.add(a, self._weighted(n, m, x, R))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            scale, shift = batchnorm_affine(m)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            self.add(a, _linear_rule(Epsilon(self.eps), lambda v, w, b: v * w.reshape(shape)
                                     + b.reshape(shape), x, scale.detach(), shift.detach(), R))
        elif isinstance(m, _PASS_MODULES) or _is_identity_module(m) or \
                getattr(type(m), "identity", False):
            self.add(a, R.reshape(x.shape))
        elif isinstance(m, _NORM_MODULES):
            self.add(a, _linear_rule(Epsilon(self.eps), lambda v, w, b: m(v), x, x, None, R))
        elif isinstance(m, _STRUCTURE_MODULES) or _is_permute_module(m):
            self._move(n, R)
        else:
            raise TypeError(f"lrp: module {n.target!r} ({type(m).__name__}) has no LRP rule; "
                            "supported: convolutions, linear layers, BatchNorm, pooling, "
                            "element-wise activations, dropout, LayerNorm/GroupNorm, reshapes")

    def _weighted(self, n, m, x, R) -> Tensor:
        rule = self.rule_for(n, m)
        w, b = m.folded_weight_bias() if isinstance(m, ConvReLUPool2d) else (m.weight, m.bias)
        if n in self.folded_after:
            w, b = fold_batchnorm(w, b, self.folded_after[n])
        if n in self.folded_before:
            scale, shift = batchnorm_affine(self.folded_before[n])
            w0 = w
            w = w0 * scale.reshape(1, -1, 1, 1).to(w0.dtype)
            b_shift = (w0 * shift.reshape(1, -1, 1, 1).to(w0.dtype)).sum((1, 2, 3))
            b = b_shift if b is None else b + b_shift
            bn_node = n.all_input_nodes[0]
            x = self.value(bn_node.args[0])
            n = bn_node  # the relevance goes to the BatchNorm's input
        w = w.detach()
        b = None if b is None else b.detach()
        f = _linear_f if isinstance(m, nn.Linear) else _conv_f(m)
        if isinstance(m, ConvReLUPool2d) and not (tuple(m.pool_kernel_size) == (1, 1)
                                                  and tuple(m.pool_stride) == (1, 1)):
            with torch.no_grad():
                y = F.relu6(f(x, w, b)) if m.activation == "relu6" else F.relu(f(x, w, b))
            R = _route_max(y, (m.pool_kernel_size, m.pool_stride, m.pool_padding, 1, m.ceil_mode), R)
        r = _linear_rule(rule, f, x, w, b, R)
        if n is not None and n.op == "call_module" and n in self.skip_bn:
            self.add(n.args[0], r)
            return None
        return r

    def _op_step(self, n, op, R, pass_ops, move_ops, norm_ops) -> None:
        if op in (operator.getitem, "__getitem__") and isinstance(n.args[0], fx.Node) \
                and isinstance(self.env.get(n.args[0]), (tuple, list)):
            # an item of a tuple (chunk, split): kept by item for the op that made the tuple
            src, key = n.args[0], n.args[1]
            parts = self.R.setdefault(src, {})
            parts[key] = R if key not in parts else parts[key] + R
            return
        tensors = [a for a in n.all_input_nodes if isinstance(self.env.get(a), Tensor)]
        name = op if isinstance(op, str) else getattr(op, "__name__", repr(op))
        if op in _ADD or name == "add" or name == "add_":
            self._sum(n, R, sign=1)
        elif op in (operator.sub, torch.sub) or name in ("sub", "sub_"):
            self._sum(n, R, sign=-1)
        elif op in _MUL or name in ("mul", "mul_"):
            self._gate(n, R, tensors)
        elif op in (operator.truediv, torch.div) or name in ("div", "div_"):
            if len(tensors) == 1 and n.args and n.args[0] is tensors[0]:
                self.add(tensors[0], R)  # a constant divisor: a scaling passes relevance as is
            else:
                self._unsupported(n, name)
        elif op in pass_ops:
            if tensors:
                self.add(tensors[0], R.reshape(self.env[tensors[0]].shape))
        elif op in move_ops:
            self._move(n, R)
        elif op in norm_ops:
            self._norm(n, R, tensors)
        elif name == "stochastic_depth":  # torchvision's, the identity in eval mode
            self.add(tensors[0], R)
        elif op is getattr or name in ("size", "dim"):
            return
        else:
            self._unsupported(n, name)

    def _unsupported(self, n, name) -> None:
        where = graph.module_path(n)
        raise TypeError(f"lrp: the operation {name!r} (node {n.name!r}"
                        f"{', in module ' + repr(where) if where else ''}) has no LRP rule")

    def _call(self, n, inputs: Dict[fx.Node, Tensor]):
        """Recompute node ``n`` with some of its tensor inputs replaced."""
        args = fx.node.map_arg(n.args, lambda a: inputs.get(a, self.env[a]))
        kwargs = fx.node.map_arg(n.kwargs, lambda a: inputs.get(a, self.env[a]))
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return self._module(n)(*args, **kwargs)

    def _move(self, n, R) -> None:
        """Relevance moves with the values: the vector-Jacobian product of the op."""
        ins = [a for a in n.all_input_nodes if isinstance(self.env.get(a), Tensor)
               and self.env[a].is_floating_point()]
        if not ins:
            return
        with torch.enable_grad():
            leaves = {a: self.env[a].detach().requires_grad_(True) for a in ins}
            out = self._call(n, leaves)
            if isinstance(R, dict):
                pairs = [(out[i], r) for i, r in R.items()]
                outs, grads = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                outs, grads = [out], [R.reshape(out.shape)]
            gs = torch.autograd.grad(outs, list(leaves.values()), grads, allow_unused=True)
        for a, g in zip(leaves, gs):
            self.add(a, g)

    def _norm(self, n, R, tensors) -> None:
        with torch.enable_grad():
            leaves = {a: self.env[a].detach().requires_grad_(True) for a in tensors}
            z = self._call(n, leaves)
            gs = torch.autograd.grad(z, list(leaves.values()), _div(R, z.detach(), self.eps))
        for (a, v), g in zip(leaves.items(), gs):
            self.add(a, v.detach() * g)

    def _sum(self, n, R, sign: int) -> None:
        tensors = [a for a in n.args[:2] if isinstance(a, fx.Node) and
                   isinstance(self.env.get(a), Tensor)]
        if len(tensors) < 2:
            if tensors:  # a constant offset: the tensor keeps the relevance
                self.add(tensors[0], R.reshape(self.env[tensors[0]].shape)
                         if self.env[tensors[0]].shape == R.shape else None)
            return
        self._norm(n, R, tensors)  # for a - b: the epsilon rule on the contributions a and -b

    def _gate(self, n, R, tensors) -> None:
        if len(tensors) == 1:  # a constant factor (layer scale): the tensor keeps the relevance
            self.add(tensors[0], R)
            return
        a, g = tensors[0], tensors[1]
        if self.env[a].numel() < self.env[g].numel():
            a, g = g, a
        self.add(a, R)  # the gated branch keeps all of it, the gate gets none


def _is_identity_module(m: nn.Module) -> bool:
    """Modules that are the identity in eval mode (torchvision's StochasticDepth)."""
    return type(m).__name__ in ("StochasticDepth", "DropPath") or isinstance(m, nn.Dropout)


def _is_permute_module(m: nn.Module) -> bool:
    return type(m).__name__ == "Permute" and hasattr(m, "dims")


class _Recorder(fx.Interpreter):
    """Runs the graph once, keeping every node's value."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values: Dict[fx.Node, object] = {}

    def run_node(self, n):
        v = super().run_node(n)
        self.values[n] = v
        return v


def _rule_table(model, rules):
    default: Rule = Epsilon()
    by_name: Dict[str, Rule] = {}
    by_type: List[Tuple[type, Rule]] = []
    first_rule: Optional[Rule] = None
    stabilizer = 1e-6
    if isinstance(rules, str) and rules.lower().replace("-", "_") in PRESETS:
        rules = preset(rules)
    if rules is not None:
        if not isinstance(rules, dict):
            default = _as_rule(rules, "default")
        else:
            for key, r in rules.items():
                if key == "default":
                    default = _as_rule(r, key)
                elif key == FIRST_LAYER:
                    first_rule = _as_rule(r, key)
                elif isinstance(key, str):
                    get_layer(model, key)
                    by_name[key] = _as_rule(r, key)
                elif isinstance(key, type) and issubclass(key, nn.Module):
                    by_type.append((key, _as_rule(r, key.__name__)))
                else:
                    raise TypeError(f"rules: keys must be layer names, module types, FIRST_LAYER or "
                                    f"'default', got {key!r}")
    if isinstance(default, (Epsilon, Gamma)):
        stabilizer = default.eps
    return default, by_name, by_type, first_rule, stabilizer


def lrp(model: nn.Module, images: Tensor, target, rules=None, *,
        return_layers: bool = False, leaf_modules=()) -> LRPResult:
    r"""Layer-wise relevance propagation of the target logits back to the input.

    Args:
        model: any CNN that :func:`cnnvis_ext.graph.trace` can trace (see the module
            docstring for what each construct does). Runs in eval mode; flags restored.
        images: ``(N, C, H, W)`` (or ``(N, F)``) input batch.
        target: class per image: int, ``(N,)`` or ``(N, T)``; the start
            relevance is the target logit (``out * onehot(target)``).
        rules: the rule of each convolution / linear layer (and of the convolution in
            fused modules): a preset name (:data:`PRESETS`, e.g.
            ``"epsilon_plus_flat"``; :func:`preset` for its options), a single rule for
            all, or a dict whose keys are layer names (from ``named_modules()``), module
            types (``nn.Conv2d`` also matches the fused modules), :data:`FIRST_LAYER` (the
            first convolution or linear layer the input reaches) or ``"default"``, and whose
            values are :class:`Rule` objects or the names ``"epsilon"``, ``"zero"``,
            ``"gamma"``, ``"alpha1beta0"`` (``"zplus"``), ``"alpha2beta1"``, ``"zbox"``,
            ``"flat"``, ``"wsquare"``. Names win over types, types over the default, which
            is ``Epsilon(1e-6)``. Pooling, sums and unmerged BatchNorms use the default
            rule's epsilon when it is an epsilon or gamma rule, else 1e-6.
        return_layers: also return the relevance at the input of every module called.
        leaf_modules: passed to :func:`cnnvis_ext.graph.trace` (modules to keep whole;
            they need an LRP rule of their own, so only modules of the kinds above).

    Returns:
        :class:`LRPResult` ``(relevance, layers)``.

    Example:
        >>> r = lrp(model, images, labels, rules="epsilon_plus_flat").relevance
        >>> r = lrp(model, images, labels, rules={"default": "epsilon", nn.Conv2d: "gamma",
        ...                                        FIRST_LAYER: ZBox(-2.2, 2.7)}).relevance
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target)
    t_flat = t.reshape(-1)
    default, by_name, by_type, first_rule, stabilizer = _rule_table(model, rules)
    gm = graph.trace(model, leaf_modules)
    weighted = [n for n in gm.graph.nodes if n.op == "call_module" and
                isinstance(gm.get_submodule(str(n.target)), (nn.Conv2d, nn.Linear, ConvReLUPool2d))]
    first = weighted[0] if weighted else None

    def rule_for(n, m):
        if n.target in by_name:
            return by_name[n.target]
        if n is first and first_rule is not None:
            return first_rule
        for typ, r in by_type:
            if type(m) is typ:
                return r
        for typ, r in by_type:
            if isinstance(m, typ) or (typ is nn.Conv2d and isinstance(m, ConvReLUPool2d)):
                return r
        return default

    with eval_mode(model, x), torch.no_grad():
        rec = _Recorder(gm)
        out = rec.run(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor):
            raise TypeError(f"lrp: the model must return a tensor, got {type(out).__name__}")
        out2 = out.reshape(out.shape[0], -1)
        if t_flat.numel() and int(t_flat.max()) >= out2.shape[1]:
            raise ValueError(f"target: class {int(t_flat.max())} is out of range for a model with "
                             f"{out2.shape[1]} outputs")
        start = torch.zeros_like(out2).scatter_(1, t_flat[:, None], out2.gather(1, t_flat[:, None]))
        walk = _Walk(gm, rec.values, rule_for, stabilizer)
        R = walk.run(start.reshape(out.shape))
    inp = next(n for n in gm.graph.nodes if n.op == "placeholder")
    rel = R.get(inp)
    rel = torch.zeros_like(x) if rel is None else rel.reshape(x.shape)

    def unflat(r):
        return r.reshape(t.shape[0], t.shape[1], *r.shape[1:]) if multi else r

    layers: Dict[str, Tensor] = {}
    if return_layers:  # in the order relevance reaches them: from the output down
        for n in reversed(gm.graph.nodes):
            if n.op == "call_module" and n.all_input_nodes and n.all_input_nodes[0] in R:
                r = R[n.all_input_nodes[0]]
                if isinstance(r, Tensor):
                    layers.setdefault(str(n.target), unflat(r))
    return LRPResult(unflat(rel), layers)
