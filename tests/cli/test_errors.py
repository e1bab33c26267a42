"""Errors a user can cause: one line on stderr, ``cnnvis <command>: error: ...``, exit status
1 (2 for usage errors), no traceback."""
import pytest
import torch

from cnnvis_ext.models import cifar_cnn

from .helpers import assert_one_line_error, run


def test_error_missing_model_file(tmp_path, capsys):
    rc, _, err = run(capsys, "kernels", "--model", tmp_path / "missing.pt")
    assert_one_line_error(rc, err, "cnnvis kernels: error:", "no such file", "missing.pt")
    assert rc == 1


def test_error_no_model_given(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "attribute")
    assert_one_line_error(rc, err, "no model given", "--model")


def test_error_missing_weights_file(user_module, tmp_path, capsys):
    rc, _, err = run(capsys, "maps", "--model", "my_cnnvis_models:make", "--weights",
                     tmp_path / "nope.pt")
    assert_one_line_error(rc, err, "--weights: no such file")


def test_error_state_dict_as_model(tmp_path, capsys):
    torch.save(cifar_cnn().state_dict(), tmp_path / "sd.pt")
    rc, _, err = run(capsys, "kernels", "--model", tmp_path / "sd.pt")
    assert_one_line_error(rc, err, "is a state_dict", "--weights")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    rc, _, err = run(capsys, "kernels", "--model", tmp_path / "junk.pt")
    assert_one_line_error(rc, err, "cannot read")


def test_error_unknown_name(capsys):
    rc, _, err = run(capsys, "kernels", "--model", "notamodelname")
    assert_one_line_error(rc, err, "'notamodelname' is not a file")


@pytest.mark.parametrize("sub,extra", [
    ("kernels", []), ("maps", ["--layers"]), ("actmax", []), ("invert", ["--layers"]),
    ("deconv", []), ("attribute", ["--method", "gradcam"]),
])
def test_error_unknown_layer_lists_valid_ones(checkpoint, capsys, tmp_path, sub, extra):
    flag = extra[-1] if extra and extra[-1] == "--layers" else "--layer"
    argv = [sub, "--model", checkpoint, "--out", tmp_path] + [e for e in extra if e != "--layers"]
    rc, _, err = run(capsys, *argv, flag, "conv9")
    assert_one_line_error(rc, err, "conv9", "Valid layers: conv1, conv2, flatten, fc1, relu, fc2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("sub", ["demo", "train", "kernels", "attribute"])
def test_error_cuda_absent(checkpoint, capsys, tmp_path, sub):
    extra = ["--out", tmp_path] + (["--model", checkpoint] if sub in ("kernels", "attribute") else [])
    rc, _, err = run(capsys, sub, "--device", "cuda", *extra)
    assert_one_line_error(rc, err, "--device cuda: CUDA is not available")


def test_error_bad_device_and_usage(capsys):
    rc, _, err = run(capsys, "train", "--device", "tpu")
    assert_one_line_error(rc, err, "--device")
    rc, _, err = run(capsys, "attribute", "--method", "magic")
    line = assert_one_line_error(rc, err, "--method")
    assert rc == 2 and "invalid choice" in line
    rc, _, err = run(capsys, "frobnicate")
    assert_one_line_error(rc, err, "invalid choice")
    rc, _, err = run(capsys, "train", "--epochs", "-1")
    assert_one_line_error(rc, err, "--epochs", "expected an int >= 0")
    rc, _, err = run(capsys, "train", "--batch-size", "0")
    assert_one_line_error(rc, err, "--batch-size", "expected a positive int")


def test_error_images_and_data(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "attribute", "--model", checkpoint, "--index", "100000")
    assert_one_line_error(rc, err, "--index: 100000 is out of range")
    rc, _, err = run(capsys, "attribute", "--model", checkpoint, "--data", tmp_path / "nodir")
    assert_one_line_error(rc, err, "data: no such folder")
    rc, _, err = run(capsys, "attribute", "--model", checkpoint, "--image", tmp_path / "no.png")
    assert_one_line_error(rc, err, "image: no such file")
    rc, _, err = run(capsys, "attribute", "--model", checkpoint, "--target", "10")
    assert_one_line_error(rc, err, "--target: 10 is out of range")
    rc, _, err = run(capsys, "train", "--data", tmp_path / "nodir")
    assert_one_line_error(rc, err, "data: no such folder")
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--layer", "conv2", "--units", "99")
    assert_one_line_error(rc, err, "99")
    rc, _, err = run(capsys, "demo", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "no such file")


def test_error_out_is_a_file(checkpoint, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, _, err = run(capsys, "kernels", "--model", checkpoint, "--out", tmp_path / "f")
    assert_one_line_error(rc, err, "--out:", "is not a folder")


def test_error_torchvision_name_without_weights(capsys):
    pytest.importorskip("torchvision")
    rc, _, err = run(capsys, "kernels", "--model", "vgg11")
    assert_one_line_error(rc, err, "never downloads", "--weights")


def test_error_checkpoint_of_another_architecture(checkpoint, tmp_path, capsys):
    """A checkpoint whose weights are another network's: the file and the first missing,
    unexpected or mismatched keys, in one line."""
    ck = torch.load(checkpoint, weights_only=True)
    other = cifar_cnn(channels=(4, 8), hidden=8).state_dict()
    ck["state_dict"] = other
    bad = tmp_path / "other.pt"
    torch.save(ck, bad)
    rc, _, err = run(capsys, "maps", "--model", bad, "--quiet", "--out", tmp_path)
    line = assert_one_line_error(rc, err, "other.pt", "does not fit")
    assert "unexpected" in line or "missing" in line or "shape mismatch" in line
    torch.save(other, tmp_path / "w.pt")
    rc, _, err = run(capsys, "maps", "--model", checkpoint, "--weights", tmp_path / "w.pt",
                     "--quiet", "--out", tmp_path)
    line = assert_one_line_error(rc, err, "--weights", "w.pt", "does not fit")
    assert "shape mismatch (file vs model)" in line or "missing" in line
