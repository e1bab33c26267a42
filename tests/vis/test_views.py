import os

import numpy as np
import pytest
import torch
from PIL import Image
import torch.nn.functional as F
from torch import nn

import cnnvis_ext
from cnnvis_ext import vis


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("ran past the deepest requested layer")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3), nn.ReLU(), Boom())


def test_feature_maps():
    m = net()
    x = torch.rand(2, 3, 10, 10)
    maps = vis.feature_maps(m, x, ["0", "3"])
    assert set(maps) == {"0", "3"}
    with torch.no_grad():
        ref0 = m[0](x)
        ref3 = m[3](m[2](torch.relu(ref0)))
    # '0' is captured before the in-place ReLU that follows it
    torch.testing.assert_close(maps["0"], ref0)
    torch.testing.assert_close(maps["3"], ref3)
    one = vis.feature_maps(m, x[0], "3")
    assert one["3"].shape == (1, 5, 3, 3)
    with pytest.raises(KeyError, match="Valid layers: 0, 1, 2, 3, 4, 5"):
        vis.feature_maps(m, x, ["conv1"])
    with pytest.raises(ValueError, match="image"):
        vis.feature_maps(m, torch.rand(10, 10), "0")


def test_feature_maps_all_leaves_and_fused():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    x = torch.rand(1, 3, 8, 8)
    maps = vis.feature_maps(m, x)
    assert list(maps) == ["0", "1", "2", "3"] and maps["3"].shape == (1, 64)
    f = cnnvis_ext.fuse(m, inplace=False)
    torch.testing.assert_close(vis.feature_maps(f, x, "2")["2"], maps["2"])


