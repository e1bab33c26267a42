"""Property tests of the ops (hypothesis): random configurations against plain PyTorch.

Each property draws a configuration (shapes, hyperparameters, special values) and checks one of
two outcomes: plain PyTorch computes it, and the op gives the same values and gradients; or one
of them refuses it, and then the op raises a ValueError / TypeError whose message starts with the
name of an argument (never a crash, a hang or another exception). The budget is fixed and the
search derandomized, so CI runs the same cases every time.
"""
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnvis_ext import ops
from cnnvis_ext.ops import reference as R

BUDGET = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
D = torch.float64
_NAMED = re.compile(r"^[a-z_]+(/[a-z_]+)*: ")


def _refused(exc: BaseException) -> None:
    """The op's refusal: a ValueError / TypeError naming an argument first."""
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
    assert _NAMED.match(str(exc)), f"the message names no argument: {exc}"


def _run(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - the property sorts them
        return None, e


pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    pk = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    cfg = dict(stride=draw(pairs), padding=draw(st.tuples(st.integers(0, 2), st.integers(0, 2))),
               dilation=draw(pairs), groups=groups, pool_kernel=pk,
               pool_stride=draw(st.tuples(st.integers(1, 4), st.integers(1, 4))),
               pool_padding=draw(st.tuples(st.integers(0, 2), st.integers(0, 2))),
               ceil_mode=draw(st.booleans()))
    n = draw(st.integers(0, 2))
    bias = draw(st.booleans())
    return (n, c_in, h, w), (c_out, c_in // groups, kh, kw), bias, cfg


@BUDGET
@given(conv_configs(), st.integers(0, 2 ** 31 - 1))
def test_conv_relu_pool_matches_pytorch(config, seed):
    x_shape, w_shape, bias, cfg = config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, dtype=D, generator=g, requires_grad=True)
    w = torch.randn(w_shape, dtype=D, generator=g, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=D, generator=g, requires_grad=True) if bias else None
    expected, ref_err = _run(lambda: R.conv_relu_pool(x, w, b, **cfg))
    got, err = _run(lambda: ops.conv_relu_pool(x, w, b, **cfg))
    if err is not None:
        _refused(err)
        return
    assert ref_err is None, f"PyTorch refuses {cfg} ({ref_err}), the op accepted it"
    out, sw = got
    ref_out, idx = expected
    torch.testing.assert_close(out, ref_out)
    conv_size = R.conv_output_size(x_shape, w_shape, cfg["stride"], cfg["padding"],
                                   cfg["dilation"])
    got_idx = ops.switches_to_indices(sw, conv_size, cfg["pool_kernel"], cfg["pool_stride"],
                                      cfg["pool_padding"])
    positive = ref_out > 0  # where the max is unique (a 0 window may tie)
    assert torch.equal(got_idx[positive], idx[positive])
    if out.numel() == 0:
        return
    weights = torch.randn(out.shape, dtype=D, generator=g)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad((out * weights).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * weights).sum(), leaves)
    for a, e in zip(grads, ref_grads):
        torch.testing.assert_close(a, e)


@BUDGET
@given(conv_configs(), st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_unpool_conv_transpose_matches_pytorch(config, rectify, seed):
    x_shape, w_shape, _, cfg = config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, dtype=D, generator=g)
    w = torch.randn(w_shape, dtype=D, generator=g)
    fwd, err = _run(lambda: ops.conv_relu_pool(x, w, None, **cfg))
    if err is not None:
        _refused(err)
        return
    _, sw = fwd
    conv_size = R.conv_output_size(x_shape, w_shape, cfg["stride"], cfg["padding"],
                                   cfg["dilation"])
    p = torch.randn(sw.shape, dtype=D, generator=g, requires_grad=True)
    kw = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    pool = {k: cfg[k] for k in ("pool_kernel", "pool_stride", "pool_padding")}
    got = ops.unpool_conv_transpose(p, sw, w, **kw, **pool, output_size=conv_size,
                                    input_size=x_shape[2:], rectify=rectify)
    idx = ops.switches_to_indices(sw, conv_size, **pool)
    expected = R.unpool_conv_transpose(p, idx, w, **kw, output_size=conv_size,
                                       input_size=x_shape[2:], rectify=rectify)
    torch.testing.assert_close(got, expected)
    if got.numel():
        weights = torch.randn(got.shape, dtype=D, generator=g)
        (a,) = torch.autograd.grad((got * weights).sum(), p)
        (e,) = torch.autograd.grad((expected * weights).sum(), p)
        torch.testing.assert_close(a, e)


@BUDGET
@given(st.integers(0, 2), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12),
       st.one_of(st.floats(0, 6), st.sampled_from([0.0, 1e-300, 40.0, 1e9, float("inf"),
                                                    -1.0, float("nan")])),
       st.one_of(st.none(), st.integers(-1, 80)), st.integers(0, 2 ** 31 - 1))
