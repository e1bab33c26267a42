"""cnnvis_ext.metrics against Quantus 0.6.0 (a test dependency: these run in CI, no skips).

Same model, inputs, maps and settings; the random draws Quantus makes (the subsets of
FaithfulnessCorrelation, the noise of MaxSensitivity, the other class of RandomLogit) are
recorded through the hooks Quantus offers (``perturb_func``, ``explain_func``) and given to our
functions, and MPRT's re-initialization is given to ours as ``randomize``. Quantus predicts in
float32 (``torch.Tensor(x)``), so the tests that go through its ``model.predict`` use a float32
model and tolerances; the others run in float64.
"""
import numpy as np
import pytest
import quantus
import torch
from quantus.functions.perturb_func import (
    batch_baseline_replacement_by_indices,
    batch_uniform_noise,
)
from quantus.functions.similarity_func import correlation_spearman
from skimage.metrics import structural_similarity
from torch import nn

from cnnvis_ext import metrics as M
from cnnvis_ext import vis

QUIET = dict(disable_warnings=True, display_progressbar=False)


def net(dtype, channels=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).to(dtype).eval()


def inputs(dtype, n=4, channels=3, size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, channels, size, size, dtype=dtype, generator=g)
    attr = torch.randn(n, channels, size, size, dtype=dtype, generator=g)  # distinct values
    return x, attr, torch.arange(n) % 5


def signed_saliency(model, x, t):
    """The gradient itself, so that Quantus's ``abs`` and ours both have work to do."""
    return vis.saliency(model, x, t, absolute=False)


def quantus_explain(record=None, method=signed_saliency):
    """Quantus's ``explain_func``: our method on numpy inputs, in the model's dtype; the
    targets Quantus asks for are appended to ``record``."""
    def explain(model, inputs, targets, **kwargs):
        dtype = next(model.parameters()).dtype
        t = torch.as_tensor(np.asarray(targets)).long()
        if record is not None:
            record.append(t.clone())
        return method(model, torch.as_tensor(np.asarray(inputs)).to(dtype), t).detach().numpy()
    return explain


@pytest.mark.parametrize("patch, regions", [(4, 3), (2, 7)])
def test_region_perturbation(patch, regions):
    """RegionPerturbation(morf, black baseline, softmax): its drops after each region are
    ``curve[0] - curve[k]`` here."""
    x, attr, t = inputs(torch.float32)
    m = net(torch.float32)
    ours = M.region_perturbation(m, x, attr, t, patch_size=patch, regions=regions,
                                 baseline="black", score="probability", batch_size=5)
    metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions,
                                        order="morf", perturb_baseline="black", normalise=False,
                                        abs=False, **QUIET)
    theirs = np.array(metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=attr.numpy(),
                             device="cpu", softmax=True), dtype=np.float64)
    assert theirs.shape == (4, regions)
    drops = (ours.curve[:, :1] - ours.curve[:, 1:]).double().numpy()
    np.testing.assert_allclose(drops, theirs, rtol=1e-4, atol=1e-6)
    assert np.abs(theirs).max() > 1e-3       # the perturbation does move the score


def test_pixel_flipping():
    """PixelFlipping flips single values ranked by their own attribution; with a map equal
    across the three channels and three values per step it flips whole pixels, which is
    region perturbation with 1-pixel patches: its curve is ``curve[:, 1:]`` here."""
    x, attr, t = inputs(torch.float32, size=6)           # Quantus: 3 must divide H*W
    m = net(torch.float32)
    amap = attr[:, :1]                                     # (N, 1, H, W): one value per pixel
    ours = M.region_perturbation(m, x, amap, t, patch_size=1, regions=36, baseline="black",
                                 score="probability", batch_size=50)
    metric = quantus.PixelFlipping(features_in_step=3, perturb_baseline="black", normalise=False,
                                   abs=False, **QUIET)
    theirs = np.array(metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=amap.numpy(),
                             device="cpu", softmax=True), dtype=np.float64)
    assert theirs.shape == (4, 36)
    np.testing.assert_allclose(ours.curve[:, 1:].double().numpy(), theirs, rtol=1e-4, atol=1e-6)


def test_faithfulness_correlation_same_subsets():
    """FaithfulnessCorrelation draws ``subset_size`` of the C*H*W values per run with the
    global np.random; its perturb_func sees them, we record them and give them to ours as
    ``subsets`` (``features="values"``, Quantus's black baseline, logits)."""
    x, attr, t = inputs(torch.float32)
    m = net(torch.float32)
    seen = []

    def perturb(arr, indices, **kw):
        seen.append(np.array(indices))
        return batch_baseline_replacement_by_indices(arr=arr, indices=indices, **kw)

    np.random.seed(7)
    metric = quantus.FaithfulnessCorrelation(nr_runs=12, subset_size=20, perturb_func=perturb,
                                             perturb_baseline="black", normalise=False, abs=False,
                                             return_aggregate=False, **QUIET)
    theirs = np.array(metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=attr.numpy(),
                             device="cpu"), dtype=np.float64)
    subsets = torch.from_numpy(np.stack(seen, 1))                           # (N, runs, k)
    assert subsets.shape == (4, 12, 20)
    ours = M.faithfulness_correlation(m, x, attr, t, features="values", subsets=subsets,
                                      baseline="black", batch_size=7)
    np.testing.assert_allclose(ours.double().numpy(), theirs, rtol=1e-4, atol=1e-4)
    # the subsets matter: other subsets give other correlations
    other = M.faithfulness_correlation(m, x, attr, t, features="values", subsets=subsets.flip(1)[:, :, :10],
                                       baseline="black")
    assert np.abs(other.double().numpy() - theirs).max() > 1e-3


