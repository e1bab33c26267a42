"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019).

:func:`lrp` runs the model once, records the chain of leaf modules it
executed, and propagates the relevance of the target logits back through that
chain layer by layer with the rule assigned to each layer:

* :class:`Epsilon` — ``R_i = a_i sum_j w_ij R_j / (z_j + eps sign(z_j))``
  (``eps = 0``: LRP-0, equal to gradient x input on ReLU networks);
* :class:`Gamma` — favours the contributions that agree with the sign of each output:
  on non-negative inputs and positive outputs LRP-epsilon with weights ``w + gamma w+``
  (biases ``b + gamma b+``); the signed-input form is zennit's;
* :class:`AlphaBeta` — ``alpha`` times the positive and ``-beta`` times the
  negative contributions, each renormalized (alpha1-beta0 is ``AlphaBeta(1, 0)``;
  the positive / negative part of a bias joins the positive / negative contributions);
* :class:`ZBox` — the z^B rule for the first layer, with the input bounded
  to ``[low, high]`` (biases ignored).

ReLU, Dropout, Identity and Flatten pass relevance through; MaxPool2d routes
it to the maximum of each window (winner takes all); AvgPool2d and
AdaptiveAvgPool2d use the epsilon rule; a BatchNorm2d right after a Conv2d is
folded into it; the fused :class:`~cnnvis_ext.nn.ConvReLUPool2d` /
:class:`~cnnvis_ext.nn.ConvReLU2d` are treated as conv -> relu -> maxpool.
Any other module raises an error naming it. The model must be a chain: each
module's input is the previous module's output (reshapes between them, as
``torch.flatten`` in torchvision's VGG forward, are allowed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._modules import get_layer
from ..graph import batchnorm_affine, fold_batchnorm
from ..nn import ConvReLUPool2d
from ._common import check_model, eval_mode, prepare_inputs

__all__ = ["Rule", "Epsilon", "Gamma", "AlphaBeta", "ZBox", "FIRST_LAYER", "lrp", "LRPResult"]

#: Key of ``rules`` that names the first Conv2d/Linear layer of the chain (e.g. for ``"zbox"``).
FIRST_LAYER = "<first>"


class Rule:
    """Base class of LRP rules for layers with weights (Conv2d, Linear)."""


@dataclass(frozen=True)
class Epsilon(Rule):
    eps: float = 1e-6


@dataclass(frozen=True)
class Gamma(Rule):
    gamma: float = 0.25
    eps: float = 1e-6


@dataclass(frozen=True)
class AlphaBeta(Rule):
    alpha: float = 1.0
    beta: float = 0.0
    eps: float = 1e-9

    def __post_init__(self):
        if abs(self.alpha - self.beta - 1.0) > 1e-12 or self.beta < 0:
            raise ValueError(f"alpha: expected alpha - beta = 1 and beta >= 0, got alpha={self.alpha}, "
                             f"beta={self.beta}")


@dataclass(frozen=True)
class ZBox(Rule):
    """z^B rule; ``low``/``high``: numbers, per-channel sequences or tensors broadcastable to
    the layer input; ``None``: each image's own minimum/maximum."""

    low: object = None
    high: object = None
    eps: float = 1e-9


_NAMED = {"epsilon": Epsilon, "zero": lambda: Epsilon(0.0), "lrp0": lambda: Epsilon(0.0),
          "gamma": Gamma, "alpha1beta0": AlphaBeta, "alphabeta": AlphaBeta, "zplus": AlphaBeta,
          "z+": AlphaBeta, "alpha2beta1": lambda: AlphaBeta(2.0, 1.0), "zbox": ZBox}


def _as_rule(r, key) -> Rule:
    if isinstance(r, Rule):
        return r
    if isinstance(r, str) and r.lower().replace("-", "").replace("_", "") in _NAMED:
        return _NAMED[r.lower().replace("-", "").replace("_", "")]()
    raise ValueError(f"rules: {r!r} (for {key!r}) is not a rule; expected a Rule or one of "
                     f"{sorted(_NAMED)}")


class LRPResult(NamedTuple):
    """``relevance``: at the input, like the images (``(N, T, ...)`` for 2-D targets);
    ``layers``: name -> relevance at the input of that module (only with ``return_layers``)."""

    relevance: Tensor
    layers: Dict[str, Tensor]


_PASS = (nn.ReLU, nn.Dropout, nn.Identity)
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
              nn.Flatten, nn.Dropout, nn.BatchNorm2d, nn.Identity, ConvReLUPool2d)


class _Step(NamedTuple):
    name: str
    module: nn.Module
    inp: Tensor  # a copy of the input as the module saw it
    out_shape: torch.Size


