"""torchvision models for the agreement tests: random weights (seeded), randomized BatchNorm
statistics (so that a BatchNorm merged or skipped wrongly shows), eval mode."""
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
