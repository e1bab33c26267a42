"""cnnvis_ext.metrics against plain per-image loops written here, and the sanity-check result
of Adebayo et al. on a trained network."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_ext import metrics as M
from cnnvis_ext import vis

D = torch.float64


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).to(D).eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, dtype=D, generator=g)
    attr = torch.rand(3, 3, 8, 8, dtype=D, generator=g)   # distinct values: one order
    return x, attr, torch.tensor([0, 2, 4])


def test_deletion_insertion_against_a_loop(data):
    x, attr, t = data
    m = net()
    res = M.deletion_insertion(m, x, attr, t, steps=4, baseline="zero", batch_size=5)
    for i in range(3):
        order = np.argsort(-attr[i].sum(0).flatten().numpy(), kind="stable")
        for s, k in enumerate([0, 16, 32, 48, 64]):
            gone = torch.zeros(64, dtype=torch.bool)
            gone[torch.as_tensor(order[:k])] = True
            gone = gone.view(1, 8, 8)
            dele = torch.where(gone, torch.zeros_like(x[i]), x[i])
            ins = torch.where(gone, x[i], torch.zeros_like(x[i]))
            with torch.no_grad():
                pd = F.softmax(m(dele[None]), 1)[0, t[i]]
                pi = F.softmax(m(ins[None]), 1)[0, t[i]]
            torch.testing.assert_close(res.deletion[i, s], pd)
            torch.testing.assert_close(res.insertion[i, s], pi)
    torch.testing.assert_close(res.deletion_auc, torch.trapezoid(res.deletion, res.fractions, dim=1))
    torch.testing.assert_close(res.fractions, torch.tensor([0, .25, .5, .75, 1], dtype=D))


def test_region_perturbation_against_a_loop(data):
    x, attr, t = data
    m = net()
    res = M.region_perturbation(m, x, attr, t, patch_size=4, regions=3, baseline="zero")
    for i in range(3):
        patch = attr[i].sum(0).unfold(0, 4, 4).unfold(1, 4, 4).mean((-1, -2)).flatten()
        order = torch.argsort(patch, descending=True)
        cur, scores = x[i].clone(), []
        with torch.no_grad():
            scores.append(m(cur[None])[0, t[i]])
            for k in range(3):
                r, c = divmod(int(order[k]), 2)
                cur[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 0
                scores.append(m(cur[None])[0, t[i]])
        scores = torch.stack(scores)
        torch.testing.assert_close(res.curve[i], scores)
        torch.testing.assert_close(res.aopc[i], (scores[0] - scores).mean())


def test_faithfulness_correlation_is_pearson_of_the_drops(data):
    x, attr, t = data
    m = net()
    got = M.faithfulness_correlation(m, x, attr, t, subset_size=10, runs=12, seed=3)
    # a map that is exactly the drop's linear part gives a correlation near 1: the saliency
    # of a linear model times the input
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).to(D).eval()
    xr = x.clone().requires_grad_(True)
    lin(xr)[torch.arange(3), t].sum().backward()
    exact = M.faithfulness_correlation(lin, x, xr.grad * x, t, subset_size=10, runs=12, seed=3)
    torch.testing.assert_close(exact, torch.ones(3, dtype=D))
    assert got.shape == (3,) and (got.abs() <= 1).all()
    # reproducible under the seed
    torch.testing.assert_close(M.faithfulness_correlation(m, x, attr, t, subset_size=10, runs=12,
                                                          seed=3), got)


def test_spearman_and_ssim():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 9, 7, dtype=D, generator=g)
    b = torch.rand(4, 9, 7, dtype=D, generator=g)
    ref = []
    for i in range(4):
        ra = np.argsort(np.argsort(a[i].flatten().numpy())).astype(float)
        rb = np.argsort(np.argsort(b[i].flatten().numpy())).astype(float)
        ref.append(np.corrcoef(ra, rb)[0, 1])
    torch.testing.assert_close(M.spearman(a, b), torch.tensor(ref, dtype=D))
    torch.testing.assert_close(M.spearman(a, a * 3 + 1), torch.ones(4, dtype=D))
    # ties share their mean rank
    torch.testing.assert_close(M.spearman(torch.tensor([[1., 1., 2.]]), torch.tensor([[0., 0., 5.]])),
                               torch.ones(1, dtype=D))
    torch.testing.assert_close(M.ssim(a, a), torch.ones(4, dtype=D))
    assert (M.ssim(a, b) < 0.5).all()
    torch.testing.assert_close(M.ssim(a, b), M.ssim(b, a))


def test_max_sensitivity_against_a_loop(data):
    x, _, t = data
    m = net()
    got = M.max_sensitivity(m, x, t, vis.saliency, radius=0.05, samples=3, seed=4)
    from cnnvis_ext.seeding import make_generator
    for i in range(3):
        base = vis.saliency(m, x[i:i + 1], t[i:i + 1])
        noise = torch.rand((3, 3, 8, 8), generator=make_generator(4, i, 8, "cpu")) * 2 - 1
        worst = max(((vis.saliency(m, x[i:i + 1] + 0.05 * noise[j].to(D), t[i:i + 1]) - base).norm()
                     / base.norm()).item() for j in range(3))
        assert abs(got[i].item() - worst) < 1e-9


def test_sanity_checks_show_what_the_paper_showed():
    """On a trained network, randomizing the top layer changes saliency maps far more than
    guided backprop ones (Adebayo et al. 2018, Fig. 2)."""
    from cnnvis_ext.data import load_dataset
    from cnnvis_ext.models import cifar_cnn
    from cnnvis_ext.train import TrainConfig, train

    data = load_dataset(None, progress=False)
    torch.manual_seed(0)
    model = cifar_cnn(data.num_classes)
    train(model, data, TrainConfig(epochs=2, seed=0), progress=False, log=None)
    model.eval()
    x, t = data.test_images[:8], data.test_labels[:8]
    top = [vis.saliency, vis.guided_backprop]
    res = {f.__name__: M.model_randomization(model, x, t, f) for f in top}
    assert res["saliency"].layers[0] == "fc2"
    sal, gbp = res["saliency"].spearman[0].mean(), res["guided_backprop"].spearman[0].mean()
    assert gbp > sal + 0.2, (float(sal), float(gbp))
    # every layer randomized: both far from the original
    assert res["saliency"].ssim[-1].mean() < res["saliency"].ssim[0].mean()


def test_results_do_not_depend_on_the_budget(data):
    """``batch_size`` is the memory budget of every metric: one image per forward, a few, or
    all at once give the same numbers."""
    x, attr, t = data
    m = net()
    runs = {
        "deletion_insertion": lambda b: M.deletion_insertion(m, x, attr, t, steps=5,
                                                             batch_size=b),
        "region_perturbation": lambda b: M.region_perturbation(m, x, attr, t, patch_size=2,
                                                               regions=6, batch_size=b),
        "faithfulness_correlation": lambda b: M.faithfulness_correlation(
            m, x, attr, t, subset_size=9, runs=5, batch_size=b),
        "faithfulness_values": lambda b: M.faithfulness_correlation(
            m, x, attr, t, subset_size=9, runs=5, features="values", baseline="black",
            batch_size=b),
        "max_sensitivity": lambda b: M.max_sensitivity(m, x, t, vis.saliency, samples=4,
                                                       batch_size=b),
        "model_randomization": lambda b: M.model_randomization(m, x, t, vis.saliency,
                                                               batch_size=b)[1:3],
        "random_logit": lambda b: M.random_logit(m, x, t, vis.saliency, 5, batch_size=b),
    }
    for name, run in runs.items():
        ref = run(1000)
        for b in (1, 5) if name in ("model_randomization", "random_logit") else (5, 8):
            got = run(b)
            for r, g in zip(ref if isinstance(ref, tuple) else [ref],
                            got if isinstance(got, tuple) else [got]):
                torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=f"{name}, {b}")


def test_explicit_draws_and_bad_arguments(data):
    x, attr, t = data
    m = net()
    # explicit subsets of pixels are the subsets drawn
    idx = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(i))[:10]
                       for i in range(15)]).view(3, 5, 10)
    got = M.faithfulness_correlation(m, x, attr, t, subsets=idx)
    lin_drops = []
    with torch.no_grad():
        full = m(x)[torch.arange(3), t]
        for i in range(3):
            row = []
            for r in range(5):
                xx = x[i].clone().view(3, 64)
                xx[:, idx[i, r]] = 0
                row.append(full[i] - m(xx.view(1, 3, 8, 8))[0, t[i]])
            lin_drops.append(torch.stack(row))
    sums = attr.sum(1).view(3, 64).gather(1, idx.view(3, -1)).view(3, 5, 10).sum(2)
    ref = torch.stack([torch.corrcoef(torch.stack([sums[i], lin_drops[i]]))[0, 1] for i in range(3)])
    torch.testing.assert_close(got, ref)
    # explicit noise is the noise used
    delta = torch.full((2,) + tuple(x.shape), 0.01, dtype=D)
    base = vis.saliency(m, x, t)
    moved = vis.saliency(m, x + 0.01, t)
    ref = ((moved - base).flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1))
    torch.testing.assert_close(M.max_sensitivity(m, x, t, vis.saliency, perturbations=delta), ref)
    # given maps (Quantus's a_batch) are the maps the method would compute
    sal = vis.saliency(m, x, t)
    torch.testing.assert_close(M.random_logit(m, x, t, vis.saliency, 5, maps=sal),
                               M.random_logit(m, x, t, vis.saliency, 5))
    torch.testing.assert_close(M.max_sensitivity(m, x, t, vis.saliency, samples=2, maps=sal),
                               M.max_sensitivity(m, x, t, vis.saliency, samples=2))
    torch.testing.assert_close(M.model_randomization(m, x, t, vis.saliency, maps=sal).spearman,
                               M.model_randomization(m, x, t, vis.saliency).spearman)
    with pytest.raises(ValueError, match="maps"):
        M.random_logit(m, x, t, vis.saliency, 5, maps=sal[:2])
    with pytest.raises(TypeError, match="maps"):
        M.max_sensitivity(m, x, t, vis.saliency, maps=sal.long())
    for bad, exc, kwargs in [
        ("subsets", TypeError, dict(subsets=idx.float())),
        ("subsets", ValueError, dict(subsets=idx[:2])),
        ("subsets", ValueError, dict(subsets=idx + 64)),
        ("features", ValueError, dict(features="channels")),
        ("batch_size", ValueError, dict(batch_size=0)),
        ("baseline", ValueError, dict(baseline="white", subsets=idx)),
    ]:
        with pytest.raises(exc, match=bad):
            M.faithfulness_correlation(m, x, attr, t, **kwargs)
    with pytest.raises(ValueError, match="perturbations"):
        M.max_sensitivity(m, x, t, vis.saliency, perturbations=delta[:, :2])
    with pytest.raises(TypeError, match="perturbations"):
        M.max_sensitivity(m, x, t, vis.saliency, perturbations=delta.long())
    with pytest.raises(TypeError, match="randomize"):
        M.model_randomization(m, x, t, vis.saliency, randomize="reset")
    with pytest.raises(ValueError, match="other"):
        M.random_logit(m, x, t, vis.saliency, 5, other=t)
    with pytest.raises(TypeError, match="similarity"):
        M.random_logit(m, x, t, vis.saliency, 5, similarity="ssim")
    with pytest.raises(TypeError, match="batch_size"):
        M.region_perturbation(m, x, attr, t, batch_size=2.0)


def test_transferability_and_plausibility():
    torch.manual_seed(5)
    other = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).to(D).eval()
    x = torch.randn(10, 3, 2, 2, dtype=D)
    pred = other(x).argmax(1)
    classes = pred.clone()
    classes[:3] = (pred[:3] + 1) % 3          # three of ten shown as another class
    torch.testing.assert_close(M.transferability(x, classes, other, batch_size=4),
                               torch.tensor(0.7))
    # real images: two well-separated clusters in the feature space of layer "2"
    real = torch.cat([torch.randn(20, 3, 2, 2, dtype=D) + 3, torch.randn(20, 3, 2, 2, dtype=D) - 3])
    labels = torch.tensor([0] * 20 + [1] * 20)
    near0 = real[:5] + 0.01 * torch.randn(5, 3, 2, 2, dtype=D)
    res = M.plausibility(near0, 0, real, labels, other, "2")
    feats = lambda t: F.normalize(other[:3](t).flatten(1), dim=1)  # noqa: E731
    c0 = F.normalize(other[:3](real[:20]).mean(0), dim=0)
    c1 = F.normalize(other[:3](real[20:]).mean(0), dim=0)
    torch.testing.assert_close(res.own, feats(near0) @ c0)
    torch.testing.assert_close(res.score, feats(near0) @ c0 - feats(near0) @ c1)
    with pytest.raises(ValueError, match="real_labels"):
        M.plausibility(near0, 2, real, labels, other, "2")
    with pytest.raises(TypeError, match="images"):
        M.transferability(x.long(), classes, other)


def test_deletion_insertion_one_curve(data):
    x, attr, t = data
    m = net()
    both = M.deletion_insertion(m, x, attr, t, steps=4, baseline="zero")
    d = M.deletion_insertion(m, x, attr, t, steps=4, baseline="zero", curves="deletion")
    i = M.deletion_insertion(m, x, attr, t, steps=4, baseline="zero", curves="insertion")
    torch.testing.assert_close(d.deletion, both.deletion)
    torch.testing.assert_close(i.insertion_auc, both.insertion_auc)
    assert d.insertion is None and d.insertion_auc is None and i.deletion is None
    with pytest.raises(ValueError, match="curves: expected"):
        M.deletion_insertion(m, x, attr, t, curves="both-ways")
