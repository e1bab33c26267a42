"""The checks every op gets, written once.

A test module declares, per op, a subclass of :class:`OpTester` with the
wrapper, its plain-PyTorch reference (``cnnvis_ext.ops.reference``), the
samples and the bad-input table; pytest then runs on it:

* ``test_reference``: the op against the reference, values and gradients, in
  every dtype of ``dtypes``;
* ``test_gradcheck``: ``torch.autograd.gradcheck`` in float64;
* ``test_opcheck``: ``torch.library.opcheck`` of every ``torch.ops.cnnvis``
  op the wrapper calls, forward and backward (schema, fake kernel, autograd
  registration, AOT dispatch with static and dynamic shapes);
* ``test_layouts``: channels-last and non-contiguous inputs give the
  reference's values and gradients (an in-place op also updates its argument
  where it lies);
* ``test_empty_batch``: a batch of 0 images, forward and backward;
* ``test_compile``: ``torch.compile(fullgraph=True)`` (AOT autograd) gives the
  eager values and gradients;
* ``test_bad_input``: every row of the table raises its error eagerly, and the
  same exception type with the same message under ``FakeTensorMode`` (the
  fake kernels) and under ``torch.compile(fullgraph=True)``, where dynamo
  raises an error of its own whose cause is the op's (rows a fake kernel
  cannot check, such as tensor values or a backend's dtypes, say ``fake=False``);
* ``test_cuda`` (marked ``cuda``): the op on CUDA in every dtype of
  ``cuda_dtypes`` against the float64 reference on CPU.

Samples are float64 CPU tensors; each test converts them (dtype, device,
layout) and clones them before every call, so in-place ops are tested too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}


@dataclasses.dataclass
class Sample:
    """One call of the op: ``op(*args, **kwargs)``.

    Args:
        args: positional arguments; tensors are float64 (or integer) CPU tensors.
        kwargs: keyword arguments (no tensors).
        grad: indices into ``args`` of the tensors to differentiate (empty: the
            op is not differentiable).
        batched: indices into ``args`` of the tensors whose dim 0 is the batch.
        name: the pytest id.
    """
    args: tuple
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    grad: Tuple[int, ...] = ()
    batched: Tuple[int, ...] = (0,)
    name: str = ""

    def map(self, fn: Callable[[int, Tensor], Tensor]) -> "Sample":
        """The sample with every tensor argument ``args[i]`` replaced by ``fn(i, args[i])``."""
        args = tuple(fn(i, a) if isinstance(a, Tensor) else a for i, a in enumerate(self.args))
        return dataclasses.replace(self, args=args)

    def to(self, dtype: Optional[torch.dtype] = None, device=None) -> "Sample":
        """Floating-point tensors in ``dtype``, every tensor on ``device``; all of them copies."""
        def convert(_, t):
            t = t.to(device) if device is not None else t
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            return t.clone()
        return self.map(convert)


@dataclasses.dataclass
class Bad:
    """One row of a bad-input table: ``call(*args)`` raises ``exc`` matching ``match``.

    ``fake=False`` for a check a fake kernel cannot make: one of tensor values
    (the kernels read them) or of a backend's dtypes (FakeTensorMode has no
    backend). Under torch.compile those surface when the compiled code runs.
    ``compile=False`` for a call that reads tensor values in Python (which
    fullgraph compilation refuses before any check runs).
    """
    call: Callable[..., Any]
    args: tuple
    exc: type
    match: str
    fake: bool = True
    compile: bool = True
    name: str = ""


def _copy(t: Tensor) -> Tensor:
    """A detached copy of ``t`` with its strides (``clone()`` makes non-dense tensors
    contiguous); a tensor whose elements share memory (expanded) is returned as is."""
    t = t.detach()
    if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t)


def _clone(args):
    return tree_map_only(Tensor, _copy, args)


def _floating(sample: "Sample") -> Tensor:
    return next(a for a in sample.args if isinstance(a, Tensor) and a.is_floating_point())


def _tensors(result) -> Tuple[Tensor, ...]:
    if isinstance(result, Tensor):
        return (result,)
    return tuple(t for t in result if isinstance(t, Tensor))


def _non_contiguous(t: Tensor) -> Tensor:
    """``t``'s values in a tensor whose last dimension has stride 2."""
    if t.dim() == 0:
        return t.clone()
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    out = wide[..., ::2]
    out.copy_(t)
    return out


LAYOUTS = {
    "channels_last": lambda t: (t.contiguous(memory_format=torch.channels_last)
                                if t.dim() == 4 else t.clone()),
    "non_contiguous": _non_contiguous,
}


