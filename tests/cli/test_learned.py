"""Learned priors through the CLI: ``train-inverter``, ``invert --learned`` and
``actmax --prior`` (Dosovitskiy & Brox; Nguyen et al.)."""
import pytest
import torch
from PIL import Image

from .helpers import assert_one_line_error, image_folder, run


def test_train_inverter_on_the_digits(checkpoint, inverter_file, capsys):
    from cnnvis_ext.train import load_checkpoint
    from cnnvis_ext.vis import UpConvInverter

    model, _ = load_checkpoint(checkpoint)
    inv = UpConvInverter.load(inverter_file, model=model.eval())
    assert inv.layer == "conv2" and inv.code_shape == (8, 8, 8) and inv.image_shape == (3, 32, 32)
    assert len(inv.history["loss"]) == 1 and int(inv.trained_on) == 1438
    # written atomically: no temporary file left beside it
    assert [f.name for f in inverter_file.parent.iterdir()] == [inverter_file.name]


def test_train_inverter_folder_data_feature_loss_and_defaults(checkpoint, tmp_path, capsys,
                                                              monkeypatch):
    from cnnvis_ext.vis import UpConvInverter

    data = image_folder(tmp_path / "imgs")
    (tmp_path / "o").mkdir()
    rc, out, err = run(capsys, "train-inverter", "--model", checkpoint, "--layer", "conv1",
                       "--data", data, "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
                       "--loss", "pixel+feature", "--width", "16", "--out", tmp_path / "o",
                       "--quiet", "--seed", "3")
    assert rc == 0, err
    assert "epoch 2/2" in out and "held-out pixel MSE" in out and "pixel+feature" in out
    path = tmp_path / "o" / "inverter_conv1.pt"  # --out a folder: <folder>/inverter_<layer>.pt
    assert f"wrote {path}" in out
    inv = UpConvInverter.load(path)
    assert inv.layer == "conv1" and inv.width == 16 and len(inv.history["loss"]) == 2
    # no --layer: the last convolution; no --out: ./inverter_<layer>.pt
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "train-inverter", "--model", checkpoint, "--data", data,
                       "--epochs", "0", "--quiet")
    assert rc == 0, err
    assert UpConvInverter.load(tmp_path / "inverter_conv2.pt").layer == "conv2"


def test_invert_learned_writes_pngs_and_tensors(checkpoint, inverter_file, tmp_path, capsys):
    from cnnvis_ext.data import load_dataset
    from cnnvis_ext.train import load_checkpoint
    from cnnvis_ext.vis import UpConvInverter, invert_learned

    rc, out, err = run(capsys, "train-inverter", "--model", checkpoint, "--layer", "conv1",
                       "--data", "digits", "--epochs", "0", "--out", tmp_path / "inv1.pt",
                       "--quiet")
    assert rc == 0, err
    rc, out, err = run(capsys, "invert", "--model", checkpoint, "--learned", tmp_path / "inv1.pt",
                       "--learned", inverter_file, "--index", "0", "--index", "5",
                       "--out", tmp_path / "o", "--quiet")
    assert rc == 0, err
    assert "learned reconstructions from conv1, conv2" in out and "reconstructions/s" in out
    for i in range(2):
        with Image.open(tmp_path / "o" / f"invert_learned_input{i}.png") as im:
            im.load()
            assert im.width > 2.5 * im.height  # original + 2 reconstructions in one row
    res = torch.load(tmp_path / "o" / "invert_learned.pt", weights_only=True)
    assert res["layers"] == ["conv1", "conv2"]
    assert res["reconstructions"].shape == (2, 2, 3, 32, 32)
    # the same reconstructions as the library call
    model, _ = load_checkpoint(checkpoint)
    x = load_dataset().test_images[[0, 5]]
    inv = UpConvInverter.load(inverter_file)
    torch.testing.assert_close(res["reconstructions"][:, 1], invert_learned(inv, model.eval(), x))
    torch.testing.assert_close(res["images"], x)
    # --layers may name the inverters' layers
    rc, out, err = run(capsys, "invert", "--model", checkpoint, "--learned", inverter_file,
                       "--layers", "conv2", "--image", tmp_path / "o" / "invert_learned_input0.png",
                       "--out", tmp_path / "o2", "--quiet")
    assert rc == 0, err
    assert (tmp_path / "o2" / "invert_learned_input0.png").is_file()


def test_actmax_prior_classes_and_job_mode(checkpoint, inverter_file, tmp_path, capsys):
    rc, out, err = run(capsys, "actmax", "--model", checkpoint, "--prior", inverter_file,
                       "--classes", "0", "3", "--steps", "3", "--out", tmp_path, "--quiet")
    assert rc == 0, err
    assert "generator prior of conv2" in out
    with Image.open(tmp_path / "actmax_classes_prior_conv2.png") as im:
        im.load()
        assert im.width > 1.5 * im.height  # 2 tiles side by side
    # --param generator is the same as leaving --param out; the same seed gives the same image
    rc, out, err = run(capsys, "actmax", "--model", checkpoint, "--prior", inverter_file,
                       "--param", "generator", "--classes", "0", "3", "--steps", "3",
                       "--out", tmp_path / "b", "--quiet")
    assert rc == 0, err
    a = Image.open(tmp_path / "actmax_classes_prior_conv2.png").tobytes()
    assert Image.open(tmp_path / "b" / "actmax_classes_prior_conv2.png").tobytes() == a
    # channels of a layer, and the resumable job mode
    rc, out, err = run(capsys, "actmax", "--model", checkpoint, "--prior", inverter_file,
                       "--layer", "conv1", "--units", "0", "1", "--steps", "2",
                       "--out", tmp_path, "--quiet")
    assert rc == 0, err
    Image.open(tmp_path / "actmax_conv1_prior_conv2.png").load()
    rc, out, err = run(capsys, "actmax", "--model", checkpoint, "--prior", inverter_file,
                       "--layers", "conv1", "--units", "0", "1", "--steps", "2",
                       "--out", tmp_path / "job", "--quiet")
    assert rc == 0, err
    Image.open(tmp_path / "job" / "actmax" / "conv1" / "c0001.png").load()
    assert "generator parameterization" in (tmp_path / "job" / "actmax_report.md").read_text()


