"""Every verb on torchvision architectures given by name with a local --weights file (random
weights saved by the test; nothing is downloaded), at 64 px and at the default 224 px, with
small budgets (one or two images, two steps)."""
import os
import warnings

import pytest
import torch
from PIL import Image

from .helpers import run


def _torchvision():
    try:
        import torchvision
        return torchvision
    except Exception as e:  # pragma: no cover - depends on the environment
        if os.environ.get("CI"):
            pytest.fail(f"torchvision must be importable in CI: {e}", pytrace=False)
        pytest.skip(f"torchvision is not importable: {e}", allow_module_level=True)


torchvision = _torchvision()


@pytest.fixture(scope="module")
def weights(request, tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = getattr(torchvision.models, request.param)(weights=None)
    path = tmp_path_factory.mktemp("tv") / f"{request.param}.pt"
    torch.save(m.state_dict(), path)
    return request.param, path


def _png(path):
    im = Image.open(path)
    im.load()
    return im


@pytest.mark.parametrize("weights,size", [("resnet18", 64), ("mobilenet_v2", 64),
                                          ("resnet18", 224)], indirect=["weights"])
def test_every_verb_on_a_torchvision_model(weights, size, tmp_path, capsys):
    name, path = weights
    model = ["--model", name, "--weights", path, "--device", "cpu", "--quiet"]
    if size != 224:
        model += ["--input-size", size]
    img = ["--num-images", "1" if size == 224 else "2"]
    for method in ["saliency", "guided", "deconvnet", "lrp", "gradcam"]:
        rc, _, err = run(capsys, "attribute", *model, *img, "--method", method, "--out", tmp_path)
        assert rc == 0, f"attribute --method {method}: {err}"
        _png(tmp_path / f"attribute_{method}.png")
    for argv in (["kernels"], ["maps", *img], ["actmax", "--classes", "0", "1", "--steps", "2"],
                 ["invert", *img, "--steps", "2"], ["deconv", *img, "--top", "2",
                                                     "--max-units", "2"]):
        rc, _, err = run(capsys, *argv, *model, "--out", tmp_path)
        assert rc == 0, f"{argv[0]}: {err}"
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    for prefix in ("kernels_", "maps_", "actmax_", "invert", "deconv_"):
        assert any(p.startswith(prefix) for p in pngs), (prefix, pngs)
