"""Fixtures of the CLI tests: small checkpoints and an inverter trained through the CLI once
per session, and a user module with a model factory."""
import sys

import pytest

from cnnvis_ext.cli import main

from .helpers import FACTORY_SRC, train_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """cifar_cnn with conv1 (4 channels) and conv2 (8), trained for 1 epoch on the digits."""
    return train_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt.pt", 1, (4, 8))


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory):
    """A checkpoint whose conv2 has another width than the test checkpoint's (untrained)."""
    return train_checkpoint(tmp_path_factory.mktemp("ckpt6") / "ckpt6.pt", 0, (4, 6))


@pytest.fixture(scope="session")
def inverter_file(checkpoint, tmp_path_factory):
    """An inverter of the test checkpoint's conv2, trained by the CLI for 1 epoch on the digits."""
    path = tmp_path_factory.mktemp("inv") / "inv_conv2.pt"
    rc = main(["train-inverter", "--model", str(checkpoint), "--layer", "conv2", "--data",
               "digits", "--epochs", "1", "--batch-size", "128", "--out", str(path), "--quiet",
               "--device", "cpu"])
    assert rc == 0 and path.is_file()
    return path


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``my_cnnvis_models`` on sys.path, with ``make()`` (a small CNN) and ``NOT_A_MODEL``."""
    (tmp_path / "my_cnnvis_models.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_cnnvis_models", None)
    import my_cnnvis_models

    yield my_cnnvis_models
    sys.modules.pop("my_cnnvis_models", None)
