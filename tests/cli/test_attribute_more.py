"""``cnnvis attribute`` with the methods beyond the first five, and ``--target all``."""
import pytest

from cnnvis_ext.cli.figures import ALL_ATTRIBUTION_METHODS, MORE_ATTRIBUTION_METHODS

from .helpers import assert_one_line_error, assert_png, run, run_ok


@pytest.mark.parametrize("method", MORE_ATTRIBUTION_METHODS)
def test_attribute_new_methods(checkpoint, tmp_path, capsys, method):
    out = run_ok(capsys, "attribute", "--model", checkpoint, "--method", method,
                 "--num-images", "2", "--out", tmp_path, "--quiet")
    assert f"rows: image, {method} map, overlay" in out
    im = assert_png(tmp_path / f"attribute_{method}.png")
    assert im.width > im.height  # 3 columns, 2 rows


@pytest.mark.parametrize("method", ["saliency", "gradcam", "layercam", "ig"])
def test_target_all(checkpoint, tmp_path, capsys, method):
    out = run_ok(capsys, "attribute", "--model", checkpoint, "--method", method, "--target",
                 "all", "--num-images", "2", "--out", tmp_path, "--quiet")
    assert f"the {method} overlay for each of the 10 classes" in out
    im = assert_png(tmp_path / f"attribute_{method}_all.png")
    assert im.width > 4 * im.height  # 11 columns, 2 rows


def test_bad_target_and_method(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "attribute", "--model", checkpoint, "--target", "every",
                     "--out", tmp_path)
    assert_one_line_error(rc, err, "--target", "'all'")
    rc, _, err = run(capsys, "attribute", "--model", checkpoint, "--method", "gradcam++",
                     "--out", tmp_path)
    assert_one_line_error(rc, err, "--method")
    assert set(MORE_ATTRIBUTION_METHODS) < set(ALL_ATTRIBUTION_METHODS)
