"""Running ``cnnvis`` in-process and checking its output, shared by the CLI tests."""
import textwrap

from PIL import Image

from cnnvis_ext.cli import main

SUBCOMMANDS = ["demo", "train", "train-inverter", "kernels", "maps", "actmax", "accentuate",
               "facets", "invert", "deconv", "attribute", "evaluate", "bench"]

FACTORY_SRC = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    NOT_A_MODEL = 3
""")


def run(capsys, *argv):
    """``main(argv)`` with its exit status, stdout and stderr."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_ok(capsys, *argv):
    """``main(argv)``, which must succeed; its stdout."""
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    return out


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def assert_png(path):
    """``path`` is a PNG that decodes; its PIL image."""
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im


def train_checkpoint(path, epochs, channels):
    """Train a small cifar_cnn through the CLI; its checkpoint path."""
    rc = main(["train", "--epochs", str(epochs), "--channels", *map(str, channels), "--hidden",
               "16", "--quiet", "--checkpoint", str(path), "--device", "cpu"])
    assert rc == 0 and path.is_file()
    return path


def image_folder(root, classes=("a", "b"), per_class=5, size=(36, 28)):
    """A tiny folder dataset of class sub-folders of PNGs (resized to 32x32 when read)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root
