"""MACO (vis.maco_fv, param="maco") and the spectra and colour matrices it uses, against direct
computations written here."""
import pytest
import torch
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext.vis import maco as M


def _net(c_in=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c_in, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_image_spectrum_is_the_mean_magnitude_of_standardized_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 12, 10, generator=g)
    expected = torch.zeros(2, 12, 6)
    for img in x:
        z = (img - img.mean()) / (img.std() + 1e-4)
        expected += torch.fft.rfft2(z, norm="ortho").abs() / 5
    torch.testing.assert_close(M.image_spectrum(x), expected)
    # a dataset of (image, label) pairs gives the same
    pairs = [(img, 0) for img in x]
    torch.testing.assert_close(M.image_spectrum(pairs), expected)


def test_power_law_and_digits_spectra():
    p = M.power_law_spectrum(4, (8, 6))
    assert p.shape == (4, 8, 4)
    f = torch.sqrt(torch.fft.fftfreq(8)[:, None] ** 2 + torch.fft.rfftfreq(6)[None] ** 2)
    torch.testing.assert_close(p[2], 1 / f.clamp(min=1 / 8))
    d = M.digits_spectrum()
    assert d.shape == (1, 8, 5) and torch.isfinite(d).all() and d.min() >= 0


def test_color_correlation_is_a_square_root_of_the_channel_covariance():
    g = torch.Generator().manual_seed(1)
    mix = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.1, 0.2, 0.9, 0.0],
                        [0.0, 0.5, 0.5, 0.7]])
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(6, 4, 9, 9, generator=g))
    m = M.color_correlation(x)
    cov = torch.cov(x.transpose(0, 1).reshape(4, -1), correction=0)
    torch.testing.assert_close(m @ m.T, cov.float(), rtol=1e-4, atol=1e-5)


def test_the_image_keeps_the_magnitude_template():
    # logit(image) is the standardized inverse transform: its spectrum (away from the
    # self-conjugate columns that irfft2 drops the imaginary part of) is the template, scaled
    gens = [torch.Generator().manual_seed(3)]
    mag = torch.rand(2, 16, 9) + 0.5
    p = M.MacoParam(2, (16, 16), gens, spectrum=mag, color=None)
    img = p.image().detach().double()
    y = torch.log(img / (1 - img))[0]
    got = torch.fft.rfft2(y).abs()[:, :, 1:8]
    ratio = got / mag.double()[:, :, 1:8]
    assert (ratio.std() / ratio.mean()) < 1e-3


def test_maco_raises_the_objective_and_accumulates_transparency():
    m = _net()
    objs = [vis.channel("2", c) for c in range(3)]
    res = vis.maco_fv(m, objs, size=16, steps=12, transforms=None, progress=False)
    assert res.images.shape == (3, 3, 16, 16) and res.transparency.shape == (3, 3, 16, 16)
    assert (res.values[-1] > res.values[0]).all()
    assert (res.transparency >= 0).all() and (res.transparency.flatten(1).sum(1) > 0).all()
    # the batch does not change an objective's image (per-objective generators)
    chunks = vis.maco_fv(m, objs, size=16, steps=12, transforms=None, progress=False,
                         batch_size=2)
    torch.testing.assert_close(chunks.images, res.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunks.transparency, res.transparency, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 4, 13])
def test_any_channel_count(channels):
    m = _net(channels)
    x = torch.rand(3, channels, 12, 12)
    res = vis.maco_fv(m, [vis.class_logit(1)], size=12, steps=3, progress=False,
                      spectrum=M.image_spectrum(x), color=M.color_correlation(x))
    assert res.images.shape == (1, channels, 12, 12)
    r = vis.activation_maximization(m, [vis.class_logit(1)], size=12, steps=3, param="maco",
                                    progress=False)
    assert r.images.shape == (1, channels, 12, 12)


def test_spectrum_from_a_file_and_resized(tmp_path):
    spec = M.image_spectrum(torch.rand(4, 3, 20, 20))
    torch.save(spec, tmp_path / "s.pt")
    p = M.MacoParam(3, (10, 12), [torch.Generator().manual_seed(0)], spectrum=tmp_path / "s.pt")
    assert p.magnitude.shape == (3, 10, 7)


def test_bad_input():
    gens = [torch.Generator().manual_seed(0)]
    with pytest.raises(ValueError, match="spectrum: has 2 channels, the images 3"):
        M.MacoParam(3, (8, 8), gens, spectrum=torch.rand(2, 8, 5))
    with pytest.raises(ValueError, match="spectrum: expected"):
        M.MacoParam(3, (8, 8), gens, spectrum=torch.rand(8, 5))
    with pytest.raises(ValueError, match=r"color: expected a \(3, 3\) matrix"):
        M.MacoParam(3, (8, 8), gens, color=torch.eye(2))
    with pytest.raises(ValueError, match="images: no image given"):
        M.image_spectrum([])
    with pytest.raises(ValueError, match="size:"):
        M.power_law_spectrum(3, 0)
