"""``cnnvis actmax``: classes, channels of a layer, and the resumable job mode."""
import torch

from .helpers import assert_one_line_error, assert_png, run, run_ok


def test_actmax_classes_and_channels(checkpoint, tmp_path, capsys):
    out = run_ok(capsys, "actmax", "--model", checkpoint, "--classes", "0", "3", "--steps", "3",
                 "--out", tmp_path, "--quiet")
    assert "activation maximization of 2 objectives (class 0, class 3)" in out
    assert_png(tmp_path / "actmax_classes.png")
    run_ok(capsys, "actmax", "--model", checkpoint, "--layer", "conv2", "--units", "0", "1",
           "--steps", "2", "--param", "pixel", "--out", tmp_path, "--quiet")
    assert_png(tmp_path / "actmax_conv2.png")
    run_ok(capsys, "actmax", "--model", checkpoint, "--objective", "conv1:0", "--objective",
           "logit:2", "--steps", "2", "--out", tmp_path, "--quiet")
    assert_png(tmp_path / "actmax_objectives.png")


def test_actmax_job_mode_one_image_per_channel(checkpoint, tmp_path, capsys):
    argv = ["actmax", "--model", checkpoint, "--layers", "conv1,conv2", "--units", "0", "1",
            "2", "--steps", "2", "--batch-size", "2", "--out", tmp_path, "--quiet"]
    run_ok(capsys, *argv)
    for layer in ("conv1", "conv2"):
        for c in range(3):
            assert_png(tmp_path / "actmax" / layer / f"c{c:04d}.png")
        assert_png(tmp_path / f"actmax_{layer}.png")
        # channels 0-1 and 2 are two work units of at most --batch-size channels
        pieces = sorted(p.name for p in (tmp_path / "actmax" / layer).glob("*.pt"))
        assert pieces == ["c0000-0001.pt", "c0002-0002.pt"]
    report = (tmp_path / "actmax_report.md").read_text()
    assert "| conv1 | 3 | actmax_conv1.png |" in report and "fourier parameterization" in report
    saved = torch.load(tmp_path / "actmax" / "conv2" / "c0000-0001.pt", weights_only=True)
    assert saved["channels"] == [0, 1] and saved["images"].shape == (2, 3, 32, 32)


def test_actmax_maco_with_a_spectrum_file(checkpoint, tmp_path, capsys):
    from cnnvis_ext import vis

    spec = tmp_path / "spectrum.pt"
    torch.save(vis.image_spectrum(torch.rand(4, 3, 32, 32)), spec)
    run_ok(capsys, "actmax", "--model", checkpoint, "--classes", "1", "--steps", "3",
           "--param", "maco", "--spectrum", spec, "--out", tmp_path, "--quiet")
    assert_png(tmp_path / "actmax_classes.png")
    run_ok(capsys, "actmax", "--model", checkpoint, "--layers", "conv1", "--units", "0",
           "--steps", "2", "--param", "maco", "--spectrum", "digits", "--out", tmp_path / "j",
           "--quiet")
    report = (tmp_path / "j" / "actmax_report.md").read_text()
    assert "maco parameterization" in report


def test_actmax_spectrum_errors(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--classes", "1", "--steps", "1",
                     "--spectrum", "digits", "--out", tmp_path)
    assert_one_line_error(rc, err, "--spectrum: the magnitude of --param maco")
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--classes", "1", "--steps", "1",
                     "--param", "maco", "--spectrum", tmp_path / "nope.pt", "--out", tmp_path)
    assert_one_line_error(rc, err, "--spectrum: no such file")
