"""Argument helpers shared by the op wrappers and their fake kernels.

The wrappers only convert Python arguments (an int or a pair, a default
pooling stride) and reject arguments of the wrong Python type (a list for a
tensor) with :func:`check_type`; every other check of an op's arguments, with
its message, is the C++ one in ``csrc/<op>.cpp``. The fake kernels run those
C++ checks through ``_C`` on :func:`meta` of their tensors, so bad input
raises the same error eagerly, under ``FakeTensorMode`` and under
``torch.compile``.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

IntOrPair = Union[int, Sequence[int]]

Meta = Tuple[List[int], List[int], torch.dtype, torch.device]


def _pair_error(v: Any, name: str) -> str:
    return f"{name}: expected an int or a pair of ints, got {v!r}"


def pair(v: IntOrPair, name: str) -> Tuple[int, int]:
    """``v`` as ``(height, width)``: an int gives ``(v, v)``, a sequence of one or two ints as is.

    Raises TypeError for a bool or a non-sequence and ValueError for a
    sequence of another length or of non-ints, naming the argument ``name``.
    """
    if isinstance(v, bool):
        raise TypeError(_pair_error(v, name))
    if isinstance(v, (int, torch.SymInt)):
        t = (v, v)
    else:
        try:
            t = tuple(v)
        except TypeError:
            raise TypeError(_pair_error(v, name)) from None
    if len(t) == 1:
        t = (t[0], t[0])
    if len(t) != 2 or not all(isinstance(i, (int, torch.SymInt)) and not isinstance(i, bool)
                              for i in t):
        raise ValueError(_pair_error(v, name))
    if any(isinstance(i, int) and not -2 ** 63 <= i < 2 ** 63 for i in t):
        # the op's own check bounds the values; these would not even reach it as int64
        raise ValueError(f"{name}: expected values <= 2147483647 (2^31 - 1), got {list(t)}")
    return t  # type: ignore[return-value]


def pool_pairs(pool_kernel: IntOrPair, pool_stride: Optional[IntOrPair],
               pool_padding: IntOrPair) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """``(kernel, stride, padding)`` of a max pooling as pairs; the stride defaults to the kernel."""
    pk = pair(pool_kernel, "pool_kernel")
    ps = pk if pool_stride is None else pair(pool_stride, "pool_stride")
    return pk, ps, pair(pool_padding, "pool_padding")


def check_type(v: Any, name: str, types: Union[type, Tuple[type, ...]], expected: str) -> Any:
    """``v`` if it is an instance of ``types`` (a bool never is), else a TypeError naming the
    argument: ``"{name}: expected {expected}, got {type}"``."""
    if isinstance(v, bool) or not isinstance(v, types):
        raise TypeError(f"{name}: expected {expected}, got {type(v).__name__}")
    return v


def check_tensor(v: Any, name: str) -> Tensor:
    """``v`` if it is a tensor, else a TypeError naming the argument."""
    return check_type(v, name, Tensor, "a tensor")


def _concrete(s: Union[int, torch.SymInt], guard: bool) -> int:
    if not isinstance(s, torch.SymInt):
        return int(s)
    value = s.node.maybe_as_int()
    if value is not None:
        return value
    if guard or not s.node.has_hint():
        return int(s)  # specializes: a guard on this value
    return int(s.node.hint)


def meta(t: Optional[Tensor], guard_spatial: bool = False) -> Optional[Meta]:
    """What the C++ checks read of a tensor: ``(sizes, strides, dtype, device)``; None stays None.

    The checks take concrete sizes. Under torch.compile with dynamic shapes a
    size may be symbolic; it is then read at the value of the example being
    traced, without a guard: a check that only accepts or rejects needs none,
    since the real kernel repeats it on every call, and the fake kernels take
    the batch and channel sizes of their outputs from the input tensors
    themselves. ``guard_spatial=True`` specializes the spatial sizes (dims 2
    and 3, with ``int()``, which guards on them) for an op whose output
    height and width the check computes from them: the graph is recompiled
    for another image size, never for another batch size.
    """
    if t is None:
        return None
    sizes = [_concrete(s, guard_spatial and d >= 2) for d, s in enumerate(t.shape)]
    strides = [_concrete(s, False) for s in t.stride()]
    return sizes, strides, t.dtype, t.device


def ints(v: Sequence[Union[int, torch.SymInt]]) -> List[int]:
    """A list of int arguments as plain ints for the C++ checks (symbolic ones specialized)."""
    return [int(i) for i in v]


def fake_grad(needed: bool, like: Tensor, shape: Optional[Sequence[int]] = None,
              channels_last: bool = False) -> Tensor:
    """What a backward op's fake kernel returns for one gradient.

    A tensor of ``shape`` (by default ``like``'s) with ``like``'s dtype and
    device, channels-last if asked; when the gradient is not ``needed``, a
    0-element one, as the kernels return.
    """
    if not needed:
        return like.new_empty((0,))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(like.shape if shape is None else shape, dtype=like.dtype,
                       device=like.device, memory_format=fmt)


def masked_backward(backward_op: Callable, grad_out: Optional[Tensor], args: Sequence[Any],
                    needs: Sequence[bool], inputs: Sequence[int], n_inputs: int) -> tuple:
    """The gradients an autograd formula returns, from an op's backward op.

    ``backward_op(grad_out, *args, mask)`` returns one gradient per entry of
    ``mask = needs``, the gradient of input ``inputs[i]`` of the forward op
    (which has ``n_inputs`` inputs); it is not called when nothing is needed.
    """
    grads: List[Optional[Tensor]] = [None] * n_inputs
    mask = [bool(n) for n in needs]
    if grad_out is None or not any(mask):
        return tuple(grads)
    for i, needed, g in zip(inputs, mask, backward_op(grad_out, *args, mask)):
        if needed:
            grads[i] = g
    return tuple(grads)


def differentiable_grads(reference: Callable[[], Tensor], grad_out: Optional[Tensor],
                         tensors: Sequence[Optional[Tensor]], needs: Sequence[bool],
                         inputs: Sequence[int], n_inputs: int) -> tuple:
    """The gradients an autograd formula returns under ``create_graph=True``.

    The kernels' backward ops have no derivative of their own; a double backward (a gradient
    penalty, an explanation loss) instead differentiates ``reference()``, the op's
    plain-PyTorch formula evaluated on the saved inputs (which, in a create_graph backward,
    are still connected to the graph), with autograd building the graph of the gradients.
    ``tensors[i]`` is forward input ``inputs[i]``; only those with ``needs[i]`` are returned.
    """
    grads: List[Optional[Tensor]] = [None] * n_inputs
    wanted = [(i, t) for i, t, n in zip(inputs, tensors, needs) if n and t is not None]
    if grad_out is None or not wanted:
        return tuple(grads)
    with torch.enable_grad():
        y = reference()
        gs = torch.autograd.grad(y, [t for _, t in wanted], grad_out, create_graph=True,
                                 allow_unused=True)
    for (i, t), g in zip(wanted, gs):
        grads[i] = torch.zeros_like(t) if g is None else g
    return tuple(grads)
