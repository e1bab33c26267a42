"""``kernels``, ``maps``, ``invert`` and ``deconv`` on a trained checkpoint: exit status 0 and
the files each writes; the resumable ones do nothing when run again."""
from .helpers import assert_png, run_ok


def test_kernels(checkpoint, tmp_path, capsys):
    out = run_ok(capsys, "kernels", "--model", checkpoint, "--out", tmp_path, "--quiet")
    assert "conv1: 4 kernels of 3x3 (RGB)" in out
    im = assert_png(tmp_path / "kernels_conv1.png")
    run_ok(capsys, "kernels", "--model", checkpoint, "--layer", "conv2", "--out", tmp_path,
           "--quiet")
    im2 = assert_png(tmp_path / "kernels_conv2.png")  # one row per filter: 8 rows of 4 tiles
    assert im2.height > im2.width and im.size != im2.size


def test_maps(checkpoint, tmp_path, capsys):
    run_ok(capsys, "maps", "--model", checkpoint, "--index", "3", "--out", tmp_path, "--quiet")
    for name in ("maps_input0.png", "maps_input0_conv1.png", "maps_input0_conv2.png"):
        assert_png(tmp_path / name)


def test_invert_resumes(checkpoint, tmp_path, capsys):
    argv = ["invert", "--model", checkpoint, "--index", "0", "--layers", "conv1", "--steps", "2",
            "--out", tmp_path, "--quiet"]
    out = run_ok(capsys, *argv)
    assert "inverted 1 images at 1 layers" in out
    assert_png(tmp_path / "invert_input0.png")
    assert (tmp_path / "invert" / "input0.pt").is_file()
    stamp = (tmp_path / "invert_input0.png").stat().st_mtime_ns
    run_ok(capsys, *argv)  # the same job again: nothing recomputed
    assert (tmp_path / "invert_input0.png").stat().st_mtime_ns == stamp


def test_deconv_top_k_resumes(checkpoint, tmp_path, capsys):
    argv = ["deconv", "--model", checkpoint, "--units", "0", "1", "--top", "2", "--out", tmp_path,
            "--quiet"]
    run_ok(capsys, *argv)
    for u in (0, 1):
        for kind in ("patches", "projections"):
            assert_png(tmp_path / f"deconv_conv2_unit{u}_{kind}.png")
    assert "all 2 units already written; nothing to do" in run_ok(capsys, *argv)


def test_deconv_of_given_images(checkpoint, tmp_path, capsys):
    out = run_ok(capsys, "deconv", "--model", checkpoint, "--units", "0", "--index", "1",
                 "--out", tmp_path, "--quiet")
    assert "projections of the strongest activation of units 0..0 of conv2" in out
    assert_png(tmp_path / "deconv_input0_conv2.png")
