"""``cnnvis train``: the checkpoint and the training plots."""
from cnnvis_ext.train import load_checkpoint

from .helpers import assert_png, run_ok


def test_train_writes_checkpoint_and_plots(tmp_path, capsys):
    ck = tmp_path / "c.pt"
    out = run_ok(capsys, "train", "--epochs", "1", "--channels", "12", "--hidden", "0",
                 "--checkpoint", ck, "--plots", "--out", tmp_path / "plots", "--quiet",
                 "--device", "cpu")
    assert "test accuracy" in out and ck.is_file()
    for name in ("training_loss.png", "training_accuracy.png", "confusion_matrix.png"):
        assert_png(tmp_path / "plots" / name)
    model, ckpt = load_checkpoint(ck)
    assert [n for n, _ in model.named_children()] == ["conv1", "flatten", "fc"]
    assert ckpt["config"]["epochs"] == 1
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "confusion_matrix.png", "training_accuracy.png", "training_loss.png"]