def _trace(model: nn.Module, x: Tensor) -> Tuple[List[_Step], Tensor]:
    steps: List[_Step] = []
    io: List[Tuple[Tensor, Tensor]] = []
    handles = []

    def make(name):
        def hook(mod, inp, out):
            if not isinstance(out, Tensor) or len(inp) != 1 or not isinstance(inp[0], Tensor):
                raise TypeError(f"lrp: module {name!r} ({type(mod).__name__}) does not map one tensor "
                                "to one tensor")
            steps.append(_Step(name, mod, inp[0].detach().clone(), out.shape))
            io.append((inp[0], out))
        return hook

    for name, mod in model.named_modules():
        leaf = isinstance(mod, ConvReLUPool2d) or not any(True for _ in mod.children())
        if not leaf or not name and mod is not model:
            continue
        if name == "" and any(True for _ in mod.children()):
            continue
        if not isinstance(mod, _SUPPORTED):
            bad = name or type(mod).__name__
            raise TypeError(f"lrp: module {bad!r} ({type(mod).__name__}) is not supported; supported "
                            f"modules: {', '.join(t.__name__ for t in _SUPPORTED)}, ConvReLU2d")
        handles.append(mod.register_forward_hook(make(name or "<model>")))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, Tensor):
        raise TypeError(f"lrp: the model must return a tensor, got {type(out).__name__}")
    if not steps:
        raise ValueError("lrp: the model ran no supported module")
    # chain check
    prev = x
    for (step, (i_t, o_t)) in zip(steps, io):
        if not _same(i_t, prev):
            raise ValueError(f"lrp: the model is not a chain of modules: the input of {step.name!r} is "
                             "not the output of the module before it (residual connections, "
                             "concatenations and functional ops between modules are not supported)")
        prev = o_t
    if not _same(out, prev):
        raise ValueError("lrp: the model output is not the output of its last module")
    return steps, out


def _same(a: Tensor, b: Tensor) -> bool:
    if a is b:
        return True
    if a.shape[0] != b.shape[0] or a.numel() != b.numel():
        return False
    if a.numel() == 0:
        return True
    return a.data_ptr() == b.data_ptr() or torch.equal(a.reshape(b.shape), b)


# ---------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------

def _div(r: Tensor, z: Tensor, eps: float) -> Tensor:
    den = z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    safe = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.zeros_like(r), r / safe)


def _grads(outputs, inputs, s):
    return torch.autograd.grad(outputs, inputs, grad_outputs=[s] * len(outputs) if isinstance(outputs, (list, tuple)) else s)


def _bounds(v, a: Tensor, which: str) -> Tensor:
    if v is None:
        red = a.flatten(1).amin(1) if which == "low" else a.flatten(1).amax(1)
        return red.reshape(-1, *([1] * (a.dim() - 1))).expand_as(a)
    t = torch.as_tensor(v, device=a.device, dtype=a.dtype)
    if t.dim() == 1 and a.dim() == 4:
        t = t.reshape(1, -1, 1, 1)
    try:
        return t.expand_as(a)
    except RuntimeError:
        raise ValueError(f"rules: ZBox {which}={tuple(t.shape)} does not broadcast to the layer input "
                         f"{tuple(a.shape)}") from None


def _gamma_rule(rule: "Gamma", f, a: Tensor, w: Tensor, b: Optional[Tensor], R: Tensor) -> Tensor:
    """The gamma rule for signed inputs and outputs (Montavon et al. 2019, as zennit defines it).

    Where the layer's output z is positive, the contributions that push it up
    are favoured: ``a+ (w + gamma w+) + a- (w + gamma w-)`` (bias ``b + gamma b+``);
    where z is negative, those that push it down: ``a+ (w + gamma w-) + a- (w + gamma w+)``
    (bias ``b + gamma b-``). On non-negative inputs and positive outputs this is
    LRP-epsilon with weights ``w + gamma w+``.
    """
    g = rule.gamma
    w_up, w_down = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
    b_up = None if b is None else b + g * b.clamp(min=0)
    b_down = None if b is None else b + g * b.clamp(max=0)
    ap = a.clamp(min=0).detach().requires_grad_(True)
    an = a.clamp(max=0).detach().requires_grad_(True)
    z = f(a.detach(), w, b).detach()
    out = torch.zeros_like(a)
    for sign, (wp_, wn_, b_) in ((1, (w_up, w_down, b_up)), (-1, (w_down, w_up, b_down))):
        z1, z2 = f(ap, wp_, b_), f(an, wn_, None)
        mask = (z > 0) if sign > 0 else (z < 0)
        s = torch.where(mask, _div(R, (z1 + z2).detach(), rule.eps), torch.zeros_like(R))
        c1, c2 = torch.autograd.grad((z1, z2), (ap, an), (s, s))
        out = out + ap.detach() * c1 + an.detach() * c2
    return out


