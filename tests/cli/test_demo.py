"""``cnnvis demo`` end to end with a tiny budget: the report and every image it links."""
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from cnnvis_ext.cli import main

CHROMIUM = "/usr/bin/chromium"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.captions, self.skipped = [], [], [], 0
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
            assert a.get("alt"), "every image needs alt text"
        elif tag == "a" and not a.get("href", "").startswith("#"):
            self.links.append(a["href"])
        elif tag == "figcaption":
            self._in_caption = True
        elif tag == "p" and a.get("class") == "skipped":
            self.skipped += 1

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption and data.strip():
            self.captions.append(data.strip())


class _Sections(HTMLParser):
    """``{section title: {"images": [...], "text": "notes and captions", "skipped": bool}}``."""

    def __init__(self):
        super().__init__()
        self.sections, self._cur, self._tag = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._tag = tag
        if tag == "section":
            self._cur = {"title": "", "images": [], "text": "", "skipped": False}
        elif self._cur is not None and tag == "img":
            self._cur["images"].append(a["src"])
        elif self._cur is not None and tag == "p" and a.get("class") == "skipped":
            self._cur["skipped"] = True

    def handle_endtag(self, tag):
        if tag == "section" and self._cur is not None:
            self.sections[self._cur.pop("title")] = self._cur
            self._cur = None
        self._tag = None

    def handle_data(self, data):
        if self._cur is None:
            return
        if self._tag == "h2":
            self._cur["title"] += data
        else:
            self._cur["text"] += data + " "


def _section(sections, prefix):
    found = [t for t in sections if t.startswith(prefix)]
    assert found, f"no section {prefix!r} in the report: {list(sections)}"
    sec = sections[found[0]]
    assert not sec["skipped"], (found[0], sec["text"][:500])
    return sec


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--out", str(out), "--epochs", "1", "--steps", "2", "--images", "2",
               "--max-units", "3", "--top", "2", "--quiet", "--device", "cpu"])
    assert rc == 0
    return out


def test_demo_writes_index_and_every_linked_image(demo_out):
    index = demo_out / "index.html"
    assert index.is_file()
    p = _Links()
    p.feed(index.read_text(encoding="utf-8"))
    assert len(p.images) >= 8
    assert len(p.captions) == len(p.images)
    for src in set(p.images) | set(p.links):
        f = demo_out / src
        assert f.is_file(), src
        with Image.open(f) as im:
            im.load()
            assert im.format == "PNG" and im.width > 0 and im.height > 0
    for name in ("training_loss.png", "training_accuracy.png", "confusion_matrix.png",
                 "actmax_classes.png", "attribution.png",
                 # learned priors: inverters of the last two conv layers, generator-prior
                 # actmax beside the input-space one, learned beside optimized inversion
                 "inverter_training.png", "actmax_classes_generator.png", "invert_learned_0.png",
                 "invert_learned_1.png", "invert_learned_test.png",
                 # the residual network: LRP and Grad-CAM, deconvnet through the skips
                 "residual_attribution.png", "residual_deconv_block3.png"):
        assert name in p.images
    # no temporary files left behind by the atomic writes
    assert not [f for f in os.listdir(demo_out) if f.startswith(".")]
    assert (demo_out / "checkpoint.pt").is_file()
    text = index.read_text(encoding="utf-8")
    assert "test accuracy" in text and "Kernels of the first layer" in text
    assert p.skipped == 0
    assert "Learned inverters of conv2 and conv3" in text and "learned generator prior" in text
    assert "Learned inversion beside optimization" in text
    assert "A residual network with BatchNorm" in text and "outputs equal" in text


