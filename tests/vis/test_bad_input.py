"""Bad and edge input to the vis API: a clear error naming the argument, never a silently
wrong answer; the defaults work on the package's own network."""
import pytest
import torch
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext.models import cifar_cnn


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()


X = torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=float("inf")), ValueError, "lr: expected a finite"),
    (dict(lr=float("nan")), ValueError, "lr: expected a finite"),
    (dict(lr=-1.0), ValueError, "lr: expected a positive"),
    (dict(steps=2.5), TypeError, "steps: expected an int"),
    (dict(steps=-1), ValueError, "steps: expected an int >= 0"),
    (dict(images_per_objective=True), TypeError, "images_per_objective"),
])
def test_activation_maximization_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        vis.activation_maximization(net(), [vis.class_logit(0)], size=8, **{"steps": 1, **kw})


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=float("inf")), ValueError, "lr: expected a finite"),
    (dict(steps=2.5), TypeError, "steps: expected an int"),
    (dict(lambda_tv=float("nan")), ValueError, "lambda_tv"),
    (dict(momentum=1.0), ValueError, "momentum"),
])
def test_invert_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        vis.invert(net(), "0", X, **{"steps": 1, **kw})


def test_saliency_arguments():
    with pytest.raises(ValueError, match="noise_level: expected a finite"):
        vis.saliency(net(), X, 0, smoothgrad_samples=2, noise_level=float("nan"))
    with pytest.raises(TypeError, match="smoothgrad_samples: expected an int"):
        vis.saliency(net(), X, 0, smoothgrad_samples=2.5)
    with pytest.raises(ValueError, match="batch_size"):
        vis.saliency(net(), X, 0, batch_size=0)


@pytest.mark.parametrize("call", [
    lambda m, x: vis.saliency(m, x, 0), lambda m, x: vis.guided_backprop(m, x, 0),
    lambda m, x: vis.grad_cam(m, "0", x, 0), lambda m, x: vis.lrp(m, x, 0),
    lambda m, x: vis.deconvnet(m, "1", x), lambda m, x: vis.invert(m, "0", x, steps=1),
    lambda m, x: vis.feature_maps(m, x),
])
def test_integer_and_wrong_channel_images_are_refused(call):
    m = net()
    with pytest.raises(TypeError, match=r"image(s)?: expected a floating-point tensor.*torch.uint8"):
        call(m, (X * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"image(s)?: the model's first convolution takes 3 "
                                         r"channels, got images of shape \(2, 1, 8, 8\)"):
        call(m, X[:, :1])


@pytest.mark.parametrize("call", [
    lambda m, x: vis.saliency(m, x, 0), lambda m, x: vis.guided_backprop(m, x, 0),
    lambda m, x: vis.grad_cam(m, "0", x, 0), lambda m, x: vis.grad_cam_pp(m, "0", x, 0),
    lambda m, x: vis.integrated_gradients(m, x, 0, steps=2),
    lambda m, x: vis.occlusion(m, x, 0, window=4), lambda m, x: vis.score_cam(m, "0", x, 0),
    lambda m, x: vis.lrp(m, x, 0),
])
def test_images_of_a_size_the_model_cannot_take_are_named(call):
    # the linear head takes 8x8 inputs: 12x12 fails inside it ("mat1 and mat2 ..."), which the
    # methods report as a problem of the images, with their shape
    with pytest.raises(ValueError, match=r"images: the model cannot take the images of "
                                         r"\(C, H, W\) = \(3, 12, 12\).*inside the model: "
                                         r"mat1 and mat2"):
        call(net(), torch.rand(2, 3, 12, 12))


def test_default_transforms_work_on_a_fixed_size_model():
    """cifar_cnn has a fully connected head: the transformed (enlarged) images are resized
    back to the size it takes."""
    m = cifar_cnn().eval()
    res = vis.activation_maximization(m, [vis.class_logit(0), vis.class_logit(3)], size=32,
                                      steps=3)
    assert res.images.shape == (2, 3, 32, 32) and torch.isfinite(res.values).all()
    # a model that takes any size keeps the enlarged images (Lucid's behaviour)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    seen = []
    conv[0].register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[-1]))
    vis.activation_maximization(conv, [vis.channel("3", 0)], size=16, steps=1)
    assert seen[-1] > 16


def test_a_scripted_model_runs_and_its_size_errors_are_named():
    m = torch.jit.script(net())  # a ScriptModule takes no forward hooks
    torch.testing.assert_close(vis.saliency(m, X, 0), vis.saliency(net(), X, 0))
    with pytest.raises(ValueError, match="images: the model cannot take the images given"):
        vis.saliency(m, torch.rand(2, 3, 12, 12), 0)
