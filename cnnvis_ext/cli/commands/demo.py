"""``cnnvis demo``: train the example CNN and write an HTML report of every view."""
from __future__ import annotations

from ..demo import run_demo

HELP = "train the example CNN and write an HTML report of every view"
DESCRIPTION = ("Train the survey's example CNN on the bundled digits (under a minute on 2 CPU "
               "cores), report its test accuracy, and write kernels, feature maps, activation "
               "maximization (in input space and through a learned generator prior), deconvnet "
               "top-9 projections, inversions (optimized and by learned up-convolutional "
               "inverters) and attribution maps with an index.html.")


def run(args) -> int:
    return run_demo(args)
