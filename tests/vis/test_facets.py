"""Multifaceted feature visualization (Nguyen et al. 2016) and its k-means."""
import itertools

import pytest
import torch
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext.vis.facets import CenterBiasParam


def brute_force(x, k):
    """The partition of least inertia, by enumerating every labelling."""
    best, best_a = float("inf"), None
    for a in itertools.product(range(k), repeat=x.shape[0]):
        a = torch.tensor(a)
        if len(set(a.tolist())) < k:
            continue
        inertia = sum(((x[a == j] - x[a == j].mean(0)) ** 2).sum().item() for j in range(k))
        if inertia < best - 1e-12:
            best, best_a = inertia, a
    return best, best_a


def same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 3)])
def test_kmeans_finds_the_brute_force_optimum(seed, k):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(seed))
    res = vis.kmeans(x, k, n_init=10, seed=0)
    best, best_a = brute_force(x.double(), k)
    assert res.inertia == pytest.approx(best, rel=1e-9)
    assert same_partition(res.assignments, best_a)


def test_kmeans_is_a_fixed_point_and_seeded():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(3))
    res = vis.kmeans(x, 4, seed=7)
    d = torch.cdist(x.double(), res.centers.double())
    assert torch.equal(res.assignments, d.argmin(1))
    for j in range(4):
        assert torch.allclose(res.centers[j], x[res.assignments == j].mean(0), atol=1e-6)
    again = vis.kmeans(x, 4, seed=7)
    assert torch.equal(again.assignments, res.assignments)
    assert torch.equal(again.centers, res.centers)
    one = vis.kmeans(x, 1)
    assert torch.equal(one.assignments, torch.zeros(40, dtype=torch.long))
    # k = N: every point its own cluster, inertia 0
    assert vis.kmeans(x[:5], 5).inertia == pytest.approx(0.0, abs=1e-9)


def test_kmeans_bad_input_is_named():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="k"):
        vis.kmeans(x, 6)
    with pytest.raises(ValueError, match="k"):
        vis.kmeans(x, 0)
    with pytest.raises(TypeError, match="x"):
        vis.kmeans(x.long(), 2)
    with pytest.raises(TypeError, match="x"):
        vis.kmeans([[0.0]], 1)
    with pytest.raises(ValueError, match="x"):
        vis.kmeans(torch.tensor([[float("nan")], [0.0]]), 1)
    with pytest.raises(TypeError, match="n_init"):
        vis.kmeans(x, 2, n_init=1.5)


def two_mode_model():
    """Layer "1" has three channels: 0 = red + blue (the unit), 1 = red, 2 = blue."""
    m = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].bias.zero_()
        m[0].weight[0, 0] = m[0].weight[0, 2] = 1.0
        m[0].weight[1, 0] = 1.0
        m[0].weight[2, 2] = 1.0
    return m


def two_mode_data(n=24, size=16):
    """Thirds: a red square, a blue square, dim images (which never make the top 16)."""
    g = torch.Generator().manual_seed(0)
    imgs, modes = [], []
    for i in range(n):
        im = 0.1 + 0.05 * torch.rand(3, size, size, generator=g)
        mode = i % 3
        s = 3 + int(torch.randint(3, (1,), generator=g))
        if mode < 2:
            im[0 if mode == 0 else 2, s:s + 8, s:s + 8] = 0.9
        imgs.append(im)
        modes.append(mode)
    return torch.stack(imgs), torch.tensor(modes)