def raised(exc: BaseException, exc_type: type, message: str) -> bool:
    """Whether ``exc`` or an exception it was raised from is ``exc_type(message)``.

    Dynamo wraps what a fake kernel raises (its cause is the original) and
    records a Python ``raise`` it traced as ``ExcType('message')`` in its own
    error's message.
    """
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, exc_type) and str(e) == message:
            return True
        if f"{exc_type.__name__}({message!r})" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class _CaptureOps(TorchDispatchMode):
    """Records the first call of every ``torch.ops.cnnvis`` op, with copies of its arguments."""

    def __init__(self):
        super().__init__()
        self.calls: Dict[Any, Tuple[tuple, dict, tuple]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "cnnvis" and func not in self.calls:
            self.calls[func] = (_clone(args), _clone(kwargs), args)
        return func(*args, **kwargs)


class OpTester:
    """Subclass it as ``Test<Op>`` and set the attributes below; see the module docstring.

    The ``*_samples`` lists default to ``samples``; keep the expensive ones
    (gradcheck, opcheck, compile) short.
    """

    op: Callable = None                # the wrapper, e.g. cnnvis_ext.ops.total_variation
    reference: Callable = None         # the same function in cnnvis_ext.ops.reference
    samples: List[Sample] = []
    gradcheck_samples: Optional[List[Sample]] = None
    opcheck_samples: Optional[List[Sample]] = None
    layout_samples: Optional[List[Sample]] = None
    empty_samples: Optional[List[Sample]] = None
    compile_samples: Optional[List[Sample]] = None
    cuda_samples: Optional[List[Sample]] = None
    bad: List[Bad] = []
    dtypes = (torch.float32, torch.float64)
    cuda_dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    inplace: Optional[int] = None      # index of the argument an in-place op updates
    # test_cuda compares with the reference run on CUDA in the same dtype (where rounding
    # decides discrete choices, such as the argmax of a pooling window) instead of float64 on CPU
    cuda_reference_on_device = False
    gradcheck_kwargs: Dict[str, Any] = {}

    # ------------------------------------------------------------- hooks

    def expected(self, sample: Sample):
        """The reference on a copy of the sample's arguments."""
        return type(self).reference(*_clone(sample.args), **sample.kwargs)

    def tol(self, dtype: torch.dtype) -> dict:
        return TOL[dtype]

    def cuda_tol(self, dtype: torch.dtype) -> dict:
        return self.tol(dtype)

    def compare(self, got, expected, sample: Sample, tol: dict) -> None:
        """Asserts that the op's result matches the reference's."""
        for g, e in zip(_tensors(got), _tensors(expected)):
            torch.testing.assert_close(g.to(e.dtype).to(e.device), e, equal_nan=True, **tol)

    def differentiable_outputs(self, result) -> Tuple[Tensor, ...]:
        """The outputs whose gradients are checked."""
        return tuple(t for t in _tensors(result) if t.is_floating_point())

    # ------------------------------------------------------------- checks

    def grads(self, fn: Callable, sample: Sample, grad_outputs=None):
        """``fn``'s result on the sample and the gradients of its differentiable outputs with
        respect to ``sample.grad``, for ``grad_outputs`` (random ones by default)."""
        args = list(_clone(sample.args))
        for i in sample.grad:
            args[i].requires_grad_(True)
        result = fn(*args, **sample.kwargs)
        if not sample.grad:
            return result, (), None
        outs = self.differentiable_outputs(result)
        if grad_outputs is None:
            grad_outputs = [torch.randn_like(o) for o in outs]
        grads = torch.autograd.grad(outs, [args[i] for i in sample.grad], grad_outputs,
                                    allow_unused=True)
        return result, grads, grad_outputs

    def check_against_reference(self, sample: Sample, expected_sample: Optional[Sample] = None,
                                tol: Optional[dict] = None) -> None:
        """Values and gradients of the op on ``sample`` equal the reference's on
        ``expected_sample`` (by default the same sample), for the same random grad_outputs."""
        expected_sample = sample if expected_sample is None else expected_sample
        like = _floating(expected_sample)
        tol = tol or self.tol(like.dtype)
        got, got_grads, gout = self.grads(type(self).op, sample)
        if gout is not None:
            gout = [g.to(like.device, like.dtype) for g in gout]
        exp, exp_grads, _ = self.grads(type(self).reference, expected_sample, gout)
        self.compare(got, exp, expected_sample, tol)
        self.compare_grads(got_grads, exp_grads, tol)

    def compare_grads(self, got: Sequence[Tensor], expected: Sequence[Tensor], tol: dict) -> None:
        """Asserts that the op's gradients match the reference's."""
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.to(e.device, e.dtype), e, equal_nan=True, **tol)

    # ------------------------------------------------------------- the tests

    def pytest_generate_tests(self, metafunc):
        cls = metafunc.cls
        names = metafunc.fixturenames

        def samples(kind):
            chosen = getattr(cls, f"{kind}_samples")
            return cls.samples if chosen is None else chosen

        def ids(items):
            return [getattr(s, "name", "") or str(i) for i, s in enumerate(items)]

        fn = metafunc.function.__name__
        if "sample" in names:
            kind = {"test_reference": None, "test_gradcheck": "gradcheck",
                    "test_opcheck": "opcheck", "test_layouts": "layout",
                    "test_empty_batch": "empty", "test_compile": "compile",
                    "test_cuda": "cuda"}[fn]
            items = cls.samples if kind is None else samples(kind)
            if fn == "test_gradcheck":
                items = [s for s in items if s.grad]
            metafunc.parametrize("sample", items, ids=ids(items))
        if "dtype" in names:
            dtypes = cls.cuda_dtypes if fn == "test_cuda" else cls.dtypes
            metafunc.parametrize("dtype", dtypes, ids=[str(d)[6:] for d in dtypes])
        if "layout" in names:
            metafunc.parametrize("layout", list(LAYOUTS))
        if "bad" in names:
            rows = [(b, mode) for b in cls.bad for mode in ("eager", "fake", "compile")
                    if mode == "eager" or getattr(b, mode)]
            metafunc.parametrize("bad,mode", rows, ids=[
                f"{b.name or b.match[:40]}-{mode}" for b, mode in rows])

    def test_reference(self, sample: Sample, dtype: torch.dtype):
        self.check_against_reference(sample.to(dtype))

    def test_gradcheck(self, sample: Sample):
        s = sample.to(torch.float64)
        others = list(s.args)
        op = type(self).op

        def fn(*inputs):
            args = list(others)
            for i, t in zip(s.grad, inputs):
                args[i] = t
            return self.differentiable_outputs(op(*args, **s.kwargs))

        inputs = tuple(s.args[i].requires_grad_(True) for i in s.grad)
        assert torch.autograd.gradcheck(fn, inputs, **self.gradcheck_kwargs)

    def test_opcheck(self, sample: Sample):
        capture = _CaptureOps()
        args = list(_clone(sample.args))
        for i in sample.grad:
            args[i].requires_grad_(True)
        with capture:
            result = type(self).op(*args, **sample.kwargs)
            outs = self.differentiable_outputs(result) if sample.grad else ()
            if outs:
                torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
        assert capture.calls, "the wrapper called no torch.ops.cnnvis op"
        for n, (func, (op_args, op_kwargs, originals)) in enumerate(capture.calls.items()):
            if n == 0:  # the forward: its differentiable inputs require grad, so that the
                # autograd registration is checked too
                op_args = tuple(a.requires_grad_(True) if isinstance(o, Tensor)
                                and any(o is args[i] for i in sample.grad) else a
                                for a, o in zip(op_args, originals))
            torch.library.opcheck(func, op_args, op_kwargs)

    def test_layouts(self, sample: Sample, layout: str):
        s = sample.to(torch.float64)
        laid = s.map(lambda _, t: LAYOUTS[layout](t))
        self.check_against_reference(laid, s)
        if self.inplace is not None:
            x = laid.args[self.inplace]
            ptr, strides = x.data_ptr(), x.stride()
            out = type(self).op(*laid.args, **laid.kwargs)
            assert out is x and x.data_ptr() == ptr and x.stride() == strides
            self.compare(x, self.expected(s), s, self.tol(torch.float64))

    def test_empty_batch(self, sample: Sample):
        s = sample.to(torch.float64).map(lambda i, t: t[:0] if i in sample.batched else t)
        got, grads, _ = self.grads(type(self).op, s)
        exp = self.expected(s)
        assert [t.shape for t in _tensors(got)] == [t.shape for t in _tensors(exp)]
        for i, g in zip(s.grad, grads):
            assert g is None or (g.shape == s.args[i].shape and not g.any())

    def test_compile(self, sample: Sample):
        torch._dynamo.reset()
        s = sample.to(torch.float64)
        compiled = torch.compile(type(self).op, fullgraph=True, backend="aot_eager")
        got, got_grads, gout = self.grads(compiled, s)
        exp, exp_grads, _ = self.grads(type(self).op, s, gout)
        for g, e in zip(_tensors(got) + tuple(got_grads), _tensors(exp) + tuple(exp_grads)):
            torch.testing.assert_close(g, e, equal_nan=True)

    def test_bad_input(self, bad: Bad, mode: str):
        with pytest.raises(bad.exc, match=bad.match) as eager:
            bad.call(*_clone(bad.args))
        message = str(eager.value)
        if mode == "eager":
            return
        if mode == "fake":
            args = _clone(bad.args)
            with FakeTensorMode() as fake_mode:
                args = tree_map_only(Tensor, fake_mode.from_tensor, args)
                with pytest.raises(bad.exc) as fake:
                    bad.call(*args)
            assert str(fake.value) == message
            return
        torch._dynamo.reset()
        compiled = torch.compile(bad.call, fullgraph=True, backend="eager")
        with pytest.raises(Exception) as comp:
            compiled(*_clone(bad.args))
        assert raised(comp.value, bad.exc, message), (
            f"torch.compile raised {comp.value!r}, not {bad.exc.__name__}({message!r})")

    @pytest.mark.cuda
    def test_cuda(self, sample: Sample, dtype: torch.dtype):
        on_device = sample.to(dtype, "cuda")
        expected = on_device if self.cuda_reference_on_device else sample.to(torch.float64)
        self.check_against_reference(on_device, expected, self.cuda_tol(dtype))