def _linear_rule(rule: Rule, f, a: Tensor, w: Tensor, b: Optional[Tensor], R: Tensor) -> Tensor:
    """Relevance at the input of ``z = f(a, w, b)`` (f linear in a and in (w, b))."""
    with torch.enable_grad():
        if isinstance(rule, Gamma):
            return _gamma_rule(rule, f, a, w, b, R)
        if isinstance(rule, Epsilon):
            a = a.detach().requires_grad_(True)
            z = f(a, w, b)
            (c,) = torch.autograd.grad(z, a, _div(R, z.detach(), rule.eps))
            return a.detach() * c
        if isinstance(rule, AlphaBeta):
            ap = a.clamp(min=0).detach().requires_grad_(True)
            an = a.clamp(max=0).detach().requires_grad_(True)
            wp, wn = w.clamp(min=0), w.clamp(max=0)

            # The bias's positive (negative) part joins the positive (negative)
            # contributions' denominator and absorbs its share, as in Bach et
            # al. 2015 and zennit; without a bias relevance is conserved.
            bp = None if b is None else b.clamp(min=0)
            bn = None if b is None else b.clamp(max=0)

            def part(w1, w2, b1):
                z1, z2 = f(ap, w1, b1), f(an, w2, None)
                s = _div(R, (z1 + z2).detach(), rule.eps)
                c1, c2 = torch.autograd.grad((z1, z2), (ap, an), (s, s))
                return ap.detach() * c1 + an.detach() * c2

            out = part(wp, wn, bp)
            if rule.beta:
                out = rule.alpha * out - rule.beta * part(wn, wp, bn)
            return out
        if isinstance(rule, ZBox):
            lo = _bounds(rule.low, a, "low").detach().requires_grad_(True)
            hi = _bounds(rule.high, a, "high").detach().requires_grad_(True)
            a = a.detach().requires_grad_(True)
            za, zl, zh = f(a, w, None), f(lo, w.clamp(min=0), None), f(hi, w.clamp(max=0), None)
            s = _div(R, (za - zl - zh).detach(), rule.eps)
            ca, cl, ch = torch.autograd.grad((za, zl, zh), (a, lo, hi), (s, s, s))
            return a.detach() * ca - lo.detach() * cl - hi.detach() * ch
    raise TypeError(f"rules: unsupported rule {rule!r}")


def _conv_f(m):
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        raise TypeError(f"lrp: Conv2d with padding_mode={m.padding_mode!r} is not supported")
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        else:
            def f_same(a, w, b):
                return F.conv2d(a, w, b, m.stride, "same", m.dilation, m.groups)
            return f_same

    def f(a, w, b):
        return F.conv2d(a, w, b, m.stride, padding, m.dilation, m.groups)
    return f


def _linear_f(a, w, b):
    return F.linear(a, w, b)


def _route_max(y: Tensor, pool_args, R: Tensor) -> Tensor:
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        p = F.max_pool2d(y, *pool_args)
        (g,) = torch.autograd.grad(p, y, R)
    return g


# ---------------------------------------------------------------------------
# lrp
# ---------------------------------------------------------------------------

