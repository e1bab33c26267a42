"""``cnnvis attribute``: every method, images from a folder and from files."""
import numpy as np
import pytest
from PIL import Image

from cnnvis_ext.cli import ATTRIBUTION_METHODS

from .helpers import assert_png, run_ok


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_attribute_every_method(checkpoint, tmp_path, capsys, method):
    out = run_ok(capsys, "attribute", "--model", checkpoint, "--method", method,
                 "--num-images", "2", "--out", tmp_path, "--quiet")
    assert f"rows: image, {method} map, overlay" in out
    im = assert_png(tmp_path / f"attribute_{method}.png")
    assert im.width > im.height  # 3 columns, 2 rows


def test_data_folder_and_image_files(checkpoint, tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 30, 3), 60 * i + 50, np.uint8)).save(
                tmp_path / "d" / c / f"{i}.png")
    run_ok(capsys, "attribute", "--model", checkpoint, "--data", tmp_path / "d",
           "--num-images", "1", "--out", tmp_path / "o", "--quiet")
    assert_png(tmp_path / "o" / "attribute_saliency.png")
    out = run_ok(capsys, "attribute", "--model", checkpoint, "--image",
                 tmp_path / "d" / "a" / "0.png", "--target", "7", "--out", tmp_path / "o",
                 "--quiet")
    assert "0.png: saliency for class 7" in out
