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


def test_region_perturbation_equals_quantus(data):
    """Quantus's RegionPerturbation with a black (per-image minimum) baseline and softmax
    scores: the drops after each region equal ours."""
    import os
    try:
        import quantus
    except Exception as e:  # pragma: no cover - depends on the environment
        if os.environ.get("CI"):
            pytest.fail(f"quantus must be importable in CI: {e}", pytrace=False)
        pytest.skip(f"quantus is not importable: {e}")
    x, attr, t = (v.float() if v.is_floating_point() else v for v in data)  # Quantus: float32
    m = net().float()
    ours = M.region_perturbation(m, x, attr, t, patch_size=4, regions=3, baseline="black",
                                 score="probability")
    metric = quantus.RegionPerturbation(patch_size=4, regions_evaluation=3, order="morf",
                                        perturb_baseline="black", normalise=False, abs=False,
                                        disable_warnings=True, display_progressbar=False)
    theirs = metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=attr.numpy(),
                    device="cpu", softmax=True)
    drops = (ours.curve[:, :1] - ours.curve[:, 1:]).numpy()
    np.testing.assert_allclose(np.array(theirs, dtype=float), drops, rtol=1e-4, atol=1e-6)


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
