import pytest
import torch
from torch import nn

import cnnvis_ext
from cnnvis_ext import vis
from cnnvis_ext.vis import objectives as O
from cnnvis_ext.vis.transforms import Jitter, Pad, RandomRotate, RandomScale


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("the forward pass ran past the deepest needed layer")


def tiny(dtype=torch.float32, tail=None):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    for mod in m:
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(mod.weight, std=0.4)
            nn.init.normal_(mod.bias, std=0.1)
    if tail is not None:
        m.append(tail)
    return m.to(dtype)


def test_raises_objective_well_above_random():
    m = tiny()
    objs = [vis.channel("3", c) for c in range(4)]
    res = vis.activation_maximization(m, objs, size=24, steps=25, param="pixel", lr=0.05,
                                      transforms=None)
    assert res.images.shape == (4, 3, 24, 24)
    assert res.values.shape == (25, 4)
    assert 0 <= res.images.min() and res.images.max() <= 1
    with torch.no_grad():
        rand = torch.rand(64, 3, 24, 24, generator=torch.Generator().manual_seed(1))
        a = m[:4](rand)
        base = a.mean((2, 3))[:, :4]
        final = m[:4](res.images).mean((2, 3)).diagonal()
    assert (final > base.mean(0) + 5 * base.std(0)).all()
    assert (res.values[-1] > res.values[0]).all()


def test_fourier_default_raises_objective():
    m = tiny()
    res = vis.activation_maximization(m, ["3:1", vis.class_logit(2)], size=24, steps=15, lr=0.1)
    assert (res.values[-1] > res.values[0] + 0.03).all()


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_batched_equals_one_by_one(param):
    m = tiny(torch.float64)
    objs = [vis.channel("3", 0), vis.neuron("0", 2), vis.class_probability(1), vis.channel("3", 5)]
    kw = dict(size=16, steps=4, lr=0.05, seed=7, param=param, transforms="standard")
    batched = vis.activation_maximization(m, objs, **kw)
    chunked = vis.activation_maximization(m, objs, batch_size=3, **kw)
    torch.testing.assert_close(batched.images, chunked.images, rtol=0, atol=1e-9)
    # objective i alone = objective i in the batch: run objective 2 as the only one of a list
    # whose index is still 2 by padding with the same objectives before it in a separate batch.
    for i in range(len(objs)):
        alone = vis.activation_maximization(m, objs[: i + 1], batch_size=1, **kw)
        torch.testing.assert_close(alone.images[i], batched.images[i], rtol=0, atol=1e-9)
        torch.testing.assert_close(alone.values[:, i], batched.values[:, i], rtol=0, atol=1e-9)


