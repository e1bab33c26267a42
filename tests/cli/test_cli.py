"""The ``cnnvis`` command line, run in-process through ``main([...])``."""
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from cnnvis_ext import cli
from cnnvis_ext.cli import main
from cnnvis_ext.models import cifar_cnn

SUBCOMMANDS = ["demo", "train", "kernels", "maps", "actmax", "invert", "deconv", "attribute",
               "bench"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _vis_has(name):
    import cnnvis_ext.vis as vis

    return hasattr(vis, name)


def _ok_or_unavailable(rc, err, feature):
    """A subcommand either works, or says in one line that its feature is not available yet."""
    if rc == 0:
        return True
    line = assert_one_line_error(rc, err, "not available")
    assert feature in line
    return False


def _train_checkpoint(tmp_path_factory, name, epochs, channels):
    """Trains a small cifar_cnn through the CLI and returns its checkpoint path."""
    path = tmp_path_factory.mktemp(name) / f"{name}.pt"
    rc = main(["train", "--epochs", str(epochs), "--channels", *map(str, channels), "--hidden",
               "16", "--quiet", "--checkpoint", str(path), "--device", "cpu"])
    assert rc == 0 and path.is_file()
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _train_checkpoint(tmp_path_factory, "ckpt", 1, (4, 8))


# --------------------------------------------------------------------------- help

@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_of_every_subcommand(capsys, sub):
    rc, out, _ = run(capsys, sub, "--help")
    assert rc == 0
    assert f"cnnvis {sub}" in out and "--device" in out or sub == "bench" and "--quick" in out


def test_top_level_help_and_version(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and all(s in out for s in SUBCOMMANDS)
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and "cnnvis_ext" in out


def test_python_m_help():
    r = subprocess.run([sys.executable, "-m", "cnnvis_ext", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: cnnvis" in r.stdout and "attribute" in r.stdout


# --------------------------------------------------------------------------- train + views

def test_train_writes_checkpoint_and_plots(tmp_path, capsys):
    ck = tmp_path / "c.pt"
    rc, out, _ = run(capsys, "train", "--epochs", "1", "--channels", "12", "--hidden", "0",
                     "--checkpoint", ck, "--plots", "--out", tmp_path / "plots", "--quiet",
                     "--device", "cpu")
    assert rc == 0
    assert "test accuracy" in out and ck.is_file()
    for name in ("training_loss.png", "training_accuracy.png", "confusion_matrix.png"):
        Image.open(tmp_path / "plots" / name).load()
    from cnnvis_ext.train import load_checkpoint

    model, ckpt = load_checkpoint(ck)
    assert [n for n, _ in model.named_children()] == ["conv1", "flatten", "fc"]


def test_attribute_all_methods(checkpoint, tmp_path, capsys):
    for method in cli.ATTRIBUTION_METHODS:
        rc, out, err = run(capsys, "attribute", "--model", checkpoint, "--method", method,
                           "--num-images", "2", "--out", tmp_path, "--quiet")
        if _ok_or_unavailable(rc, err, method if method != "guided" else "guided"):
            im = Image.open(tmp_path / f"attribute_{method}.png")
            im.load()
            assert im.width > im.height  # 3 columns, 2 rows


def test_actmax_classes_and_channels(checkpoint, tmp_path, capsys):
    rc, out, err = run(capsys, "actmax", "--model", checkpoint, "--classes", "0", "3",
                       "--steps", "3", "--out", tmp_path, "--quiet")
    if _ok_or_unavailable(rc, err, "activation maximization"):
        Image.open(tmp_path / "actmax_classes.png").load()
        rc, out, err = run(capsys, "actmax", "--model", checkpoint, "--layer", "conv2",
                           "--units", "0", "1", "--steps", "2", "--param", "pixel",
                           "--out", tmp_path, "--quiet")
        assert rc == 0, err
        Image.open(tmp_path / "actmax_conv2.png").load()


def test_kernels_maps_invert_deconv(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "kernels", "--model", checkpoint, "--out", tmp_path, "--quiet")
    if _ok_or_unavailable(rc, err, "kernel"):
        Image.open(tmp_path / "kernels_conv1.png").load()
    rc, _, err = run(capsys, "maps", "--model", checkpoint, "--index", "3", "--out", tmp_path,
                     "--quiet")
    if _ok_or_unavailable(rc, err, "feature-map"):
        Image.open(tmp_path / "maps_input0_conv2.png").load()
    rc, _, err = run(capsys, "invert", "--model", checkpoint, "--index", "0", "--layers", "conv1",
                     "--steps", "2", "--out", tmp_path, "--quiet")
    if _ok_or_unavailable(rc, err, "inversion"):
        Image.open(tmp_path / "invert_input0.png").load()
    rc, _, err = run(capsys, "deconv", "--model", checkpoint, "--units", "0", "1", "--top", "2",
                     "--out", tmp_path, "--quiet")
    if _ok_or_unavailable(rc, err, "deconvnet"):
        Image.open(tmp_path / "deconv_conv2_unit1_projections.png").load()
    rc, _, err = run(capsys, "deconv", "--model", checkpoint, "--units", "0", "--index", "1",
                     "--out", tmp_path, "--quiet")
    if _ok_or_unavailable(rc, err, "deconvnet"):
        Image.open(tmp_path / "deconv_input0_conv2.png").load()


def test_data_folder_and_image_files(checkpoint, tmp_path, capsys):
    import numpy as np

    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 30, 3), 60 * i + 50, np.uint8)).save(
                tmp_path / "d" / c / f"{i}.png")
    rc, out, err = run(capsys, "attribute", "--model", checkpoint, "--data", tmp_path / "d",
                       "--num-images", "1", "--out", tmp_path / "o", "--quiet")
    assert rc == 0, err
    rc, out, err = run(capsys, "attribute", "--model", checkpoint, "--image",
                       tmp_path / "d" / "a" / "0.png", "--target", "7", "--out", tmp_path / "o",
                       "--quiet")
    assert rc == 0, err
    assert "0.png: saliency for class 7" in out


# --------------------------------------------------------------------------- user models

FACTORY_SRC = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    NOT_A_MODEL = 3
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_cnnvis_models.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_cnnvis_models", None)
    import my_cnnvis_models

    yield my_cnnvis_models
    sys.modules.pop("my_cnnvis_models", None)


def test_user_model_by_module_factory(user_module, tmp_path, capsys):
    torch.manual_seed(1)
    net = user_module.make()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    lm = cli.load_model("my_cnnvis_models:make", str(tmp_path / "w.pt"))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(lm.model(x), net.eval()(x))
    assert lm.in_channels == 3 and lm.input_size == 32
    rc, out, err = run(capsys, "attribute", "--model", "my_cnnvis_models:make", "--weights",
                       tmp_path / "w.pt", "--method", "gradcam", "--layer", "3",
                       "--num-images", "1", "--out", tmp_path / "o", "--quiet")
    assert rc == 0, err
    Image.open(tmp_path / "o" / "attribute_gradcam.png").load()
    # no weights: runs with the factory's weights and says so
    rc, out, err = run(capsys, "attribute", "--model", "my_cnnvis_models:make", "--num-images",
                       "1", "--out", tmp_path / "o", "--quiet")
    assert rc == 0 and "no --weights" in err
    # weights that do not fit
    torch.save(cifar_cnn().state_dict(), tmp_path / "other.pt")
    rc, _, err = run(capsys, "attribute", "--model", "my_cnnvis_models:make", "--weights",
                     tmp_path / "other.pt", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "--weights", "does not fit")
    rc, _, err = run(capsys, "attribute", "--model", "my_cnnvis_models:NOT_A_MODEL",
                     "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "not an nn.Module")
    rc, _, err = run(capsys, "attribute", "--model", "my_cnnvis_models:nope", "--out",
                     tmp_path / "o")
    assert_one_line_error(rc, err, "has no attribute 'nope'")
    rc, _, err = run(capsys, "attribute", "--model", "no_such_pkg_xyz.mod:make", "--out",
                     tmp_path / "o")
    assert_one_line_error(rc, err, "cannot import module 'no_such_pkg_xyz.mod'")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_user_model_by_torchscript_file(user_module, tmp_path, capsys):
    torch.manual_seed(2)
    net = user_module.make().eval()
    ts = tmp_path / "net.ts"
    torch.jit.script(net).save(str(ts))
    lm = cli.load_model(str(ts))
    assert lm.scripted
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(lm.model(x), net(x))
    rc, out, err = run(capsys, "attribute", "--model", ts, "--method", "saliency",
                       "--num-images", "2", "--out", tmp_path / "o", "--quiet")
    assert rc == 0, err
    Image.open(tmp_path / "o" / "attribute_saliency.png").load()
    rc, out, err = run(capsys, "actmax", "--model", ts, "--classes", "1", "--steps", "2",
                       "--out", tmp_path / "o", "--quiet")
    _ok_or_unavailable(rc, err, "activation maximization")
    rc, _, err = run(capsys, "attribute", "--model", ts, "--weights", tmp_path / "w.pt",
                     "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "TorchScript")
    rc, _, err = run(capsys, "kernels", "--model", ts, "--out", tmp_path / "o", "--quiet")
    if _ok_or_unavailable(rc, err, "kernel"):
        Image.open(tmp_path / "o" / "kernels_0.png").load()
    # layer-level views cannot hook into TorchScript modules: a clear error, not a wrong answer
    for argv in (["attribute", "--method", "guided"], ["attribute", "--method", "lrp"],
                 ["maps"], ["actmax", "--layer", "0"], ["deconv"], ["invert"]):
        rc, _, err = run(capsys, *argv, "--model", ts, "--out", tmp_path / "o")
        assert_one_line_error(rc, err, "TorchScript model supports only its output")


# --------------------------------------------------------------------------- errors

def test_error_missing_model_file(tmp_path, capsys):
    rc, _, err = run(capsys, "kernels", "--model", tmp_path / "missing.pt")
    assert_one_line_error(rc, err, "cnnvis kernels: error:", "no such file", "missing.pt")


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
    line = assert_one_line_error(rc, err, "conv9")
    if "not available" not in line:
        assert "Valid layers: conv1, conv2, flatten, fc1, relu, fc2" in line


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
    assert_one_line_error(rc, err, "--epochs")


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


def test_error_torchvision_name_without_weights(capsys):
    tv = pytest.importorskip("torchvision")  # noqa: F841
    rc, _, err = run(capsys, "kernels", "--model", "vgg11")
    assert_one_line_error(rc, err, "never downloads", "--weights")


def test_bench_errors(tmp_path, capsys):
    rc, _, err = run(capsys, "bench", "--bench-dir", tmp_path)
    assert_one_line_error(rc, err, "no bench_*.py scripts")
    (tmp_path / "bench_ok.py").write_text("import sys\nprint('| shape | ours |', sys.argv[1:])\n")
    (tmp_path / "bench_fail.py").write_text("import sys\nsys.exit(3)\n")
    rc = main(["bench", "--bench-dir", str(tmp_path), "--only", "ok"])
    assert rc == 0
    rc, _, err = run(capsys, "bench", "--bench-dir", tmp_path, "--only", "nothing")
    assert_one_line_error(rc, err, "no benchmark named nothing", "bench_ok")
    rc, out, err = run(capsys, "bench", "--bench-dir", tmp_path, "--only", "fail")
    assert_one_line_error(rc, err, "benchmark(s) failed: bench_fail")


def test_bench_runs_scripts_quick(tmp_path, capfd):
    (tmp_path / "bench_x.py").write_text("import sys\nprint('| shape | ours |', sys.argv[1:])\n")
    assert main(["bench", "--bench-dir", str(tmp_path)]) == 0
    out = capfd.readouterr().out
    assert "## bench_x" in out and "['--quick']" in out


# --------------------------------------------------------------------------- learned priors
# train-inverter, invert --learned, actmax --prior (Dosovitskiy & Brox; Nguyen et al.)

def _image_folder(root, classes=("a", "b"), per_class=5, size=(36, 28)):
    """A tiny folder dataset of class sub-folders of PNGs (resized to 32x32 when read)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def inverter_file(checkpoint, tmp_path_factory):
    """An inverter of the test checkpoint's conv2, trained by the CLI for 1 epoch on the digits."""
    path = tmp_path_factory.mktemp("inv") / "inv_conv2.pt"
    rc = main(["train-inverter", "--model", str(checkpoint), "--layer", "conv2", "--data",
               "digits", "--epochs", "1", "--batch-size", "128", "--out", str(path), "--quiet",
               "--device", "cpu"])
    assert rc == 0 and path.is_file()
    return path


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """A checkpoint whose conv2 has another width than the test checkpoint's (untrained)."""
    return _train_checkpoint(tmp_path_factory, "ckpt6", 0, (4, 6))


def test_train_inverter_help(capsys):
    rc, out, _ = run(capsys, "train-inverter", "--help")
    assert rc == 0 and "cnnvis train-inverter" in out
    for flag in ("--layer", "--data", "--out", "--epochs", "--batch-size", "--lr", "--loss",
                 "--device", "--seed", "--quiet"):
        assert flag in out
    rc, out, _ = run(capsys, "--help")
    assert "train-inverter" in out
    rc, out, _ = run(capsys, "invert", "--help")
    assert "--learned" in out
    rc, out, _ = run(capsys, "actmax", "--help")
    assert "--prior" in out


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

    data = _image_folder(tmp_path / "imgs")
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
