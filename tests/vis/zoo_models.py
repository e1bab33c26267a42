"""Helpers of the agreement tests: torchvision models with random weights (seeded) and
randomized BatchNorm statistics (so that a BatchNorm merged or skipped wrongly shows), in eval
mode; and a finite-difference check of a gradient."""
import warnings

import torch
from torch import nn


def randomized_model(name: str, dtype=torch.float64, *, bn_stats: bool = True,
                     inplace_relu: bool = True, **kwargs) -> nn.Module:
    """``torchvision.models.<name>(weights=None, **kwargs)`` seeded, its BatchNorm running
    statistics drawn from a fixed generator; ``inplace_relu=False`` turns in-place ReLUs off
    (captum's hooks cannot take them; the maths is the same)."""
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = getattr(torchvision.models, name)(weights=None, **kwargs)
    randomize_batchnorm_stats(m, enabled=bn_stats)
    if not inplace_relu:
        for mod in m.modules():
            if isinstance(mod, (nn.ReLU, nn.ReLU6)):
                mod.inplace = False
    return m.to(dtype).eval()


def randomize_batchnorm_stats(model: nn.Module, seed: int = 1, enabled: bool = True) -> None:
    """Running means ~ N(0, 0.1) and variances ~ U(0.5, 1.5) for every BatchNorm2d."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules() if enabled else ():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)


def assert_matches_finite_differences(loss, w: torch.Tensor, g: torch.Tensor, indices,
                                      h: float = 1e-6) -> None:
    """``g`` (the autograd gradient of ``loss()`` w.r.t. ``w``) equals the central difference
    at each of ``indices``, to 1e-5 relative (float64)."""
    for idx in indices:
        with torch.no_grad():
            old = w[idx].item()
            w[idx] = old + h
            up = loss().item()
            w[idx] = old - h
            down = loss().item()
            w[idx] = old
        assert abs((up - down) / (2 * h) - g[idx].item()) <= 1e-5 * (1 + abs(g[idx].item()))