def test_kernels():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Conv2d(4, 6, 3))
    k0 = vis.kernels(m, "0")
    assert k0.shape == (4, 3, 5, 5)
    assert torch.allclose(k0.flatten(1).amin(1), torch.zeros(4)) and torch.allclose(k0.flatten(1).amax(1), torch.ones(4))
    w = m[0].weight.detach()
    torch.testing.assert_close(k0[1], (w[1] - w[1].min()) / (w[1].max() - w[1].min()))
    k2 = vis.kernels(m, "2", normalize=False)
    assert k2.shape == (24, 1, 3, 3)
    torch.testing.assert_close(k2[4 * 2 + 3, 0], m[2].weight[2, 3].detach())
    assert vis.make_grid(k2, nrow=4).shape == (1, 6 * 5 + 2, 4 * 5 + 2)
    with pytest.raises(ValueError, match="layer: '1'"):
        vis.kernels(m, "1")
    f = cnnvis_ext.fuse(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert vis.kernels(f, "0").shape == (4, 3, 3, 3)


def test_make_grid():
    t = torch.arange(5 * 3 * 2 * 2, dtype=torch.float32).reshape(5, 3, 2, 2)
    g = vis.make_grid(t, nrow=2, padding=1, pad_value=0.5)
    assert g.shape == (3, 3 * 3 + 1, 2 * 3 + 1)
    torch.testing.assert_close(g[:, 1:3, 4:6], t[1])
    torch.testing.assert_close(g[:, 7:9, 1:3], t[4])
    assert g[0, 0, 0] == 0.5 and g[0, 7, 5] == 0.5  # padding and the empty last cell
    gt = vis.make_grid(t, normalize="tile", padding=0)
    assert gt.shape == (3, 2, 10)
    assert gt[:, :, 2:4].min() == 0 and gt[:, :, 2:4].max() == 1
    ga = vis.make_grid(t, normalize="all", padding=0)
    assert ga.min() == 0 and ga.max() == 1
    assert vis.make_grid(torch.rand(3, 4, 4)).shape == (1, 8, 20)
    with pytest.raises(ValueError, match="normalize"):
        vis.make_grid(t, normalize="yes")
    with pytest.raises(ValueError, match="nrow"):
        vis.make_grid(t, nrow=0)
    with pytest.raises(ValueError, match="tensor"):
        vis.make_grid(torch.rand(2, 2, 2, 2, 2))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_save_image_roundtrip(tmp_path, ext):
    img = torch.rand(3, 9, 7)
    p = vis.save_image(img, tmp_path / f"a{ext}")
    arr = np.asarray(Image.open(p))
    assert arr.shape == (9, 7, 3)
    if ext == ".png":
        assert np.array_equal(arr, vis.to_uint8(img).numpy())
    assert sorted(os.listdir(tmp_path)) == [f"a{ext}"]  # no temporary file left behind
    vis.save_image(torch.rand(5, 1, 4, 4), tmp_path / "grid.png", nrow=3, padding=1)
    assert Image.open(tmp_path / "grid.png").size == (3 * 5 + 1, 2 * 5 + 1)
    vis.save_image(torch.rand(6, 6), tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "L"


def test_save_image_atomic_replace_and_errors(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    vis.save_image(torch.zeros(3, 4, 4), p)
    before = p.read_bytes()
    from PIL import Image as PILImage

    def broken(self, fp, format=None, **kw):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(PILImage.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        vis.save_image(torch.ones(3, 4, 4), p)
    monkeypatch.undo()
    assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["x.png"]
    with pytest.raises(ValueError, match="path"):
        vis.save_image(torch.zeros(3, 4, 4), tmp_path / "x.unknownext")
    with pytest.raises(ValueError, match="tensor"):
        vis.save_image(torch.zeros(4), tmp_path / "y.png")  # (2 channels: a channel grid now)


def test_colormaps_and_overlay():
    v = torch.linspace(0, 1, 11).reshape(1, 11)
    for name in vis.COLORMAPS:
        c = vis.colormap(v, name)
        assert c.shape == (3, 1, 11) and c.min() >= 0 and c.max() <= 1
    jet = vis.colormap(torch.tensor([[0.0, 0.5, 1.0]]), "jet")[:, 0].T
    torch.testing.assert_close(jet, torch.tensor([[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]]))
    bwr = vis.colormap(torch.tensor([[0.0, 0.5, 1.0]]), "bwr")[:, 0].T
    torch.testing.assert_close(bwr, torch.tensor([[0.0, 0, 1], [1, 1, 1], [1, 0, 0]]))
    attr = torch.randn(2, 3, 4, 4)
    h = vis.heatmap(attr)
    assert h.shape == (2, 3, 4, 4)
    hs = vis.heatmap(attr, reduce="sum", signed=True)
    assert hs.shape == (2, 3, 4, 4)
    img = torch.rand(2, 3, 8, 8)
    o = vis.overlay(img, attr, alpha=0.25)
    assert o.shape == (2, 3, 8, 8) and o.min() >= 0 and o.max() <= 1
    o0 = vis.overlay(img, attr, alpha=0.0)
    torch.testing.assert_close(o0, img)
    cam = torch.rand(2, 8, 8)
    torch.testing.assert_close(vis.overlay(img, cam, alpha=1.0), vis.heatmap(cam))
    with pytest.raises(ValueError, match="cmap"):
        vis.colormap(v, "viridis")
    with pytest.raises(ValueError, match="alpha"):
        vis.overlay(img, attr, alpha=2)
    with pytest.raises(ValueError, match="reduce"):
        vis.heatmap(attr, reduce="median")


def test_feature_maps_of_every_leaf_skips_modules_never_called():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.unused = nn.Conv2d(4, 4, 3)   # defined, never called
            self.act = nn.ReLU(inplace=True)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.act(self.conv(x)))

    m = Net().eval()
    x = torch.randn(2, 3, 10, 10)
    maps = vis.feature_maps(m, x)
    assert list(maps) == ["conv", "act", "pool"]
    y = m.conv(x)
    torch.testing.assert_close(maps["conv"], y)   # not rectified by the in-place ReLU after it
    torch.testing.assert_close(maps["act"], y.relu())
    torch.testing.assert_close(maps["pool"], F.max_pool2d(y.relu(), 2))
    with pytest.raises(RuntimeError, match="layers: .*unused"):
        vis.feature_maps(m, x, ["conv", "unused"])


# ------------------------------------------------------------ any channel count

@pytest.mark.parametrize("c", [2, 4, 13])
def test_save_image_shows_other_channel_counts_as_a_channel_grid(tmp_path, c):
    from PIL import Image

    x = torch.rand(2, c, 5, 6)
    path = vis.save_image(x, tmp_path / "g.png", nrow=2, padding=1)
    img = Image.open(path)
    assert img.mode == "L"  # grey tiles, not RGBA for 4 channels
    strip = c * 6 + c - 1
    assert img.size == (2 * (strip + 1) + 1, 5 + 2)
    arr = torch.from_numpy(__import__("numpy").asarray(img)).float() / 255
    # channel k of image 0 sits at column 1 + k * 7
    for k in range(c):
        torch.testing.assert_close(arr[1:6, 1 + k * 7:1 + k * 7 + 6], x[0, k], atol=1 / 255,
                                   rtol=0)
    single = vis.save_image(x[1], tmp_path / "s.png")
    assert Image.open(single).size == (strip, 5)


def test_channel_views_rgba_and_rgb(tmp_path):
    from PIL import Image

    x = torch.rand(1, 4, 4, 4)
    assert Image.open(vis.save_image(x[0], tmp_path / "a.png", channels="rgba")).mode == "RGBA"
    with pytest.raises(ValueError, match="view: 'rgba' needs 4 channels"):
        vis.save_image(torch.rand(1, 5, 4, 4), tmp_path / "b.png", channels="rgba")
    with pytest.raises(ValueError, match="view: expected"):
        vis.save_image(torch.rand(1, 5, 4, 4), tmp_path / "b.png", channels="false-colour")
    # 6 channels that are 2 independent signals mixed: the RGB projection keeps both (its first
    # two components span them) and its third is flat
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 2, 8, 8, generator=g)
    mix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5], [2.0, 0.1], [0.3, 0.3]])
    x6 = torch.einsum("dc,nchw->ndhw", mix, s)
    from cnnvis_ext.vis.views import channel_view

    rgb = channel_view(x6, "rgb")
    assert rgb.shape == (2, 3, 8, 8) and rgb.min() >= 0 and rgb.max() <= 1
    basis = torch.stack([rgb[:, 0].flatten(), rgb[:, 1].flatten(), torch.ones(128)], 1)
    for k in range(2):  # each source is an affine function of the first two components
        coef = torch.linalg.lstsq(basis, s[:, k].flatten()[:, None]).solution
        torch.testing.assert_close(basis @ coef, s[:, k].flatten()[:, None], atol=1e-4, rtol=0)
