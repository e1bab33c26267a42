"""The CAM family against the peers: Grad-CAM (layer) and Guided Grad-CAM against captum;
Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Score-CAM, Ablation-CAM and Eigen-CAM against
pytorch-grad-cam 1.5.7 (its raw maps, and its final min-max-scaled, cv2-resized maps).

Where pytorch-grad-cam departs from the papers, the comparison undoes its departure (and
says how): Grad-CAM++'s 1e-6 in the denominator (logits scaled by 1e6 make it negligible),
Score-CAM's softmax over channels of the target logit (its target set to the
log-probability), Eigen-CAM's arbitrary sign (compared up to sign), Ablation-CAM's
``min - 1e7`` for layers with negative values (layers that end in a ReLU).
"""
import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_ext import vis
from cnnvis_ext.vis import cam as cam_mod

from captum.attr import GuidedGradCam, LayerGradCam
from pytorch_grad_cam import (AblationCAM, EigenCAM, GradCAMPlusPlus, HiResCAM, LayerCAM,
                              ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from .zoo_models import assert_matches_finite_differences, randomized_model


def tiny(dtype=torch.float64):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    return m.to(dtype).eval()


@functools.lru_cache(maxsize=None)
def tv(name, dtype=torch.float64):
    """A torchvision model with random weights and BatchNorm statistics, in-place ReLUs off
    (captum's hooks cannot take them; the maths is the same)."""
    return randomized_model(name, dtype, inplace_relu=False, num_classes=10)


# (model, layer, image size): the layer's output is at least 2 x 2
CASES = {
    "tiny": (lambda: tiny(), "4", 12),
    "resnet18": (lambda: tv("resnet18"), "layer3", 64),
    "mobilenet_v2": (lambda: tv("mobilenet_v2", torch.float32), "features.18", 64),
    "densenet121": (lambda: tv("densenet121", torch.float32), "features.denseblock3", 64),
}


def images(n, size, dtype):
    return torch.rand(n, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(4))


def _minmax(cam):
    cam = cam - cam.amin((-2, -1), keepdim=True)
    return cam / (1e-7 + cam.amax((-2, -1), keepdim=True))


def minmax_resize(cam, size):
    """What pytorch-grad-cam does to a map: min-max scaling (with 1e-7), the resize (cv2's
    INTER_LINEAR upsampling is bilinear with half-pixel centres, align_corners=False), and
    min-max scaling again (its aggregation over target layers)."""
    return _minmax(F.interpolate(_minmax(cam)[:, None].float(), size=size, mode="bilinear",
                                 align_corners=False)[:, 0])


def run_lib(cls, model, layer, x, targets, **kw):
    """pytorch-grad-cam's final maps and its raw (pre-ReLU, unscaled) ones."""
    obj = cls(model=model, target_layers=[model.get_submodule(layer)], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = obj(x, targets)
        acts = obj.activations_and_grads.activations[0].numpy()
        grads = (obj.activations_and_grads.gradients[0].numpy()
                 if obj.activations_and_grads.gradients else None)
        raw = None
        if cls not in (ScoreCAM, AblationCAM):
            raw = obj.get_cam_image(x, model.get_submodule(layer), targets, acts, grads, False)
    obj.activations_and_grads.release()
    return torch.from_numpy(final), None if raw is None else torch.from_numpy(np.asarray(raw))


class Scaled(nn.Module):
    def __init__(self, m, s):
        super().__init__()
        self.m, self.s = m, s

    def forward(self, x):
        return self.m(x) * self.s


GRADIENT_CAMS = [(vis.grad_cam_pp, GradCAMPlusPlus), (vis.xgrad_cam, XGradCAM),
                 (vis.layer_cam, LayerCAM), (vis.hires_cam, HiResCAM)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ours,lib", GRADIENT_CAMS, ids=lambda f: getattr(f, "__name__", ""))
def test_gradient_cams_equal_pytorch_grad_cam(case, ours, lib):
    build, layer, size = CASES[case]
    model = build()
    dtype = next(model.parameters()).dtype
    if ours is vis.grad_cam_pp:
        # the paper has no epsilon; scaling the logits by 1e6 makes the library's 1e-6
        # negligible (in float64: g^3 of the scaled gradients is beyond float32's precision)
        model = Scaled(copy.deepcopy(model).double(), 1e6)
        dtype = torch.float64
        layer = "m." + layer
    x = images(2, size, dtype)
    t = torch.tensor([1, 3])
    final, raw = run_lib(lib, model, layer, x, [ClassifierOutputTarget(int(c)) for c in t])
    got_raw = ours(model, layer, x, t, relu=False, upsample=False)
    # float64 leaves the libraries' epsilons (XGrad-CAM's 1e-7 in the channel sum) visible
    # at the 1e-6 level
    f32 = dtype == torch.float32
    tol = dict(rtol=1e-3, atol=1e-5 * float(got_raw.abs().max())) if f32 \
        else dict(rtol=1e-5, atol=1e-7 * float(got_raw.abs().max()))
    torch.testing.assert_close(got_raw, raw.to(dtype), **tol)
    got = ours(model, layer, x, t, upsample=False)
    torch.testing.assert_close(minmax_resize(got, (size, size)), final,
                               rtol=1e-3 if f32 else 1e-4, atol=5e-4 if f32 else 1e-5)
    # the default output: the ReLU'd raw map upsampled to the input
    torch.testing.assert_close(ours(model, layer, x, t),
                               F.interpolate(got[:, None], size=(size, size), mode="bilinear",
                                             align_corners=False)[:, 0])


@pytest.mark.parametrize("case", ["tiny", "resnet18", "mobilenet_v2"])
def test_eigen_cam_equals_pytorch_grad_cam_up_to_sign(case):
    build, layer, size = CASES[case]
    model = build()
    x = images(2, size, next(model.parameters()).dtype)
    _, raw = run_lib(EigenCAM, model, layer, x, None)
    got = vis.eigen_cam(model, layer, x, relu=False, upsample=False)
    for i in range(2):  # the principal component's sign is arbitrary
        s = 1.0 if float((got[i] * raw[i].to(got.dtype)).sum()) >= 0 else -1.0
        torch.testing.assert_close(got[i].float(), s * raw[i], rtol=1e-4, atol=1e-5)


SCORE_CASES = {
    "tiny": (lambda: tiny(torch.float32), "4", 12),
    "resnet18": (lambda: tv("resnet18", torch.float32), "layer3", 32),
    # an inner layer of a dense block: the ablated stack cannot join the concatenation of
    # the earlier features, so Ablation-CAM falls back to repeating the image
    "densenet121": (lambda: tv("densenet121", torch.float32),
                    "features.denseblock3.denselayer1.relu2", 32),
}


@pytest.mark.parametrize("case", list(SCORE_CASES))
def test_score_and_ablation_cam_equal_pytorch_grad_cam(case):
    build, layer, size = SCORE_CASES[case]
    model = build()
    x = images(1, size, torch.float32)
    t = torch.tensor([2])
    # Score-CAM: the paper's weights are the target's softmax probability; the library's
    # softmax over channels of log p gives p_k / sum_j p_j, the same map after min-max
    if case != "densenet121":  # (time: 128 forward passes of densenet121 per library)
        log_p = [lambda o, c=int(c): torch.log_softmax(o, -1)[c] for c in t]
        final, _ = run_lib(ScoreCAM, model, layer, x, log_p)
        got = vis.score_cam(model, layer, x, t, upsample=False, batch_size=50)
        torch.testing.assert_close(minmax_resize(got, (size, size)), final, rtol=1e-4, atol=2e-5)
    final, _ = run_lib(AblationCAM, model, layer, x, [ClassifierOutputTarget(int(c)) for c in t])
    got = vis.ablation_cam(model, layer, x, t, upsample=False, batch_size=50)
    torch.testing.assert_close(minmax_resize(got, (size, size)), final, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("case", ["tiny", "resnet18", "densenet121"])
def test_grad_cam_and_guided_grad_cam_equal_captum(case):
    """(densenet121's last ReLU is a functional call, which captum's guided backprop leaves
    alone and ours does not: Guided Grad-CAM is compared on the others.)"""
    build, layer, size = CASES[case]
    model = build()
    dtype = next(model.parameters()).dtype
    x = images(2, size, dtype)
    t = torch.tensor([0, 4])
    mod = model.get_submodule(layer)
    ref = LayerGradCam(model, mod).attribute(x, target=t, relu_attributions=False)[:, 0]
    torch.testing.assert_close(vis.grad_cam(model, layer, x, t, relu=False, upsample=False), ref)
    if case == "densenet121":
        return
    # the paper upsamples bilinearly; captum's default is nearest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GuidedGradCam(model, mod).attribute(x, target=t, interpolate_mode="bilinear")
    torch.testing.assert_close(vis.guided_grad_cam(model, layer, x, t), ref)


ALL_CAMS = [vis.grad_cam, vis.grad_cam_pp, vis.xgrad_cam, vis.layer_cam, vis.hires_cam,
            vis.score_cam, vis.ablation_cam, vis.eigen_cam, vis.guided_grad_cam]


@pytest.mark.parametrize("fn", ALL_CAMS, ids=lambda f: f.__name__)
def test_all_targets_in_one_pass_equal_single_calls(fn):
    m = tiny()
    x = images(3, 12, torch.float64)
    tt = torch.tensor([[0, 1, 4], [4, 3, 3], [2, 0, 1]])
    got = fn(m, "4", x, tt)
    for j in range(3):
        torch.testing.assert_close(got[:, j], fn(m, "4", x, tt[:, j]))
    every = fn(m, "4", x, "all")
    assert every.shape[:2] == (3, 5)
    torch.testing.assert_close(every[:, 3], fn(m, "4", x, 3))


def test_gradient_cams_use_one_forward_and_one_backward(monkeypatch):
    m = tiny()
    x = images(2, 12, torch.float64)
    calls = []
    m.register_forward_hook(lambda *a: calls.append("forward"))
    seen = []
    real = torch.autograd.grad

    def spy(*a, **k):
        seen.append(k.get("is_grads_batched", False))
        return real(*a, **k)
    monkeypatch.setattr(torch.autograd, "grad", spy)
    vis.layer_cam(m, "4", x, torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]))
    assert calls == ["forward"] and seen == [True]


def test_create_graph_maps_are_differentiable():
    m = tiny()
    x = images(2, 12, torch.float64)
    t = torch.tensor([[1, 2], [3, 0]])
    w = m[3].weight

    def loss():
        return (vis.grad_cam_pp(m, "4", x, t, create_graph=True) ** 2).sum()
    (g,) = torch.autograd.grad(loss(), w)
    assert g.abs().sum() > 0
    assert_matches_finite_differences(loss, w, g, [(0, 0, 1, 1), (3, 2, 0, 2), (7, 5, 2, 1)])
    # without create_graph the maps carry no graph and the parameters come back trainable
    assert not vis.grad_cam(m, "4", x, t).requires_grad
    assert all(p.requires_grad for p in m.parameters())


def test_ablation_shares_the_prefix_on_chains(monkeypatch):
    m = tiny(torch.float32)
    x = images(2, 12, torch.float32)
    calls = []
    m[0].register_forward_hook(lambda mod, i, o: calls.append(o.shape[0]))
    vis.ablation_cam(m, "4", x, 1, batch_size=4)
    # one capture pass of both images, then one single-image prefix per chunk of 4 channels
    assert calls == [2] + [1] * 4


def test_bad_inputs():
    m = tiny()
    x = images(2, 12, torch.float64)
    for fn in ALL_CAMS:
        with pytest.raises(ValueError, match="layer: .* needs a 4-D"):
            fn(m, "7", x, 0)
        with pytest.raises(KeyError, match="Valid layers"):
            fn(m, "nope", x, 0)
        with pytest.raises(ValueError, match="target"):
            fn(m, "4", x, "every")
    for fn in (vis.grad_cam_pp, vis.score_cam, vis.ablation_cam):
        with pytest.raises(ValueError, match="target: class 9 is out of range"):
            fn(m, "4", x, 9)
    for fn in (vis.score_cam, vis.ablation_cam):
        with pytest.raises(ValueError, match="batch_size"):
            fn(m, "4", x, 0, batch_size=0)
    assert set(cam_mod.CAM_METHODS.values()) <= set(ALL_CAMS)