def test_demo_saves_inverters_usable_by_the_cli(demo_out, tmp_path, capsys):
    """The demo's inverters (1 epoch with --epochs 1) load for its checkpoint and drive
    `cnnvis invert --learned` and `cnnvis actmax --prior`."""
    from cnnvis_ext.train import load_checkpoint
    from cnnvis_ext.vis import UpConvInverter

    model, _ = load_checkpoint(demo_out / "checkpoint.pt")
    for layer in ("conv2", "conv3"):
        inv = UpConvInverter.load(demo_out / f"inverter_{layer}.pt", model=model)
        assert inv.layer == layer and len(inv.history["loss"]) == 1
    ck, inv3 = str(demo_out / "checkpoint.pt"), str(demo_out / "inverter_conv3.pt")
    assert main(["invert", "--model", ck, "--learned", inv3, "--num-images", "2",
                 "--out", str(tmp_path), "--quiet"]) == 0
    assert main(["actmax", "--model", ck, "--prior", inv3, "--classes", "1", "--steps", "2",
                 "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "invert_learned_input1.png").is_file()
    assert (tmp_path / "actmax_classes_prior_conv3.png").is_file()


def test_demo_reuses_checkpoint(demo_out, tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--checkpoint", str(demo_out / "checkpoint.pt"),
               "--steps", "1", "--images", "1", "--max-units", "1", "--top", "1",
               "--inverter-epochs", "0", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "loaded" in out and "inverter conv2 epoch" not in out  # untrained decoders
    assert (tmp_path / "index.html").is_file() and not (tmp_path / "checkpoint.pt").exists()


def test_demo_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f), "--epochs", "0"]) == 1
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_report_loads_in_headless_chromium(demo_out, tmp_path):
    """The page loads in a real browser and every <img> decodes (naturalWidth > 0)."""
    # A copy of the page with a script that lists images that did not decode in <title>.
    page = demo_out / "index.html"
    probe = demo_out / "_probe.html"
    html = page.read_text(encoding="utf-8").replace(
        "</body>",
        "<script>window.addEventListener('load', () => { const bad = [...document.images]"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));"
        " document.title = 'IMAGES ' + document.images.length + ' BAD [' + bad.join(',') + ']';"
        " });</script></body>")
    probe.write_text(html, encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    try:
        r = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                           text=True, timeout=120)
        shot = tmp_path / "shot.png"
        r2 = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900",
                             page.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import re

    m = re.search(r"<title>IMAGES (\d+) BAD \[(.*?)\]</title>", r.stdout)
    assert m, r.stdout[:2000]
    assert int(m.group(1)) >= 8 and m.group(2) == "", m.group(0)
    assert r2.returncode == 0 and shot.is_file(), r2.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size[0] > 0