def test_batched_equals_one_by_one_float32_tolerance():
    m = tiny()
    objs = [vis.channel("3", c) for c in range(3)]
    kw = dict(size=20, steps=5, seed=3)
    batched = vis.activation_maximization(m, objs, **kw)
    single = vis.activation_maximization(m, objs, batch_size=1, **kw)
    torch.testing.assert_close(batched.images, single.images, rtol=0, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("layer", ["0", "1", "2", "3", "4"])
def test_channel_pruning_matches_full_forward(fused, layer):
    m = tiny(torch.float64)
    if fused:
        m = cnnvis_ext.fuse(m)
    objs = [vis.channel(layer, c) for c in (0, 3, 5)]
    kw = dict(size=16, steps=4, seed=2, images_per_objective=2 if layer == "2" else 1)
    fast = vis.activation_maximization(m, objs, **kw)
    slow = vis.activation_maximization(m, objs, prune=False, **kw)
    torch.testing.assert_close(fast.values, slow.values, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast.images, slow.images, rtol=0, atol=1e-10)


def test_channel_pruning_is_used():
    from cnnvis_ext.vis._prune import PrunedChannels
    m = tiny()
    plan = PrunedChannels.plan(m, "2")
    assert plan.conv is m[0] and [type(t) for t in plan.tail] == [nn.ReLU, nn.MaxPool2d]
    assert PrunedChannels.plan(m, "5") is None  # AdaptiveAvgPool2d: not after a conv chain
    assert PrunedChannels.plan(m, "7") is None  # Linear


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("objs_kind", ["pruned", "mixed", "diversity"])
@pytest.mark.parametrize("micro", [1, 2])
def test_micro_batches_equal_one_pass(fused, objs_kind, micro):
    m = tiny(torch.float64)
    if fused:
        m = cnnvis_ext.fuse(m)
    k = 1
    if objs_kind == "pruned":
        objs = [vis.channel("2", c) for c in (0, 3, 5)]
    elif objs_kind == "mixed":
        objs = [vis.channel("3", 0), vis.neuron("0", 2), vis.class_probability(1)]
    else:
        objs, k = [vis.channel("3", 1) + 0.5 * vis.diversity("3"), vis.channel("3", 2)], 2
    kw = dict(size=16, steps=4, seed=4, images_per_objective=k, transforms="standard",
              regularizers=dict(alpha_weight=1e-3, tv_weight=1e-3))
    one = vis.activation_maximization(m, objs, micro_batch=None, **kw)
    parts = vis.activation_maximization(m, objs, micro_batch=micro, **kw)
    torch.testing.assert_close(parts.values, one.values, rtol=0, atol=1e-10)
    torch.testing.assert_close(parts.images, one.images, rtol=0, atol=1e-10)


def test_micro_batch_auto_and_bad_values():
    from cnnvis_ext.vis.actmax import _micro_batch
    assert _micro_batch("auto", "cpu", 1, 128, 128) == 2
    assert _micro_batch("auto", "cpu", 2, 224, 224) == 1
    assert _micro_batch("auto", "cuda", 1, 128, 128) is None
    assert _micro_batch(None, "cpu", 1, 8, 8) is None and _micro_batch(3, "cpu", 1, 8, 8) == 3
    for bad in (0, -1, 1.5, True, "all"):
        with pytest.raises(ValueError, match="micro_batch"):
            vis.activation_maximization(tiny(), "3:0", size=8, steps=1, micro_batch=bad)


def test_seed_reproducible_and_distinct():
    m = tiny()
    a = vis.activation_maximization(m, "3:0", size=16, steps=3, seed=1)
    b = vis.activation_maximization(m, "3:0", size=16, steps=3, seed=1)
    c = vis.activation_maximization(m, "3:0", size=16, steps=3, seed=2)
    state = torch.get_rng_state()
    vis.activation_maximization(m, "3:0", size=16, steps=2, seed=5)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be used"
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_diversity_several_images_per_objective():
    m = tiny(torch.float64)
    obj = vis.channel("3", 1) + 0.5 * vis.diversity("3")
    res = vis.activation_maximization(m, [obj, vis.channel("3", 2)], images_per_objective=3,
                                      size=16, steps=4, seed=0)
    assert res.images.shape == (6, 3, 16, 16)
    assert res.values.shape == (4, 2)
    alone = vis.activation_maximization(m, [obj], images_per_objective=3, size=16, steps=4, seed=0)
    torch.testing.assert_close(alone.images, res.images[:3], rtol=0, atol=1e-9)


def test_stops_at_deepest_layer():
    m = tiny(tail=Boom())
    vis.activation_maximization(m, [vis.channel("3", 0), vis.channel("0", 1)], size=16, steps=2)
    with pytest.raises(AssertionError, match="ran past"):
        vis.activation_maximization(m, [vis.class_logit(0)], size=16, steps=1)


def test_inplace_relu_after_an_objective_layer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3))
    obj = vis.channel("0", 0) - vis.channel("2", 1)
    kw = dict(size=12, param="pixel", transforms=None, lr=0.1, seed=3)
    init = vis.activation_maximization(m, obj, steps=0, **kw).images
    res = vis.activation_maximization(m, obj, steps=1, **kw)
    with torch.no_grad():
        pre = m[0](init)
        expected = pre[:, 0].mean() - m[2](torch.relu(pre))[:, 1].mean()
    assert (pre[:, 0] < 0).any()  # values the in-place ReLU would have clipped
    torch.testing.assert_close(res.values[0, 0], expected)


def test_model_state_untouched_and_dtype_follows():
    m = tiny(torch.float64).train()
    res = vis.activation_maximization(m, "3:0", size=16, steps=2)
    assert res.images.dtype == torch.float64 and res.values.dtype == torch.float64
    assert m.training and all(p.grad is None for p in m.parameters())


def test_parameters_frozen_during_the_loop_and_restored(monkeypatch):
    # The fused op's backward is told at forward time which gradients are
    # wanted; with the model's weights frozen inside the loop it computes the
    # input gradient only (output_mask [True, False, False]).
    m = cnnvis_ext.fuse(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()))
    m[3].bias.requires_grad_(False)  # a user's own choice is kept, too
    masks = []
    real = torch.ops.cnnvis._conv_relu_pool_backward

    class Spy:
        def __call__(self, *args):
            masks.append(list(args[-1]))
            return real(*args)

    monkeypatch.setattr(torch.ops.cnnvis, "_conv_relu_pool_backward", Spy())
    vis.activation_maximization(m, "3:0", size=16, steps=2, prune=False)
    assert masks and all(mk[1] is False and mk[2] is False for mk in masks)
    assert [p.requires_grad for p in m.parameters()] == [True, True, True, False]
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("preset", [1, 2, 3, 4])
def test_yosinski_presets_run_through_fused_step(preset):
    m = tiny()
    p = vis.yosinski_preset(preset)
    assert p.regularizers.in_place
    res = vis.activation_maximization(m, ["0:1", "3:2"], size=16, steps=8, regularizers=f"yosinski{preset}",
                                      lr=5.0 if p.lr_policy == "constant" else None)
    assert res.images.shape == (2, 3, 16, 16)
    assert 0 <= res.images.min() and res.images.max() <= 1
    if preset == 1:  # progress policy with mild clipping: the objective rises
        assert (res.values[-1] > res.values[0]).all()


