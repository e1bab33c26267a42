"""``cnnvis accentuate`` (feature accentuation, caricatures) and ``cnnvis facets``
(multifaceted feature visualization)."""
import re

import pytest

from .helpers import assert_one_line_error, assert_png, run, run_ok


def _table_rows(report):
    """The data rows of the Markdown tables of ``report``."""
    return [l for l in report.splitlines() if l.startswith("| ") and not l.startswith("| image")
            and not l.startswith("| facet")]


@pytest.mark.parametrize("sub", ["accentuate", "facets"])
def test_help(capsys, sub):
    rc, out, _ = run(capsys, sub, "--help")
    assert rc == 0 and f"cnnvis {sub}" in out and "--device" in out and "--steps" in out


def test_accentuate_classes_and_channels(checkpoint, tmp_path, capsys):
    out = run_ok(capsys, "accentuate", "--model", checkpoint, "--num-images", "2", "--steps",
                 "3", "--out", tmp_path, "--quiet", "--device", "cpu")
    assert "feature accentuation of 2 images x 1 objectives" in out
    two_col = assert_png(tmp_path / "accentuate_classes.png").size
    report = (tmp_path / "accentuate_report.md").read_text()
    assert "in pixels" in report and len(_table_rows(report)) == 2
    run_ok(capsys, "accentuate", "--model", checkpoint, "--index", "0", "--index", "5",
           "--layer", "conv2", "--units", "0", "1", "3", "--reg-layer", "conv1", "--lam", "5",
           "--steps", "2", "--param", "pixel", "--out", tmp_path, "--quiet", "--device", "cpu")
    four_col = assert_png(tmp_path / "accentuate_conv2.png").size
    assert four_col[1] == two_col[1] and four_col[0] > 1.8 * two_col[0]  # image + 3 channels
    report = (tmp_path / "accentuate_report.md").read_text()
    assert "activations of conv1" in report and "lam 5.0" in report
    rows = _table_rows(report)
    assert len(rows) == 6 and rows[0].startswith("| test #0") and "| conv2:3 |" in rows[2]
    # the distance column holds numbers
    assert all(re.search(r"\| [0-9.e-]+ \|$", r) for r in rows)


def test_accentuate_is_reproducible(checkpoint, tmp_path, capsys):
    for d in ("a", "b"):
        run_ok(capsys, "accentuate", "--model", checkpoint, "--objective", "conv2:1",
               "--num-images", "2", "--steps", "2", "--seed", "3", "--out", tmp_path / d,
               "--quiet", "--device", "cpu")
    a = (tmp_path / "a" / "accentuate_objectives.png").read_bytes()
    assert a == (tmp_path / "b" / "accentuate_objectives.png").read_bytes()


def test_caricature(checkpoint, tmp_path, capsys):
    out = run_ok(capsys, "accentuate", "--model", checkpoint, "--caricature", "conv2",
                 "--num-images", "2", "--steps", "3", "--init", "image", "--out", tmp_path,
                 "--quiet", "--device", "cpu")
    assert "caricatures of what conv2 sees in 2 images" in out
    assert_png(tmp_path / "caricature_conv2.png")
    report = (tmp_path / "caricature_report.md").read_text()
    assert "start from image" in report and len(_table_rows(report)) == 2


def test_accentuate_errors(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "accentuate", "--model", checkpoint, "--caricature", "conv2",
                     "--objective", "conv2:0", "--steps", "1", "--out", tmp_path)
    assert_one_line_error(rc, err, "--caricature")
    rc, _, err = run(capsys, "accentuate", "--model", checkpoint, "--reg-layer", "nope",
                     "--steps", "1", "--out", tmp_path)
    assert_one_line_error(rc, err, "nope")
    rc, _, err = run(capsys, "accentuate", "--model", checkpoint, "--layer", "conv2", "--units",
                     "99", "--steps", "1", "--out", tmp_path)
    assert_one_line_error(rc, err, "--units: 99")
    rc, _, err = run(capsys, "accentuate", "--model", checkpoint, "--lam", "-1", "--out",
                     tmp_path)
    assert rc == 2 and "--lam" in err


def test_facets(checkpoint, tmp_path, capsys):
    out = run_ok(capsys, "facets", "--model", checkpoint, "--layer", "conv2", "--units", "0",
                 "2", "--facets", "3", "--top", "12", "--steps", "2", "--out", tmp_path,
                 "--quiet", "--device", "cpu")
    assert "conv2 unit 2: 3 facets of its top 12 test images" in out
    for u in (0, 2):
        w, h = assert_png(tmp_path / f"facets_conv2_unit{u}.png").size
        assert w > 2.5 * h  # three facets in a row
        assert_png(tmp_path / f"facets_conv2_unit{u}_clusters.png")
    report = (tmp_path / "facets_report.md").read_text()
    assert "## conv2 unit 0" in report and "## conv2 unit 2" in report
    rows = _table_rows(report)
    assert len(rows) == 6
    sizes = [int(r.split("|")[2]) for r in rows]
    assert sum(sizes[:3]) == 12 and sum(sizes[3:]) == 12
    assert sizes[:3] == sorted(sizes[:3], reverse=True)  # largest facet first


def test_facets_reproducible_and_errors(checkpoint, tmp_path, capsys):
    for d in ("a", "b"):
        run_ok(capsys, "facets", "--model", checkpoint, "--facets", "2", "--top", "8",
               "--steps", "2", "--batch-size", "16" if d == "a" else "64", "--out",
               tmp_path / d, "--quiet", "--device", "cpu")
    # default layer: the last convolution; default unit 0; the batch size changes nothing
    a = (tmp_path / "a" / "facets_report.md").read_text()
    assert a == (tmp_path / "b" / "facets_report.md").read_text()
    assert "## conv2 unit 0" in a
    rc, _, err = run(capsys, "facets", "--model", checkpoint, "--units", "50", "--out",
                     tmp_path)
    assert_one_line_error(rc, err, "--units: 50")
    rc, _, err = run(capsys, "facets", "--model", checkpoint, "--facets", "9", "--top", "4",
                     "--steps", "1", "--out", tmp_path, "--quiet")
    assert_one_line_error(rc, err, "facets")
    rc, _, err = run(capsys, "facets", "--model", checkpoint, "--layer", "nope", "--out",
                     tmp_path)
    assert_one_line_error(rc, err, "nope")