#: the sections of issues 17-19: title prefix -> the images each must show
TRUST_SECTIONS = {
    "Attribution beyond the first five": ["attribution_more.png",
                                          "residual_attribution_more.png"],
    "How far to trust these maps": [
        "trust_deletion.png", "trust_insertion.png", "trust_ranking.png",
        "trust_residual_deletion.png", "trust_residual_insertion.png",
        "trust_residual_ranking.png", "trust_sanity_table.png", "trust_sanity_maps.png"],
    "Feature visualization quality": ["fv_quality_classes.png", "fv_quality_table.png",
                                      "fv_maco_transparency.png"],
    "Past activation maximization": ["frontier_accentuation.png", "frontier_facets.png"],
}


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_demo_shows_every_attribution_method_how_far_to_trust_them_and_fv_quality(demo_out):
    from cnnvis_ext.cli.figures import ALL_ATTRIBUTION_METHODS
    from cnnvis_ext.metrics import randomization_order
    from cnnvis_ext.models import cifar_cnn

    p = _Sections()
    p.feed((demo_out / "index.html").read_text(encoding="utf-8"))
    secs = {k: _section(p.sections, k) for k in TRUST_SECTIONS}
    for title, images in TRUST_SECTIONS.items():
        assert set(images) <= set(secs[title]["images"]), (title, secs[title]["images"])
    # label_grid cells: 32 px tiles at scale 4 (3 for the sanity maps) + 4 px padding
    # every method beside the image, one row per test image (--images 2)
    n = len(ALL_ATTRIBUTION_METHODS)
    assert n == 15
    for f in ("attribution_more.png", "residual_attribution_more.png"):
        assert _size(demo_out / f) == ((n + 1) * 132 + 4, 2 * 146 + 4), f
    # the randomized maps beside the originals: one row per method, original + each layer
    layers = randomization_order(cifar_cnn())
    assert _size(demo_out / "trust_sanity_maps.png") == ((len(layers) + 1) * 100 + 4,
                                                         n * 114 + 4)
    # the numbers are in the page too: every method ranked on both networks, every method's
    # sanity check, every parameterization's transferability and plausibility
    text = secs["How far to trust these maps"]["text"]
    for net in ("the survey's network", "the residual network"):
        ranked = text.split(f"Ranking on {net} (best first): ")[1].split(". ")[0]
        assert sorted(r.rsplit(" ", 1)[0] for r in ranked.split(", ")) == sorted(
            ALL_ATTRIBUTION_METHODS), ranked
    sanity = text.split("Rank correlation with every layer randomized: ")[1]
    assert all(f"{m} " in sanity for m in ALL_ATTRIBUTION_METHODS)
    fv = secs["Feature visualization quality"]["text"]
    quality = fv.split("Transferability / plausibility: ")[1]
    for param in ("pixel", "fourier", "maco", "generator conv2", "generator conv3"):
        assert f"{param} " in quality, quality
    assert "the residual network (trained independently above)" in fv
    # 5 parameterizations x 10 classes; MACO: images, transparency, both together
    assert _size(demo_out / "fv_quality_classes.png") == (10 * 132 + 4, 5 * 146 + 4)
    assert _size(demo_out / "fv_maco_transparency.png") == (10 * 132 + 4, 3 * 146 + 4)
    # accentuation: test images, accentuated, caricatures (--images 2); facets: means + images
    assert _size(demo_out / "frontier_accentuation.png") == (2 * 132 + 4, 3 * 146 + 4)
    facets = secs["Past activation maximization"]
    assert _size(demo_out / "frontier_facets.png")[1] == 2 * 146 + 4
    assert "Accentuation: distance to the original" in facets["text"]


def test_fv_quality_trains_a_second_cnn_without_the_residual_network():
    """Without the residual network (its section failed), transferability and plausibility
    are measured in a second cifar_cnn trained with another seed by the demo's helper."""
    from types import SimpleNamespace

    import torch

    from cnnvis_ext.cli.demo_trust import _second_network
    from cnnvis_ext.data import load_dataset

    data = load_dataset(None, progress=False)
    d = SimpleNamespace(residual=None, args=SimpleNamespace(epochs=0, seed=3),
                        dev=torch.device("cpu"), model_kwargs=dict(num_classes=data.num_classes, in_channels=3,
                                          input_size=32), data=data, progress=False)
    other, layer, desc = _second_network(d)
    assert layer == "relu" and "seed 4" in desc
    assert other(data.test_images[:2]).shape == (2, data.num_classes)
    d.residual = other
    assert _second_network(d)[0] is other


def test_report_table_and_many_curves():
    """The report's helpers of the trust section: a table as a PNG, a legend for 15 series."""
    from cnnvis_ext.report import plot_curves, plot_table

    im = plot_table(["method", "AUC"], [["a", 0.5], ["b", 0.25]], title="t",
                    best=[None, "lower"])
    assert im.width > 50 and im.height > 3 * 20
    with pytest.raises(ValueError, match="rows"):
        plot_table(["a", "b"], [["x"]])
    series = {f"m{i}": [i / 15, 1.0] for i in range(15)}
    assert plot_curves(series, legend="right").size == (560 + 150, max(340, 28 + 16 * 15 + 8))
    with pytest.raises(ValueError, match="legend"):
        plot_curves(series, legend="left")