def test_learned_prior_errors(checkpoint, other_checkpoint, inverter_file, user_module,
                              tmp_path, capsys):
    o = ["--out", tmp_path / "o"]
    # a missing inverter file
    rc, _, err = run(capsys, "invert", "--model", checkpoint, "--learned", tmp_path / "no.pt", *o)
    assert_one_line_error(rc, err, "cnnvis invert: error:", "--learned: no such file", "no.pt")
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--prior", tmp_path / "no.pt", *o)
    assert_one_line_error(rc, err, "cnnvis actmax: error:", "--prior: no such file")
    # a file that is not an inverter
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--prior", checkpoint, *o)
    assert_one_line_error(rc, err, "--prior:", "is not a cnnvis_ext inverter file")
    # an inverter that does not match the model (UpConvInverter.check_model)
    for sub, flag in (("invert", "--learned"), ("actmax", "--prior")):
        rc, _, err = run(capsys, sub, "--model", other_checkpoint, flag, inverter_file, *o)
        assert_one_line_error(rc, err, f"{flag}: inv_conv2.pt does not fit the model",
                              "(8, 8, 8)", "(6, 8, 8)")
    # ... or a model without the inverter's layer
    torch.save(user_module.make().state_dict(), tmp_path / "w.pt")
    rc, _, err = run(capsys, "invert", "--model", "my_cnnvis_models:make", "--weights",
                     tmp_path / "w.pt", "--learned", inverter_file, *o)
    assert_one_line_error(rc, err, "--learned: inv_conv2.pt inverts layer 'conv2', which the "
                                   "model does not have")
    # an unknown layer lists the valid ones
    rc, _, err = run(capsys, "train-inverter", "--model", checkpoint, "--layer", "conv9",
                     "--out", tmp_path / "x.pt")
    assert_one_line_error(rc, err, "cnnvis train-inverter: error:", "'conv9' is not a layer",
                          "Valid layers: conv1, conv2, flatten, fc1, relu, fc2")
    assert not (tmp_path / "x.pt").exists()
    # options that contradict the inverter
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--prior", inverter_file,
                     "--param", "pixel", *o)
    assert_one_line_error(rc, err, "--param pixel", "drop --param")
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--param", "generator", *o)
    assert_one_line_error(rc, err, "--param generator needs --prior")
    rc, _, err = run(capsys, "actmax", "--model", checkpoint, "--prior", inverter_file,
                     "--size", "64", *o)
    assert_one_line_error(rc, err, "--size: the --prior generator makes 32x32 images")
    rc, _, err = run(capsys, "invert", "--model", checkpoint, "--learned", inverter_file,
                     "--layers", "conv1", *o)
    assert_one_line_error(rc, err, "--layers: with --learned the layers are the inverters' "
                                   "(conv2)")
    rc, _, err = run(capsys, "invert", "--model", checkpoint, "--learned", inverter_file,
                     "--input-size", "64", *o)
    assert_one_line_error(rc, err, "--input-size: the --learned inverters were trained on 32x32")
    # bad training options and outputs, refused before any training
    rc, _, err = run(capsys, "train-inverter", "--model", checkpoint, "--lr", "0")
    assert rc == 2 and "--lr: expected a positive number" in assert_one_line_error(rc, err)
    rc, _, err = run(capsys, "train-inverter", "--model", checkpoint, "--loss", "perceptual")
    assert rc == 2 and "invalid choice" in assert_one_line_error(rc, err, "--loss")
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(capsys, "train-inverter", "--model", checkpoint, "--out",
                     tmp_path / "afile" / "inv.pt")
    assert_one_line_error(rc, err, "--out:", "is not a folder")
    rc, _, err = run(capsys, "train-inverter", "--model", checkpoint, "--data", tmp_path / "nodir")
    assert_one_line_error(rc, err, "data: no such folder")
    rc, _, err = run(capsys, "train-inverter", "--model", tmp_path / "missing.pt")
    assert_one_line_error(rc, err, "no such file", "missing.pt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_learned_priors_refuse_torchscript(user_module, inverter_file, tmp_path, capsys):
    ts = tmp_path / "net.ts"
    torch.jit.script(user_module.make().eval()).save(str(ts))
    for argv in (["train-inverter", "--layer", "0"], ["invert", "--learned", inverter_file],
                 ["actmax", "--prior", inverter_file]):
        rc, _, err = run(capsys, *argv, "--model", ts, "--out", tmp_path / "o")
        assert_one_line_error(rc, err, "TorchScript model supports only its output")