def test_facets_recover_a_planted_two_mode_dataset():
    m = two_mode_model()
    x, modes = two_mode_data()
    ds = torch.utils.data.TensorDataset(x)
    res = vis.multifaceted_visualization(m, "1", 0, ds, facets=2, top=16, steps=8, seed=0)
    ta = vis.top_activations(m, "1", ds, k=16, units=[0], project=False, progress=False)
    assert torch.equal(res.indices, ta.indices[0])        # the ranking is top_activations'
    assert torch.equal(res.activations, ta.values[0])
    top_modes = modes[res.indices]
    assert set(top_modes.tolist()) == {0, 1}
    assert same_partition(res.assignments, top_modes)
    assert res.images.shape == (2, 3, 16, 16) and res.values.shape == (8, 2)
    assert res.mean_images.shape == (2, 3, 16, 16)
    for j in range(2):
        assert torch.allclose(res.mean_images[j], x[res.indices[res.assignments == j]].mean(0))
    # each facet starts from its cluster's mean image: the red cluster's facet stays red
    red = int(res.assignments[top_modes == 0][0])
    blue = 1 - red
    r_minus_b = res.images[:, 0].mean((1, 2)) - res.images[:, 2].mean((1, 2))
    assert r_minus_b[red] > 0.1 and r_minus_b[blue] < -0.1
    with torch.no_grad():  # the unit, measured without the transforms, rose from the start
        unit = lambda im: m[:2](im)[:, 0].mean((1, 2))  # noqa: E731
        assert (unit(res.images) > unit(res.mean_images) + 0.01).all()


def test_facets_do_not_depend_on_batch_size_or_dataset_form():
    m = two_mode_model()
    x, _ = two_mode_data()
    kw = dict(facets=3, top=12, steps=4, seed=2, transforms="standard")
    a = vis.multifaceted_visualization(m, "1", 0, torch.utils.data.TensorDataset(x),
                                       batch_size=64, **kw)
    batches = [x[i:i + 5] for i in range(0, len(x), 5)]
    b = vis.multifaceted_visualization(m, "1", 0, batches, batch_size=1, **kw)
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.indices, b.indices)
    assert torch.allclose(a.images, b.images, atol=1e-6)
    assert torch.allclose(a.values, b.values, atol=1e-6)
    c = vis.multifaceted_visualization(m, "1", 0, batches, batch_size=1, **kw)
    assert torch.equal(b.images, c.images)
    # facets ordered by cluster size, largest first
    sizes = torch.bincount(a.assignments, minlength=3)
    assert (sizes[:-1] >= sizes[1:]).all()


def test_center_bias_moves_the_centre_more_than_the_border():
    start = torch.full((1, 3, 16, 16), 0.5)
    p = CenterBiasParam(start, center_sigma=0.2)
    assert torch.allclose(p.image(), start)
    with torch.no_grad():
        p.delta.fill_(1.0)
    change = (p.image() - start).abs()[0, 0]
    assert change[0, 0] < 0.1 * change[7, 7]
    flat = CenterBiasParam(start, center_sigma=float("inf"))
    with torch.no_grad():
        flat.delta.fill_(1.0)
    change = (flat.image() - start).abs()[0, 0]
    assert torch.allclose(change[0, 0], change[7, 7])


def test_facets_bad_input_is_named():
    m = two_mode_model()
    x, _ = two_mode_data()
    ds = torch.utils.data.TensorDataset(x)
    cases = [
        (dict(unit=9), ValueError, "unit"),
        (dict(unit=-1), ValueError, "unit"),
        (dict(facets=20, top=10), ValueError, "facets"),
        (dict(facets=0), ValueError, "facets"),
        (dict(center_sigma=0.0), ValueError, "center_sigma"),
        (dict(top=2.0), TypeError, "top"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(layer="nope"), KeyError, "nope"),
    ]
    for kw, err, name in cases:
        args = {"layer": "1", "unit": 0, **kw}
        with pytest.raises(err, match=name):
            vis.multifaceted_visualization(m, args.pop("layer"), args.pop("unit"), ds, steps=1,
                                           **args)
    with pytest.raises(ValueError, match="facets"):  # more facets than images
        vis.multifaceted_visualization(m, "1", 0, [x[:3]], facets=4, top=8, steps=1)
    with pytest.raises(ValueError, match="dataset"):  # a one-shot iterator
        vis.multifaceted_visualization(m, "1", 0, iter([x[:6], x[6:]]), facets=2, top=4,
                                       steps=1)
    with pytest.raises(ValueError, match="dataset"):
        vis.multifaceted_visualization(m, "1", 0, [x * 3], facets=2, top=4, steps=1)
