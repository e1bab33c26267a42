"""Helpers for addressing layers of any nn.Module by their ``named_modules()`` name.

Shared by the visualization loops, the deconvnet and the command line.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["get_layer", "layer_names", "model_device_dtype", "capture", "StopForward",
           "forward_until"]


def layer_names(model: nn.Module) -> List[str]:
    """Every addressable layer name of ``model`` (``named_modules()`` order, root excluded)."""
    return [n for n, _ in model.named_modules() if n]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name``; a KeyError lists the valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"layer: expected a layer name (str), got {type(name).__name__}")
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    valid = layer_names(model)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"layer: {name!r} is not a layer of {type(model).__name__}.{hint} "
                   f"Valid layers: {', '.join(valid)}")


def model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter or buffer (CPU/float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


class StopForward(Exception):
    """Raised by a hook to stop a forward pass once every needed activation is captured."""


def _first_tensor(out):
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"layer output of type {type(out).__name__} is not a tensor")


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], stop: bool = False, protect: bool = False):
    """Record the outputs of ``layers`` during forward passes run inside the block.

    Yields a dict ``name -> Tensor`` filled by forward hooks (the first tensor
    of a tuple output; for a module called more than once, its first call). With ``stop=True`` the forward pass raises
    :class:`StopForward` as soon as the last of ``layers`` has produced its
    output, so nothing above the deepest needed layer is computed; use
    :func:`forward_until` to run it. With ``protect=True`` the model goes on
    with a copy of each captured output, so an in-place module after it
    (``ReLU(inplace=True)``, ``out += identity``) cannot change the recorded
    activation, which keeps its autograd graph.
    """
    acts: Dict[str, Tensor] = {}
    wanted = list(dict.fromkeys(layers))
    handles = []

    def make_hook(name):
        def hook(_mod, _inp, out):
            acts.setdefault(name, _first_tensor(out))  # a module called twice: its first call
            if stop and all(n in acts for n in wanted):
                raise StopForward()
            if protect and isinstance(out, Tensor):
                return out.clone()
        return hook

    try:
        for name in wanted:
            handles.append(get_layer(model, name).register_forward_hook(make_hook(name)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def forward_until(model: nn.Module, x: Tensor, layers: Iterable[str], *,
                  output_key: Optional[str] = None, protect: bool = False,
                  arg: str = "layer") -> Dict[str, Tensor]:
    """Run ``model(x)`` only as far as needed to get the outputs of ``layers``.

    Returns ``{name: activation}``; the activations keep their autograd graph.
    With ``output_key`` the whole forward pass runs and the model's output is
    returned under that key too. ``protect`` is as for :func:`capture`. A layer
    the forward pass never calls raises a RuntimeError naming ``arg``.
    """
    layers = list(dict.fromkeys(layers))
    with capture(model, layers, stop=output_key is None, protect=protect) as acts:
        try:
            out = model(x)
            if output_key is not None:
                acts[output_key] = _first_tensor(out)
        except StopForward:
            pass
    missing = [n for n in layers if n not in acts]
    if missing:
        raise RuntimeError(f"{arg}: {missing} produced no output during the forward pass "
                           "(is it used by the model's forward?)")
    return dict(acts)


def state_dict_mismatch(model: nn.Module, state_dict: Dict[str, Tensor]) -> Optional[str]:
    """One line naming the first missing, unexpected and shape-mismatched keys of
    ``state_dict`` for ``model`` (``None`` when it fits exactly)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and hasattr(state_dict[k], "shape")
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch (file vs model)", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{more}")
    return "; ".join(parts) or None