def test_max_sensitivity_same_noise():
    """MaxSensitivity with its own uniform noise (recorded through its perturb_func) and our
    saliency as explain_func, float64 end to end."""
    x, _, t = inputs(torch.float64)
    m = net(torch.float64)
    noise = []

    def perturb(arr, indices, **kw):
        out = batch_uniform_noise(arr=arr, indices=indices, **kw)
        noise.append(out - arr)
        return out

    np.random.seed(3)
    metric = quantus.MaxSensitivity(nr_samples=5, lower_bound=0.1, perturb_func=perturb,
                                    normalise=False, abs=False, **QUIET)
    theirs = np.array(metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None,
                             explain_func=quantus_explain(), device="cpu"), dtype=np.float64)
    delta = torch.from_numpy(np.stack(noise)).view(5, *x.shape)
    assert 0.05 < float(delta.abs().max()) <= 0.1
    ours = M.max_sensitivity(m, x, t, signed_saliency, perturbations=delta, batch_size=3)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-12)
    assert (theirs > 1e-3).all()


def test_mprt_cascade():
    """MPRT re-initializes, output first, each module with ``reset_parameters`` under
    ``torch.manual_seed(seed + 1)``; given that as ``randomize``, our Spearman correlations
    of the absolute maps, layer by layer, are Quantus's."""
    x, _, t = inputs(torch.float64)
    m = net(torch.float64)
    metric = quantus.MPRT(seed=42, layer_order="top_down", abs=True, normalise=True,
                          return_aggregate=False, **QUIET)
    theirs = metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None,
                    explain_func=quantus_explain(), device="cpu", batch_size=64)

    def reset(module, index):
        torch.manual_seed(42 + 1)
        module.reset_parameters()

    ours = M.model_randomization(m, x, t, signed_saliency, randomize=reset, batch_size=3)
    layers = [k for k in theirs if k != "original"]
    assert ours.layers == layers == ["7", "3", "0"]
    for i, name in enumerate(layers):
        np.testing.assert_allclose(ours.spearman[i].numpy(), np.array(theirs[name]),
                                   rtol=1e-10, atol=1e-12)
    # the cascade does move the maps
    assert ours.spearman[-1].max() < 0.9


def test_random_logit_same_class():
    """RandomLogit draws the other class with np.random.seed(seed); the classes it explains
    are recorded through explain_func. With the same class and the same similarity (Spearman)
    ours is Quantus's; its default similarity is a 1-D SSIM over flattened maps, ours the 2-D
    SSIM (see ``random_logit``), so that one is compared with skimage in the next test."""
    x, _, t = inputs(torch.float64, n=6)
    m = net(torch.float64)
    asked = []
    metric = quantus.RandomLogit(num_classes=5, seed=42, similarity_func=correlation_spearman,
                                 normalise=False, abs=False, **QUIET)
    theirs = np.array(metric(model=m, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None,
                             explain_func=quantus_explain(asked), device="cpu"), dtype=np.float64)
    other = asked[-1]
    assert (other != t).all()
    # how Quantus draws it: an index among the classes other than the target
    np.random.seed(42)
    r = torch.from_numpy(np.random.randint(0, 4, 6))
    assert torch.equal(other, torch.where(r < t, r, r + 1))
    ours = M.random_logit(m, x, t, signed_saliency, 5, other=other, similarity=M.spearman,
                          batch_size=4)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-12)
    assert (np.abs(theirs) < 0.999).all()


def test_ssim_is_skimage_gaussian_ssim():
    """Our SSIM (of each map scaled to [0, 1]) is skimage's with a Gaussian window (sigma
    1.5, 11 taps), population covariance and data range 1, as Wang et al. 2004."""
    g = torch.Generator().manual_seed(4)
    a = torch.rand(3, 20, 17, dtype=torch.float64, generator=g)
    b = a + 0.3 * torch.rand(3, 20, 17, dtype=torch.float64, generator=g)
    unit = lambda v: (v - v.min()) / (v.max() - v.min())  # noqa: E731
    ref = [structural_similarity(unit(a[i]).numpy(), unit(b[i]).numpy(), gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=1.0)
           for i in range(3)]
    np.testing.assert_allclose(M.ssim(a, b).numpy(), ref, rtol=1e-10, atol=1e-12)