def lrp(model: nn.Module, images: Tensor, target, rules=None, *,
        return_layers: bool = False) -> LRPResult:
    r"""Layer-wise relevance propagation of the target logits back to the input.

    Args:
        model: a chain of supported modules (see the module docstring), e.g. a
            VGG/AlexNet-style network, fused or not. Runs in eval mode.
        images: ``(N, C, H, W)`` (or ``(N, F)``) input batch.
        target: class per image: int, ``(N,)`` or ``(N, T)``; the start
            relevance is the target logit (``out * onehot(target)``).
        rules: the rule of each Conv2d/Linear layer (and of the conv inside
            fused modules): a single rule for all, or a dict whose keys are
            layer names (from ``named_modules()``), module types (``nn.Conv2d``
            also matches the fused modules), :data:`FIRST_LAYER` or
            ``"default"``, and whose values are :class:`Rule` objects or the
            names ``"epsilon"``, ``"zero"``, ``"gamma"``, ``"alpha1beta0"``,
            ``"alpha2beta1"``, ``"zbox"``. Names win over types, types over the
            default, which is ``Epsilon(1e-6)``. Pooling layers use the eps of
            the epsilon/gamma rule they are given, else 1e-6.
        return_layers: also return the relevance at the input of every module.

    Returns:
        :class:`LRPResult` ``(relevance, layers)``. With ``eps = 0`` and no
        biases the relevance is conserved: each layer's relevance sums to the
        target logit.

    Example:
        >>> r = lrp(model, images, labels, rules={"default": "epsilon", nn.Conv2d: "gamma",
        ...                                        FIRST_LAYER: ZBox(-2.2, 2.7)}).relevance
    """
    check_model(model)
    x, t, multi = prepare_inputs(model, images, target)
    t_flat = t.reshape(-1)

    # rule table
    default: Rule = Epsilon()
    by_name: Dict[str, Rule] = {}
    by_type: List[Tuple[type, Rule]] = []
    first_rule: Optional[Rule] = None
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

    with eval_mode(model):
        steps, out = _trace(model, x)
        out2 = out.reshape(out.shape[0], -1)
        if t_flat.numel() and int(t_flat.max()) >= out2.shape[1]:
            raise ValueError(f"target: class {int(t_flat.max())} is out of range for a model with "
                             f"{out2.shape[1]} outputs")
        R = torch.zeros_like(out2).scatter_(1, t_flat[:, None], out2.gather(1, t_flat[:, None]))
        R = R.reshape(out.shape)

        weighted = [i for i, s in enumerate(steps) if isinstance(s.module, (nn.Conv2d, nn.Linear, ConvReLUPool2d))]
        first_idx = weighted[0] if weighted else -1

        def rule_for(i, s):
            if s.name in by_name:
                return by_name[s.name]
            if i == first_idx and first_rule is not None:
                return first_rule
            for typ, r in by_type:
                if type(s.module) is typ:
                    return r
            for typ, r in by_type:
                if isinstance(s.module, typ) or (typ is nn.Conv2d and isinstance(s.module, ConvReLUPool2d)):
                    return r
            return default

        def pool_eps(i, s):
            r = rule_for(i, s)
            return r.eps if isinstance(r, (Epsilon, Gamma)) else 1e-6

        layers: Dict[str, Tensor] = {}
        i = len(steps) - 1
        while i >= 0:
            s = steps[i]
            m, a = s.module, s.inp
            R = R.reshape(s.out_shape)
            folded_into = None
            if isinstance(m, nn.BatchNorm2d) and i > 0 and type(steps[i - 1].module) is nn.Conv2d:
                folded_into = i - 1
            if folded_into is not None:
                conv = steps[i - 1]
                w, b = fold_batchnorm(conv.module.weight, conv.module.bias, m)
                R = _linear_rule(rule_for(i - 1, conv), _conv_f(conv.module), conv.inp, w.detach(),
                                 None if b is None else b.detach(), R)
                i -= 1
                s = conv
            elif isinstance(m, nn.Conv2d):
                R = _linear_rule(rule_for(i, s), _conv_f(m), a, m.weight.detach(),
                                 None if m.bias is None else m.bias.detach(), R)
            elif isinstance(m, nn.Linear):
                R = _linear_rule(rule_for(i, s), _linear_f, a, m.weight.detach(),
                                 None if m.bias is None else m.bias.detach(), R)
            elif isinstance(m, ConvReLUPool2d):
                f = _conv_f(m)
                w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
                if not (tuple(m.pool_kernel_size) == (1, 1) and tuple(m.pool_stride) == (1, 1)):
                    with torch.no_grad():
                        y = F.relu(f(a, w, b))
                    R = _route_max(y, (m.pool_kernel_size, m.pool_stride, m.pool_padding, 1,
                                       m.ceil_mode), R)
                R = _linear_rule(rule_for(i, s), f, a, w, b, R)
            elif isinstance(m, nn.MaxPool2d):
                R = _route_max(a, (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), R)
            elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                R = _linear_rule(Epsilon(pool_eps(i, s)), lambda aa, w_, b_: m(aa), a, a, None, R)
            elif isinstance(m, nn.BatchNorm2d):
                scale, shift = batchnorm_affine(m)
                R = _linear_rule(Epsilon(pool_eps(i, s)),
                                 lambda aa, w_, b_: aa * w_.reshape(1, -1, 1, 1) + (0 if b_ is None else b_.reshape(1, -1, 1, 1)),
                                 a, scale.detach(), shift.detach(), R)
            elif isinstance(m, (nn.Flatten,) + _PASS):
                R = R.reshape(a.shape)
            else:  # pragma: no cover - _trace rejects these
                raise TypeError(f"lrp: module {s.name!r} ({type(m).__name__}) is not supported")
            R = R.reshape(a.shape if folded_into is None else s.inp.shape)
            if return_layers:
                layers[s.name] = R if not multi else R.reshape(t.shape[0], t.shape[1], *R.shape[1:])
            i -= 1
        R = R.reshape(x.shape)
    if multi:
        R = R.reshape(t.shape[0], t.shape[1], *R.shape[1:])
    return LRPResult(R, layers)
