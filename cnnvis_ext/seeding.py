"""Seeding of the random parts of the visualization loops.

Objective (or image) ``i`` of a call with ``seed`` draws its random streams
(initial image, jitter, noise, ...) from generators seeded with
``stream_seed(seed, i, stream)``, so an image depends only on the seed and its
objective: never on the batch it was computed in, the chunking of a job, the
rank that computed it or the number of ranks (see :func:`offset_seed`).
"""
from __future__ import annotations

import os
import zlib
from typing import Optional

import torch

__all__ = ["stream_seed", "make_generator", "resolve_seed", "offset_seed", "layer_seed"]

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def stream_seed(seed: int, index: int, stream: int) -> int:
    """A well-mixed 63-bit seed for (seed, objective index, stream)."""
    z = (int(seed) * _MIX[0] + (int(index) + 1) * _MIX[1] + (stream + 1) * _MIX[2]) % (1 << 64)
    z ^= z >> 31
    z = (z * _MIX[1]) % (1 << 64)
    z ^= z >> 29
    return z % (1 << 63)


def make_generator(seed: int, index: int, stream: int, device) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`stream_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, index, stream))
    return g


def resolve_seed(seed: Optional[int]) -> int:
    """``seed`` itself, or a fresh random seed for ``None``; a TypeError names anything else."""
    if seed is None:
        return int.from_bytes(os.urandom(7), "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    return seed


def offset_seed(seed: int, offset: int) -> int:
    """The seed under which objective ``i`` of a call draws what objective ``offset + i`` would
    draw under ``seed``.

    Rendering objectives ``offset .. offset + n - 1`` of a job in a separate
    call with ``seed=offset_seed(seed, offset)`` gives each of them the random
    streams it has in the whole job, so its image does not depend on how the
    job was cut into chunks or dealt to ranks. :func:`stream_seed` is linear in
    ``seed`` and ``index`` before its mixing, which makes the shift exact.
    """
    m0, m1, _ = _MIX
    return (int(seed) + int(offset) * m1 * pow(m0, -1, 1 << 64)) % (1 << 64)


def layer_seed(seed: int, layer: str) -> int:
    """A seed for the objectives of ``layer``, mixed from ``seed`` and the layer's name."""
    return stream_seed(int(seed), zlib.crc32(layer.encode()), 7)