def test_gaussian_blur_matches_pytorch(n, c, h, w, sigma, kernel_size, seed):
    x = torch.randn(n, c, h, w, dtype=D, generator=torch.Generator().manual_seed(seed),
                    requires_grad=True)
    got, err = _run(lambda: ops.gaussian_blur(x, sigma, kernel_size))
    if err is not None:
        _refused(err)
        return
    assert sigma >= 0 and sigma < float("inf")
    expected = R.gaussian_blur(x, sigma, kernel_size)
    torch.testing.assert_close(got, expected)
    if got.numel():
        gout = torch.randn_like(got)
        (a,) = torch.autograd.grad(got, x, gout)
        (e,) = torch.autograd.grad(expected, x, gout)
        torch.testing.assert_close(a, e)


SPECIAL = [float("inf"), float("-inf"), float("nan"), 1e200, -1e200, 0.0]


@BUDGET
@given(st.integers(0, 2), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7),
       st.sampled_from(["isotropic", "anisotropic"]),
       st.one_of(st.sampled_from([1.0, 2.0]), st.floats(0.1, 4.0)),
       st.sampled_from([0.0, 1e-8, 0.5]), st.sampled_from(["sum", "mean", "none"]),
       st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(SPECIAL)), max_size=3),
       st.integers(0, 2 ** 31 - 1))
def test_total_variation_matches_pytorch(n, c, h, w, mode, beta, eps, reduction, specials, seed):
    x = torch.randn(n, c, h, w, dtype=D, generator=torch.Generator().manual_seed(seed))
    if x.numel():
        for pos, value in specials:
            x.view(-1)[pos % x.numel()] = value
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    got = ops.total_variation(a, beta=beta, eps=eps, reduction=reduction, mode=mode)
    expected = R.total_variation(b, beta=beta, eps=eps, reduction=reduction, mode=mode)
    torch.testing.assert_close(got, expected, equal_nan=True)
    gout = torch.ones_like(got)
    (ga,) = torch.autograd.grad(got, a, gout)
    (gb,) = torch.autograd.grad(expected, b, gout)
    torch.testing.assert_close(ga, gb, equal_nan=True)


@BUDGET
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.floats(-2, 2), st.sampled_from([0.0, 0.01, 0.5]), st.sampled_from([0.0, 0.5, 1.3]),
       st.sampled_from([0.0, 10.0, 50.0]), st.sampled_from([0.0, 25.0, 100.0]),
       st.sampled_from([(float("-inf"), float("inf")), (-0.5, 0.5), (0.0, 0.0)]),
       st.integers(0, 2 ** 31 - 1))
def test_regularize_matches_pytorch(n, c, h, w, lr, decay, blur, norm_pct, contrib_pct, bounds,
                                    seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=D, generator=g)
    grad = torch.randn(n, c, h, w, dtype=D, generator=g)
    kw = dict(lr=lr, decay=decay, blur_sigma=blur, norm_pct=norm_pct, contrib_pct=contrib_pct,
              lo=bounds[0], hi=bounds[1])
    got = ops.regularize_(x.clone(), grad, **kw)
    expected = R.regularize_(x.clone(), grad, **kw)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# small, near 2^31, past int64 and negative values; mid-sized ones only where they cannot ask
# for a huge output (a padding of 2^30 is valid and needs terabytes, in PyTorch as here)
_edge = st.one_of(st.integers(-3, 6), st.integers(2 ** 31 - 2, 2 ** 31 + 2),
                  st.integers(2 ** 62, 2 ** 70), st.integers(-2 ** 70, -2 ** 31))
_any = st.one_of(_edge, st.integers(7, 2 ** 31))


@BUDGET
@given(st.data(), st.sampled_from(["stride", "padding", "dilation", "pool_kernel", "pool_stride",
                                   "pool_padding"]))
def test_any_integer_argument_is_computed_or_refused_by_name(data, name):
    # every integer argument: a result equal to PyTorch's, or a refusal naming that argument
    # (no crash, no int64 wrap passing a check or blaming another argument)
    values = data.draw(st.lists(_edge if name == "padding" else _any, min_size=1, max_size=2))
    x = torch.randn(1, 2, 6, 6, dtype=D)
    w = torch.randn(3, 2, 3, 3, dtype=D)
    cfg = dict(padding=1, pool_kernel=2)
    cfg[name] = values
    got, err = _run(lambda: ops.conv_relu_pool(x, w, None, **cfg))
    if err is not None:
        _refused(err)
        # the refusal blames this argument, or x / pool_kernel for sizes that do not fit
        assert str(err).split(":")[0] in (name, "x", "pool_kernel"), str(err)
        return
    expected, _ = R.conv_relu_pool(x, w, None, **cfg)
    torch.testing.assert_close(got[0], expected)


def test_the_properties_can_fail():
    # the oracle of these properties distinguishes: a wrong blur is caught
    x = torch.randn(1, 1, 6, 6, dtype=D)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ops.gaussian_blur(x, 1.0), R.gaussian_blur(x, 1.1))
    with pytest.raises(AssertionError):
        _refused(RuntimeError("x: boom"))
    with pytest.raises(AssertionError):
        _refused(ValueError("something went wrong"))
