"""``--model`` forms other than a checkpoint: ``package.module:factory`` with ``--weights``,
and TorchScript files (output-level views only)."""
import pytest
import torch

from cnnvis_ext.cli import load_model
from cnnvis_ext.models import cifar_cnn

from .helpers import assert_one_line_error, assert_png, run, run_ok


def test_user_model_by_module_factory(user_module, tmp_path, capsys):
    torch.manual_seed(1)
    net = user_module.make()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    lm = load_model("my_cnnvis_models:make", str(tmp_path / "w.pt"))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(lm.model(x), net.eval()(x))
    assert lm.in_channels == 3 and lm.input_size == 32
    run_ok(capsys, "attribute", "--model", "my_cnnvis_models:make", "--weights",
           tmp_path / "w.pt", "--method", "gradcam", "--layer", "3", "--num-images", "1",
           "--out", tmp_path / "o", "--quiet")
    assert_png(tmp_path / "o" / "attribute_gradcam.png")
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
    lm = load_model(str(ts))
    assert lm.scripted
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(lm.model(x), net(x))
    run_ok(capsys, "attribute", "--model", ts, "--method", "saliency", "--num-images", "2",
           "--out", tmp_path / "o", "--quiet")
    assert_png(tmp_path / "o" / "attribute_saliency.png")
    run_ok(capsys, "actmax", "--model", ts, "--classes", "1", "--steps", "2",
           "--out", tmp_path / "o", "--quiet")
    assert_png(tmp_path / "o" / "actmax_classes.png")
    run_ok(capsys, "kernels", "--model", ts, "--out", tmp_path / "o", "--quiet")
    assert_png(tmp_path / "o" / "kernels_0.png")
    rc, _, err = run(capsys, "attribute", "--model", ts, "--weights", tmp_path / "w.pt",
                     "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "TorchScript")
    # layer-level views cannot hook into TorchScript modules: a clear error, not a wrong answer
    for argv in (["attribute", "--method", "guided"], ["attribute", "--method", "lrp"],
                 ["maps"], ["actmax", "--layer", "0"], ["deconv"], ["invert"]):
        rc, _, err = run(capsys, *argv, "--model", ts, "--out", tmp_path / "o")
        assert_one_line_error(rc, err, "TorchScript model supports only its output")
