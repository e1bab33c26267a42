"""Objectives for activation maximization.

An :class:`Objective` maps the activations of one forward pass to one value
per image (a tensor of shape ``(n,)``); activation maximization raises it.
Objectives know which layers they need (``objective.layers``), so the loop
can stop the forward pass at the deepest of them. They combine with ``+``,
``-``, ``*`` by a number and unary ``-`` into weighted sums.

Layer names are those of ``model.named_modules()``; :data:`OUTPUT` names the
model's final output (used by :func:`class_logit` and
:func:`class_probability`).

Example:
    >>> obj = channel("features.10", 3) - 0.5 * channel("features.10", 7)
    >>> objs = [channel("features.10", c) for c in range(64)]   # one image each
"""
from __future__ import annotations

import numbers
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OUTPUT", "Objective", "channel", "neuron", "class_logit", "class_probability",
           "direction", "diversity", "weighted_sum", "parse_objective", "as_objective"]

#: Key of the model's final output in the activation dict handed to objectives.
OUTPUT = "<output>"

Acts = Dict[str, Tensor]


def _check_index(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative index, got {value}")
    return value


def _channel_slice(act: Tensor, layer: str, c: int, what: str = "channel") -> Tensor:
    if act.dim() < 2:
        raise ValueError(f"layer: {layer!r} has output shape {tuple(act.shape)}, which has no "
                         "channel dimension")
    if c >= act.shape[1]:
        raise ValueError(f"{what}: {c} is out of range for layer {layer!r} with "
                         f"{act.shape[1]} channels (valid: 0..{act.shape[1] - 1})")
    return act[:, c]


class Objective:
    """A scalar per image computed from activations; maximized by the loops.

    Args:
        fn: ``fn(acts) -> Tensor[n]`` where ``acts`` maps every name in
            ``layers`` to its activation for the ``n`` images of this objective.
        layers: the layer names ``fn`` reads (``OUTPUT`` for the model output).
        name: a readable description.
    """

    def __init__(self, fn: Callable[[Acts], Tensor], layers: Sequence[str], name: str = "objective"):
        self.fn = fn
        self.layers: Tuple[str, ...] = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, acts: Acts) -> Tensor:
        v = self.fn(acts)
        if v.dim() != 1:
            raise ValueError(f"objective {self.name}: expected one value per image, got shape "
                             f"{tuple(v.shape)}")
        return v

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # algebra ----------------------------------------------------------------
    def __add__(self, other):
        other = as_objective(other)
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers,
                         f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self):
        return Objective(lambda a: -self(a), self.layers, f"-{self.name}")

    def __sub__(self, other):
        return self + (-as_objective(other))

    def __rsub__(self, other):
        return as_objective(other) + (-self)

    def __mul__(self, w):
        if isinstance(w, Objective):
            return Objective(lambda a: self(a) * w(a), self.layers + w.layers,
                             f"({self.name}) * ({w.name})")
        if not isinstance(w, numbers.Real):
            return NotImplemented
        w = float(w)
        return Objective(lambda a: w * self(a), self.layers, f"{w:g} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, w):
        if not isinstance(w, numbers.Real):
            return NotImplemented
        return self * (1.0 / float(w))


def as_objective(obj) -> Objective:
    """Turn an objective, a number (a constant) or a spec string into an :class:`Objective`."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, str):
        return parse_objective(obj)
    if isinstance(obj, numbers.Real) and not isinstance(obj, bool):
        c = float(obj)

        def const(acts):
            if not acts:
                raise ValueError("objective: a constant needs another objective beside it")
            ref = next(iter(acts.values()))
            return ref.new_full((ref.shape[0],), c)

        return Objective(const, (), f"{c:g}")
    raise TypeError(f"objectives: expected Objective objects or spec strings, got {type(obj).__name__}")


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel ``c`` of ``layer`` (over all spatial positions).

    For a 2-D layer output ``(n, features)`` it is the value of feature ``c``.
    """
    c = _check_index("channel", c)

    def fn(acts):
        a = _channel_slice(acts[layer], layer, c)
        return a.reshape(a.shape[0], -1).mean(1)

    obj = Objective(fn, (layer,), f"channel({layer!r}, {c})")
    obj.kind, obj.layer, obj.index = "channel", layer, c  # enables the vectorized batch path
    return obj


def neuron(layer: str, c: int, y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    """Activation of the single unit ``(c, y, x)`` of ``layer``; the centre unit by default."""
    c = _check_index("channel", c)
    y = _check_index("y", y, allow_none=True)
    x = _check_index("x", x, allow_none=True)

    def fn(acts):
        a = _channel_slice(acts[layer], layer, c)
        if a.dim() == 1:
            return a
        if a.dim() != 3:
            raise ValueError(f"neuron: layer {layer!r} output {tuple(acts[layer].shape)} is not "
                             "(N, C) or (N, C, H, W)")
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if yy >= h or xx >= w:
            raise ValueError(f"neuron: position ({yy}, {xx}) is outside layer {layer!r} of "
                             f"spatial size {h}x{w}")
        return a[:, yy, xx]

    return Objective(fn, (layer,), f"neuron({layer!r}, {c}, {y}, {x})")


def _model_output(acts, c: int) -> Tensor:
    """The model output as (N, classes), checking that class ``c`` exists."""
    out = acts[OUTPUT].reshape(acts[OUTPUT].shape[0], -1)
    if c >= out.shape[1]:
        raise ValueError(f"class: {c} is out of range for a model with {out.shape[1]} outputs")
    return out


def class_logit(c: int) -> Objective:
    """The model output (logit) of class ``c``."""
    c = _check_index("class", c)

    def fn(acts):
        return _model_output(acts, c)[:, c]

    return Objective(fn, (OUTPUT,), f"class_logit({c})")


def class_probability(c: int) -> Objective:
    """Softmax probability of class ``c`` (the softmax of the model output)."""
    c = _check_index("class", c)

    def fn(acts):
        return F.softmax(_model_output(acts, c), dim=1)[:, c]

    return Objective(fn, (OUTPUT,), f"class_probability({c})")


def direction(layer: str, vector, cosine: bool = False) -> Objective:
    """Projection of ``layer``'s activation onto a direction in channel space.

    The value is the spatial mean of ``<a[:, :, y, x], vector>`` (or of the
    cosine similarity with ``cosine=True``).
    """
    v = torch.as_tensor(vector)
    if v.dim() != 1 or not v.is_floating_point() and v.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"vector: expected a 1-D tensor of channel weights, got shape {tuple(v.shape)}")

    def fn(acts):
        a = acts[layer]
        if a.dim() < 2 or a.shape[1] != v.numel():
            raise ValueError(f"vector: has {v.numel()} entries but layer {layer!r} has "
                             f"{a.shape[1] if a.dim() > 1 else 0} channels")
        vv = v.to(device=a.device, dtype=a.dtype).reshape(1, -1, *([1] * (a.dim() - 2)))
        dot = (a * vv).sum(1)
        if cosine:
            dot = dot / (a.norm(dim=1) * vv.norm() + 1e-8)
        return dot.reshape(a.shape[0], -1).mean(1)

    return Objective(fn, (layer,), f"direction({layer!r})")


def diversity(layer: str) -> Objective:
    """Diversity term for several images of one objective (Lucid's formulation).

    For each image, minus the mean cosine similarity between its channel Gram
    matrix at ``layer`` and those of the other images of the same objective.
    Add it with a weight, e.g. ``channel(l, 3) + 10 * diversity(l)``, and ask
    for ``images_per_objective > 1``. With one image it is 0.
    """

    def fn(acts):
        a = acts[layer]
        n = a.shape[0]
        if n < 2:
            return a.new_zeros(n)
        flat = a.reshape(n, a.shape[1], -1)
        gram = flat @ flat.transpose(1, 2)
        g = F.normalize(gram.reshape(n, -1), dim=1)
        sim = g @ g.t()
        off = sim.sum(1) - sim.diagonal()
        return -off / (n - 1)

    return Objective(fn, (layer,), f"diversity({layer!r})")


def weighted_sum(objectives: Sequence, weights: Optional[Sequence[float]] = None) -> Objective:
    """``sum_i weights[i] * objectives[i]`` (all weights 1 by default)."""
    objs = [as_objective(o) for o in objectives]
    if not objs:
        raise ValueError("objectives: expected at least one objective")
    if weights is None:
        weights = [1.0] * len(objs)
    if len(weights) != len(objs):
        raise ValueError(f"weights: expected {len(objs)} weights, got {len(weights)}")
    total = float(weights[0]) * objs[0]
    for w, o in zip(weights[1:], objs[1:]):
        total = total + float(w) * o
    return total


def parse_objective(spec: str) -> Objective:
    """Build an objective from a short text spec (used by the command line).

    Forms: ``"LAYER:C"`` (channel), ``"LAYER:C:Y:X"`` (neuron), ``"LAYER:C:center"``
    (centre neuron), ``"logit:K"`` / ``"class:K"`` (class logit), ``"prob:K"``
    (class probability).
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"objective: expected 'layer:channel', 'layer:c:y:x', 'logit:k' or "
                         f"'prob:k', got {spec!r}")
    head, *rest = spec.split(":")
    try:
        if head in ("logit", "class") and len(rest) == 1:
            return class_logit(int(rest[0]))
        if head == "prob" and len(rest) == 1:
            return class_probability(int(rest[0]))
        if len(rest) == 1:
            return channel(head, int(rest[0]))
        if len(rest) == 2 and rest[1] == "center":
            return neuron(head, int(rest[0]))
        if len(rest) == 3:
            return neuron(head, int(rest[0]), int(rest[1]), int(rest[2]))
    except ValueError as e:
        if "invalid literal" not in str(e):
            raise
    raise ValueError(f"objective: cannot parse {spec!r}; expected 'layer:channel', 'layer:c:y:x', "
                     "'layer:c:center', 'logit:k' or 'prob:k'")
