"""The rules of layer-wise relevance propagation and the named presets (composites).

A rule says how the relevance at the output of a layer with weights
(convolution, linear) is shared among its inputs; see :func:`cnnvis_ext.vis.lrp`.
Each is defined as zennit defines it (Anders et al., "Software for Dataset-wide
XAI", 2021), so that the presets equal zennit's composites.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Rule", "Epsilon", "Gamma", "AlphaBeta", "ZBox", "Flat", "WSquare", "FIRST_LAYER",
           "PRESETS", "preset"]

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
class Flat(Rule):
    """The flat rule (Lapuschkin et al. 2019): the relevance of an output is spread evenly
    over the inputs in its window, whatever their values and weights (weights set to one,
    bias ignored). zennit's ``EpsilonPlusFlat`` uses it for the first layer."""

    eps: float = 1e-6


@dataclass(frozen=True)
class WSquare(Rule):
    """The w^2 rule (Montavon et al. 2017): the relevance of an output is shared in
    proportion to the squared weights, whatever the input values (for unbounded inputs)."""

    eps: float = 1e-6


@dataclass(frozen=True)
class ZBox(Rule):
    """z^B rule; ``low``/``high``: numbers, per-channel sequences or tensors broadcastable to
    the layer input; ``None``: each image's own minimum/maximum."""

    low: object = None
    high: object = None
    eps: float = 1e-9


_NAMED = {"epsilon": Epsilon, "zero": lambda: Epsilon(0.0), "lrp0": lambda: Epsilon(0.0),
          "gamma": Gamma, "alpha1beta0": AlphaBeta, "alphabeta": AlphaBeta, "zplus": AlphaBeta,
          "z+": AlphaBeta, "alpha2beta1": lambda: AlphaBeta(2.0, 1.0), "zbox": ZBox,
          "flat": Flat, "wsquare": WSquare}


def _as_rule(r, key) -> Rule:
    if isinstance(r, Rule):
        return r
    if isinstance(r, str) and r.lower().replace("-", "").replace("_", "") in _NAMED:
        return _NAMED[r.lower().replace("-", "").replace("_", "")]()
    raise ValueError(f"rules: {r!r} (for {key!r}) is not a rule; expected a Rule or one of "
                     f"{sorted(_NAMED)}")


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
        if isinstance(rule, (Flat, WSquare)):
            return _flat_or_wsquare(rule, f, a, w, b, R)
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


def _flat_or_wsquare(rule, f, a: Tensor, w: Tensor, b: Optional[Tensor], R: Tensor) -> Tensor:
    """Flat (weights one, no bias) or w^2 (squared weights and bias): the input is replaced
    by ones, and the relevance is the gradient (zennit's reducer), not input x gradient."""
    ones = torch.ones_like(a).requires_grad_(True)
    if isinstance(rule, Flat):
        z = f(ones, torch.ones_like(w), None)
    else:
        z = f(ones, w * w, None if b is None else b * b)
    (c,) = torch.autograd.grad(z, ones, _div(R, z.detach(), rule.eps))
    return c


# ---------------------------------------------------------------------------
# presets: zennit's composites
# ---------------------------------------------------------------------------

#: ``rules`` presets equal to zennit's composites of the same names: convolutions take
#: the first rule, linear layers Epsilon(1e-6), the first convolution or linear layer the
#: third (when given); every stabilizer is 1e-6, as in zennit.
PRESETS = {
    "epsilon_plus": ("zplus", None),
    "epsilon_plus_flat": ("zplus", "flat"),
    "epsilon_gamma_box": ("gamma", "zbox"),
    "epsilon_alpha2_beta1": ("alpha2beta1", None),
    "epsilon_alpha2_beta1_flat": ("alpha2beta1", "flat"),
}


def preset(name: str, *, low=None, high=None, gamma: float = 0.25, epsilon: float = 1e-6,
           stabilizer: float = 1e-6) -> Dict[object, Rule]:
    """The ``rules`` dict of a named preset (see :data:`PRESETS`).

    Args:
        name: one of :data:`PRESETS`.
        low, high: the input bounds of ``epsilon_gamma_box``'s ZBox first layer (``None``:
            each image's own minimum and maximum).
        gamma: the gamma of ``epsilon_gamma_box``.
        epsilon: the epsilon of the linear layers; ``stabilizer``: every other rule's.
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in PRESETS:
        raise ValueError(f"rules: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    conv, first = PRESETS[key]
    conv_rule = {"zplus": AlphaBeta(1.0, 0.0, stabilizer), "gamma": Gamma(gamma, stabilizer),
                 "alpha2beta1": AlphaBeta(2.0, 1.0, stabilizer)}[conv]
    rules: Dict[object, Rule] = {nn.Conv2d: conv_rule, nn.Linear: Epsilon(epsilon),
                                 "default": Epsilon(epsilon)}
    if first == "flat":
        rules[FIRST_LAYER] = Flat(stabilizer)
    elif first == "zbox":
        rules[FIRST_LAYER] = ZBox(low, high, stabilizer)
    return rules
