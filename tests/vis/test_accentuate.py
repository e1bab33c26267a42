"""Feature accentuation (Hamblin et al. 2024) and caricatures (Lucid): optimizations that start
from (or compare with) real images."""
import pytest
import torch
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext.seeding import make_generator
from cnnvis_ext.vis.transforms import make_transforms


def tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    for mod in m:
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(mod.weight, std=0.4)
            nn.init.normal_(mod.bias, std=0.1)
    return m


def photos(n=3, size=16, seed=1):
    """Smooth random images in [0.1, 0.9] (a blurred noise, so the Fourier inverse is tame)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return 0.1 + 0.8 * x


OBJS = ["3:0", "3:1", "3:2"]


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_param_from_images_starts_at_the_image(param):
    x = photos()
    f = vis.param_from_images(x, param)
    p = f(3, (16, 16), [torch.Generator()] * 3, 1, "cpu", torch.float32)
    assert torch.allclose(p.image(), x, atol=1e-5)
    with pytest.raises(ValueError, match="images"):  # a second call: no images left
        f(3, (16, 16), [torch.Generator()] * 3, 1, "cpu", torch.float32)
    f = vis.param_from_images(x, param)
    with pytest.raises(ValueError, match="images"):  # the size asked for is not the images'
        f(3, (8, 8), [torch.Generator()] * 3, 1, "cpu", torch.float32)


def test_fourier_init_inverts_the_colour_decorrelation():
    x = photos()
    for dec in (True, False):
        p = vis.param_from_images(x, "fourier", decorrelate=dec)(
            3, (16, 16), [torch.Generator()] * 3, 1, "cpu", torch.float32)
        assert (p.color is not None) == dec
        assert torch.allclose(p.image(), x, atol=1e-5)


def test_accentuation_raises_the_objective_and_stays_closer_than_actmax():
    m, x = tiny(), photos()
    kw = dict(steps=15, lr=0.05, seed=3)
    acc = vis.feature_accentuation(m, OBJS, x, lam=200.0, **kw)
    plain = vis.feature_accentuation(m, OBJS, x, lam=0.0, **kw)   # = actmax from the image
    assert acc.images.shape == x.shape and acc.values.shape == (15, 3)
    assert 0 <= acc.images.min() and acc.images.max() <= 1
    # step 0 is the image itself
    assert torch.allclose(acc.distances[0], torch.zeros(3), atol=1e-8)
    assert (acc.values[0] - plain.values[0]).abs().max() < 1e-5
    # the objective rises, less far than without the penalty, and the image stays closer
    with torch.no_grad():
        def obj(images):
            a = m[:4](images)
            return a[torch.arange(3), torch.arange(3)].mean((1, 2))
        start, mid, far = obj(x), obj(acc.images), obj(plain.images)
    assert (mid > start + 0.05).all()
    assert (far > mid).all()
    d_acc = (acc.images - x).pow(2).flatten(1).mean(1)
    d_plain = (plain.images - x).pow(2).flatten(1).mean(1)
    assert (d_acc < 0.5 * d_plain).all()
    assert torch.allclose(acc.distances[-1], d_acc, rtol=0.5)  # the last recorded step is near


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_lambda_zero_is_activation_maximization_from_the_image(param):
    m, x = tiny(), photos()
    kw = dict(steps=6, lr=0.05, seed=5, transforms="standard")
    acc = vis.feature_accentuation(m, OBJS, x, lam=0.0, param=param, **kw)
    ref = vis.activation_maximization(m, OBJS, size=16, param=vis.param_from_images(x, param),
                                      batch_size=2, **kw)
    assert torch.allclose(acc.images, ref.images, atol=1e-5)
    assert torch.allclose(acc.values, ref.values, atol=1e-5)


def test_feature_space_penalty():
    m, x = tiny(), photos()
    kw = dict(steps=12, lr=0.05, seed=0, param="pixel", transforms=None, reg_layer="1")
    near = vis.feature_accentuation(m, OBJS, x, lam=100.0, **kw)
    free = vis.feature_accentuation(m, OBJS, x, lam=0.0, **kw)
    assert torch.allclose(near.distances[0], torch.zeros(3), atol=1e-12)
    with torch.no_grad():
        f0 = m[:2](x)
        d = lambda im: (m[:2](im) - f0).pow(2).flatten(1).mean(1)  # noqa: E731
        assert (d(near.images) < d(free.images)).all()
    assert (near.values[-1] > near.values[0]).all()


def test_batch_size_and_seed():
    m, x = tiny(), photos()
    kw = dict(steps=5, lam=10.0, transforms="standard")
    a = vis.feature_accentuation(m, OBJS, x, seed=1, **kw)
    b = vis.feature_accentuation(m, OBJS, x, seed=1, batch_size=1, **kw)
    c = vis.feature_accentuation(m, OBJS, x, seed=2, **kw)
    assert torch.allclose(a.images, b.images, atol=1e-6)
    assert torch.allclose(a.values, b.values, atol=1e-6)
    assert not torch.allclose(a.images, c.images, atol=1e-4)


def test_broadcasting_one_image_or_one_objective():
    m, x = tiny(), photos()
    r = vis.feature_accentuation(m, OBJS, x[0], steps=2, transforms=None)
    assert r.images.shape == (3, 3, 16, 16)
    r = vis.feature_accentuation(m, vis.class_logit(1), x, steps=2, transforms=None)
    assert r.values.shape == (2, 3)
    with pytest.raises(ValueError, match="objectives"):
        vis.feature_accentuation(m, OBJS[:2], x, steps=1)


def test_caricature_increases_the_dot_product_with_the_original():
    m, x = tiny(), photos()
    res = vis.caricature(m, "3", x, steps=20, lr=0.05, transforms=None, seed=0)
    assert res.images.shape == x.shape and res.values.shape == (20, 3)
    with torch.no_grad():
        a0 = m[:4](x).flatten(1)
        a = m[:4](res.images).flatten(1)
        dot = (a * a0).sum(1)
        cos = dot / a.norm(dim=1) / a0.norm(dim=1)
    # an independent check of the objective at the result, above its value at the noise start
    assert (dot * cos.clamp_min(0.1) > 1.5 * res.values[0]).all()
    # and the caricature does exaggerate: more than the original's own dot product
    assert (dot > a0.pow(2).sum(1)).all()
    assert (cos > 0.8).all()


def test_caricature_compares_with_the_original_under_the_same_transform():
    m, x = tiny(), photos()
    res = vis.caricature(m, "3", x, steps=2, init="image", param="pixel", power=0.0, seed=4,
                         transforms="standard")
    tfm = make_transforms("standard")
    gens = [make_generator(4, i, 1, "cpu") for i in range(3)]
    with torch.no_grad():
        a = m[:4](tfm(x, gens, 1)).flatten(1)
    # step 0: the image is the original, seen through the same draws as its copy: |a|^2
    assert torch.allclose(res.values[0], a.pow(2).sum(1), rtol=1e-5)
    one = vis.caricature(m, "3", x, steps=2, init="image", param="pixel", power=0.0, seed=4,
                         transforms="standard", batch_size=1)
    assert torch.allclose(one.values, res.values, rtol=1e-5)


def test_bad_input_is_named():
    m, x = tiny(), photos()
    cases = [
        (dict(lam=-1.0), ValueError, "lam"),
        (dict(param="maco"), ValueError, "param"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(lr=0), ValueError, "lr"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(reg_layer=3), TypeError, "reg_layer"),
    ]
    for kw, err, name in cases:
        with pytest.raises(err, match=name):
            vis.feature_accentuation(m, OBJS, x, **{"steps": 1, **kw})
    with pytest.raises(TypeError, match="images"):
        vis.feature_accentuation(m, OBJS, (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="images"):
        vis.feature_accentuation(m, OBJS, x * 3)
    with pytest.raises(ValueError, match="images"):
        vis.feature_accentuation(m, OBJS, torch.rand(3, 1, 16, 16))
    with pytest.raises(TypeError, match="model"):
        vis.feature_accentuation("m", OBJS, x)
    with pytest.raises(KeyError, match="nope"):
        vis.caricature(m, "nope", x, steps=1)
    with pytest.raises(ValueError, match="init"):
        vis.caricature(m, "3", x, init="zeros")
    with pytest.raises(ValueError, match="power"):
        vis.caricature(m, "3", x, power=-1.0)
    with pytest.raises(TypeError, match="layer"):
        vis.caricature(m, 3, x)