def test_yosinski_table_values():
    rows = {i: vis.YOSINSKI_PRESETS[i].regularizers for i in range(1, 5)}
    assert (rows[1].decay, rows[1].blur_sigma, rows[1].blur_every, rows[1].norm_pct, rows[1].contrib_pct) == (0, 0.5, 4, 50, 0)
    assert (rows[2].decay, rows[2].blur_sigma, rows[2].blur_every, rows[2].norm_pct, rows[2].contrib_pct) == (0.3, 0, 0, 20, 0)
    assert (rows[3].decay, rows[3].blur_sigma, rows[3].blur_every, rows[3].norm_pct, rows[3].contrib_pct) == (0.0001, 1.0, 4, 0, 0)
    assert (rows[4].decay, rows[4].blur_sigma, rows[4].blur_every, rows[4].norm_pct, rows[4].contrib_pct) == (0, 0.5, 4, 0, 90)


def test_loss_term_regularizers_and_adam_with_pixel_priors():
    m = tiny()
    regs = vis.Regularizers(tv_weight=1e-3, alpha_weight=1e-3, decay=0.01, blur_sigma=0.5,
                            blur_every=2, norm_pct=10)
    res = vis.activation_maximization(m, "3:1", size=16, steps=4, regularizers=regs, optimizer="adam")
    assert res.images.shape == (1, 3, 16, 16)
    res = vis.activation_maximization(m, "3:1", size=16, steps=3, param="fourier",
                                      regularizers={"tv_weight": 1e-3}, progress=True)
    with pytest.raises(ValueError, match="regularizers"):
        vis.activation_maximization(m, "3:1", size=16, steps=1, param="fourier",
                                    regularizers=vis.Regularizers(decay=0.1))


def test_custom_transforms_normalize_and_channels():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(5, 4, 3), nn.ReLU())
    res = vis.activation_maximization(
        m, "0:1", size=20, steps=3,
        transforms=[Pad(2, mode="reflect"), Jitter(3), RandomScale([0.9, 1.1]), RandomRotate([-5, 5])],
        normalize=([0.5] * 5, [0.25] * 5))
    assert res.images.shape == (1, 5, 20, 20)
    res = vis.activation_maximization(m, "0:1", size=(12, 18), steps=2, param="pixel")
    assert res.images.shape == (1, 5, 12, 18)


def test_standard_transform_single_resampling_matches_composed():
    from cnnvis_ext.vis.transforms import Compose, StandardTransform
    torch.manual_seed(0)
    x = torch.rand(3, 2, 20, 20, dtype=torch.float64)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    # integer shifts only: the single resampling equals pad + two crops exactly
    fast = StandardTransform(5, 4, [1.0], [0.0], 2)
    slow = Compose([Pad(5), Jitter(4), RandomScale([1.0]), RandomRotate([0.0]), Jitter(2)])
    torch.testing.assert_close(fast(x, gens(), 1), slow(x, gens(), 1), rtol=0, atol=1e-9)
    # with zoom and rotation: same random draws; on a smooth image, equal away from the borders
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    x = torch.stack([torch.sin(0.3 * yy + 0.2 * xx), torch.cos(0.25 * xx - 0.1 * yy)]).double()
    x = (0.5 + 0.4 * x).expand(3, 2, 40, 40).contiguous()
    fast = vis.transforms.standard_transforms()
    slow = vis.transforms.standard_transforms(fused=False)
    a, b = fast(x, gens(), 1), slow(x, gens(), 1)
    assert a.shape == b.shape == (3, 2, 52, 52)
    inner = (slice(None), slice(None), slice(16, 36), slice(16, 36))  # away from the image's edges
    assert (a[inner] - b[inner]).abs().max() < 0.03  # one bilinear resampling instead of two
    # per-image: an image's result does not depend on the others
    one = fast(x[1:2], [torch.Generator().manual_seed(1)], 1)
    torch.testing.assert_close(one[0], a[1])


def test_works_on_fused_model():
    m = cnnvis_ext.fuse(tiny())
    res = vis.activation_maximization(m, ["2:0", "4:3"], size=16, steps=3, transforms=None)
    assert torch.isfinite(res.values).all()


def test_objective_values_against_manual():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 5, 6)
    out = torch.randn(2, 7)
    acts = {"l": a, O.OUTPUT: out}
    torch.testing.assert_close(vis.channel("l", 2)(acts), a[:, 2].mean((1, 2)))
    torch.testing.assert_close(vis.neuron("l", 1)(acts), a[:, 1, 2, 3])
    torch.testing.assert_close(vis.neuron("l", 1, 0, 4)(acts), a[:, 1, 0, 4])
    torch.testing.assert_close(vis.class_logit(3)(acts), out[:, 3])
    torch.testing.assert_close(vis.class_probability(3)(acts), out.softmax(1)[:, 3])
    v = torch.tensor([1.0, -1.0, 0.5, 0.0])
    torch.testing.assert_close(vis.direction("l", v)(acts), torch.einsum("nchw,c->nhw", a, v).mean((1, 2)))
    s = 2 * vis.channel("l", 0) - vis.channel("l", 1) + 1.0
    torch.testing.assert_close(s(acts), 2 * a[:, 0].mean((1, 2)) - a[:, 1].mean((1, 2)) + 1)
    ws = vis.weighted_sum(["l:0", "l:1"], [0.5, 2.0])
    torch.testing.assert_close(ws(acts), 0.5 * a[:, 0].mean((1, 2)) + 2 * a[:, 1].mean((1, 2)))
    d = vis.diversity("l")(acts)
    assert d.shape == (2,) and torch.allclose(d[0], d[1])
    assert s.layers == ("l",)


def test_parse_objective():
    assert vis.parse_objective("features.10:3").name == "channel('features.10', 3)"
    assert "neuron" in vis.parse_objective("a.b:1:2:3").name
    assert "neuron" in vis.parse_objective("a.b:1:center").name
    assert "class_logit" in vis.parse_objective("logit:4").name
    assert "class_probability" in vis.parse_objective("prob:4").name
    for bad in ["nolayer", "x:y", "a:1:2"]:
        with pytest.raises(ValueError, match="objective"):
            vis.parse_objective(bad)


def test_bad_inputs():
    m = tiny()
    with pytest.raises(KeyError, match="Valid layers: 0, 1, 2, 3"):
        vis.activation_maximization(m, "features.3:0", size=16, steps=1)
    with pytest.raises(ValueError, match="channel: 9 is out of range for layer '3' with 8 channels"):
        vis.activation_maximization(m, [vis.channel("3", 1), vis.channel("3", 9)], size=16, steps=1)
    with pytest.raises(ValueError, match="channel: 9 is out of range"):
        vis.activation_maximization(m, [vis.channel("3", 9) + vis.channel("3", 1)], size=16, steps=1)
    with pytest.raises(ValueError, match="class: 5 is out of range"):
        vis.activation_maximization(m, vis.class_logit(5), size=16, steps=1)
    with pytest.raises(ValueError, match="channel: expected a non-negative"):
        vis.channel("3", -1)
    with pytest.raises(TypeError, match="channel: expected an int"):
        vis.channel("3", 1.5)
    with pytest.raises(TypeError, match="model"):
        vis.activation_maximization("net", "3:0")
    with pytest.raises(ValueError, match="objectives"):
        vis.activation_maximization(m, [])
    with pytest.raises(ValueError, match="size"):
        vis.activation_maximization(m, "3:0", size=0)
    with pytest.raises(ValueError, match="lr"):
        vis.activation_maximization(m, "3:0", size=8, lr=-1)
    with pytest.raises(ValueError, match="optimizer"):
        vis.activation_maximization(m, "3:0", size=8, steps=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="param"):
        vis.activation_maximization(m, "3:0", size=8, steps=1, param="wavelet")
    with pytest.raises(ValueError, match="regularizers"):
        vis.activation_maximization(m, "3:0", size=8, steps=1, regularizers="yosinski9")
    with pytest.raises(ValueError, match="decay"):
        vis.Regularizers(decay=1.5)
    with pytest.raises(ValueError, match="norm_pct"):
        vis.Regularizers(norm_pct=150)
    with pytest.raises(TypeError, match="seed"):
        vis.activation_maximization(m, "3:0", size=8, steps=1, seed=1.5)
    with pytest.raises(ValueError, match="vector"):
        vis.activation_maximization(m, vis.direction("3", torch.ones(3)), size=8, steps=1)


