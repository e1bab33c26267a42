"""The ``cnnvis`` argument parser: one ``add_<command>(subparsers)`` per subcommand declares
its flags; the command's module (``commands/<command>.py``) holds its help texts and ``run``."""
from __future__ import annotations

import argparse
import math
from typing import Callable

from .. import __version__
from .commands import actmax, attribute, bench, deconv, demo, invert, kernels, maps, train
from .commands import evaluate, train_inverter
from .commands import accentuate, facets
from .errors import PROG
from .figures import ALL_ATTRIBUTION_METHODS, ATTRIBUTION_METHODS
from .jobs import JOB_CHUNK

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (plus the usual exit status 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to a flag's help unless the help already says it,
    or the default is None/False (nothing worth printing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def _number(kind: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse ``type`` that reads a ``kind`` and accepts it when ``ok``."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")
        return v
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive int")
nonneg_int = _number(int, lambda v: v >= 0, "an int >= 0")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


# --------------------------------------------------------------------------- shared options
# Each adds a group of flags that several subcommands take.

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--device", default="auto", metavar="{cpu,cuda,cuda:N,auto}",
                   help="where to run (default: auto = CUDA when available, else CPU)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--traceback", action="store_true",
                   help="show Python tracebacks instead of one-line errors")


def _model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="SPEC",
                   help="a checkpoint from `cnnvis train` (default: ./checkpoint.pt), a "
                        "TorchScript file, package.module:factory, or a torchvision architecture "
                        "name (needs --weights)")
    g.add_argument("--weights", metavar="FILE.pt",
                   help="a state_dict file (torch.save(model.state_dict(), ...)) for "
                        "module:factory and torchvision models; never downloaded")
    g.add_argument("--input-size", type=positive_int, metavar="N",
                   help="input width/height (default: the checkpoint's, 224 for torchvision "
                        "models, else 32)")


def _images(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input images")
    g.add_argument("--data", metavar="DIR",
                   help="folder of class sub-folders of PNG/JPEG images (default: the bundled "
                        "digits); its test split is used")
    g.add_argument("--image", action="append", metavar="FILE",
                   help="an image file instead (repeatable)")
    g.add_argument("--index", type=nonneg_int, action="append", metavar="I",
                   help="test-set image index (repeatable; default: the first --num-images)")
    g.add_argument("--num-images", type=positive_int, default=4, metavar="N",
                   help="how many test images when no --index/--image is given (default: 4)")


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="cnnvis_out", metavar="DIR",
                   help="output folder (default: cnnvis_out)")


def _add(subparsers, name: str, command, *options) -> argparse.ArgumentParser:
    """The sub-parser of ``name`` with the help texts of its ``command`` module, which runs it,
    and the shared ``options`` (``_common``, ``_model``, ...)."""
    p = subparsers.add_parser(name, formatter_class=_HelpFormatter, help=command.HELP,
                              description=getattr(command, "DESCRIPTION", None))
    p.set_defaults(func=command.run)
    for add_options in options:
        add_options(p)
    return p


# --------------------------------------------------------------------------- subcommands

def add_demo(subparsers) -> None:
    p = _add(subparsers, "demo", demo, _common)
    p.add_argument("--out", default="cnnvis_demo", metavar="DIR", help="output folder")
    p.add_argument("--data", metavar="DIR", help="folder of class sub-folders of PNG/JPEG "
                   "images instead of the digits")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="use this checkpoint (from `cnnvis train`) instead of training")
    p.add_argument("--epochs", type=nonneg_int, default=12, help="training epochs")
    p.add_argument("--steps", type=positive_int, default=64,
                   help="optimization steps of activation maximization and inversion")
    p.add_argument("--images", type=positive_int, default=4,
                   help="test images for feature maps, inversion and attribution")
    p.add_argument("--max-units", type=positive_int, default=64,
                   help="channels of the last conv layer shown with top-9 deconvnet projections")
    p.add_argument("--top", type=positive_int, default=9, help="top-k images per unit")
    p.add_argument("--inverter-epochs", type=nonneg_int, metavar="N",
                   help="training epochs of each learned inverter (default: 2, or --epochs "
                        "when smaller; 0: untrained decoders, for smoke tests)")


def add_train(subparsers) -> None:
    p = _add(subparsers, "train", train, _common, _out)
    p.add_argument("--data", metavar="DIR", help="folder of class sub-folders of PNG/JPEG images "
                   "(or with train/ and test/ folders of them); default: the bundled digits")
    p.add_argument("--checkpoint", default="checkpoint.pt", metavar="FILE",
                   help="checkpoint to write")
    p.add_argument("--epochs", type=nonneg_int, default=12)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (Adam, one-cycle)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[16, 32, 64],
                   help="filters of each conv block (--channels 12 --hidden 0: the survey's "
                        "simplest network)")
    p.add_argument("--kernel-size", type=positive_int, default=3)
    p.add_argument("--hidden", type=nonneg_int, default=64, help="hidden FC width (0: none)")
    p.add_argument("--input-size", type=positive_int, default=32, metavar="N")
    p.add_argument("--plots", action="store_true",
                   help="also write training curves and the confusion matrix to --out")


def add_train_inverter(subparsers) -> None:
    p = _add(subparsers, "train-inverter", train_inverter, _common, _model)
    p.add_argument("--layer", help="layer to invert (default: the last convolution)")
    p.add_argument("--data", metavar="DIR|digits", help="folder of class sub-folders of "
                   "PNG/JPEG images (or with train/ and test/ folders of them), or digits: the "
                   "bundled digits (default)")
    p.add_argument("--out", metavar="FILE.pt", help="inverter file to write (default: "
                   "inverter_<layer>.pt; a folder: <folder>/inverter_<layer>.pt)")
    p.add_argument("--epochs", type=nonneg_int, default=10,
                   help="passes over the training images")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    p.add_argument("--lr", type=positive_float, default=2e-3,
                   help="peak learning rate (Adam, one-cycle)")
    p.add_argument("--loss", choices=["pixel", "pixel+feature"], default="pixel",
                   help="pixel MSE, or plus the distance between the representations of the "
                        "reconstruction and of the image (slower: runs the model every step)")
    p.add_argument("--width", type=positive_int, metavar="C",
                   help="channels of the decoder's first stage (default: twice the code's "
                        "channels, in [32, 256])")


def add_kernels(subparsers) -> None:
    p = _add(subparsers, "kernels", kernels, _common, _model, _out)
    p.add_argument("--layer", help="layer name (default: the first convolution)")
    p.add_argument("--scale", type=positive_int, default=8, help="pixel magnification")


def add_maps(subparsers) -> None:
    p = _add(subparsers, "maps", maps, _common, _model, _images, _out)
    p.add_argument("--layers", nargs="+", help="layer names (default: every convolution)")
    p.add_argument("--max-channels", type=positive_int, default=64)
    p.add_argument("--scale", type=positive_int, default=3, help="pixel magnification")


def add_actmax(subparsers) -> None:
    p = _add(subparsers, "actmax", actmax, _common, _model, _out)
    p.add_argument("--layer", help="maximize channels of this layer (default: the class logits)")
    p.add_argument("--layers", nargs="+", metavar="L1,L2",
                   help="job mode: every channel (or --units) of each of these layers, one PNG "
                        "per channel under --out, resumable, split across ranks under torchrun")
    p.add_argument("--all-channels", action="store_true",
                   help="job mode over all channels of --layers (default: every convolution)")
    p.add_argument("--units", type=nonneg_int, nargs="+", help="channels of --layer "
                   "(default: all)")
    p.add_argument("--classes", type=nonneg_int, nargs="+",
                   help="classes to maximize when no --layer (default: all)")
    p.add_argument("--objective", action="append", metavar="SPEC",
                   help="objective spec: layer:c, layer:c:y:x, logit:k, prob:k (repeatable)")
    p.add_argument("--steps", type=positive_int, default=256)
    p.add_argument("--lr", type=float, default=None,
                   help="step size (default: 0.05; 0.1 with --param maco)")
    p.add_argument("--size", type=positive_int, help="image size (default: the model's input)")
    p.add_argument("--param", choices=["fourier", "pixel", "maco", "generator"],
                   help="image parameterization (default: fourier; generator with --prior; "
                        "maco: only the Fourier phase under --spectrum, Fel et al. 2023)")
    p.add_argument("--spectrum", metavar="SPECTRUM.pt|digits|power",
                   help="--param maco's magnitude: a file saved from "
                        "cnnvis_ext.vis.image_spectrum(your images), the bundled digits, or a "
                        "1/f power law (default)")
    p.add_argument("--prior", metavar="INVERTER.pt",
                   help="generator prior (Nguyen et al. 2016, DGN-AM): optimize a code at the "
                        "layer of this inverter (from `cnnvis train-inverter`) and decode it, "
                        "instead of pixels")
    p.add_argument("--batch-size", type=positive_int, help="objectives per batch (default: all; "
                   f"job mode: {JOB_CHUNK}, the work unit dealt to a rank)")


def add_accentuate(subparsers) -> None:
    p = _add(subparsers, "accentuate", accentuate, _common, _model, _images, _out)
    p.add_argument("--layer", help="accentuate channels of this layer (default: each image's "
                   "predicted class)")
    p.add_argument("--units", type=nonneg_int, nargs="+", help="channels of --layer "
                   "(default: all)")
    p.add_argument("--objective", action="append", metavar="SPEC",
                   help="objective spec: layer:c, layer:c:y:x, logit:k, prob:k (repeatable); "
                        "every objective is pushed from every image")
    p.add_argument("--lam", type=_number(float, lambda v: v >= 0 and math.isfinite(v),
                                         "a number >= 0"), default=10.0,
                   help="weight of the penalty that keeps each image near its start")
    p.add_argument("--reg-layer", metavar="LAYER",
                   help="measure the penalty's distance at this layer's activations instead "
                        "of pixels")
    p.add_argument("--caricature", metavar="LAYER",
                   help="instead: Lucid's caricature of what LAYER sees in each image")
    p.add_argument("--power", type=_number(float, lambda v: v >= 0 and math.isfinite(v),
                                           "a number >= 0"), default=1.0,
                   help="--caricature: exponent of the cosine similarity")
    p.add_argument("--init", choices=["noise", "image"], default="noise",
                   help="--caricature: start from noise (Lucid) or from the image")
    p.add_argument("--steps", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=0.05, help="Adam's step size")
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier",
                   help="image parameterization (fourier: inverted at each image)")
    p.add_argument("--batch-size", type=positive_int, help="images per batch (default: all)")


def add_facets(subparsers) -> None:
    p = _add(subparsers, "facets", facets, _common, _model, _out)
    p.add_argument("--layer", help="layer name (default: the last convolution)")
    p.add_argument("--units", type=nonneg_int, nargs="+", help="channels (default: 0)")
    p.add_argument("--data", metavar="DIR",
                   help="folder of class sub-folders of PNG/JPEG images (default: the bundled "
                        "digits); its test split is ranked")
    p.add_argument("--facets", type=positive_int, default=4, help="clusters (facets) per unit")
    p.add_argument("--top", type=positive_int, default=64,
                   help="top activating test images clustered per unit")
    p.add_argument("--steps", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=0.05, help="Adam's step size")
    p.add_argument("--center-sigma", type=positive_float, default=0.3,
                   help="width of the centre-bias window, a fraction of the image side")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per batch of the scan")


def add_invert(subparsers) -> None:
    p = _add(subparsers, "invert", invert, _common, _model, _images, _out)
    p.add_argument("--layers", nargs="+", metavar="L1,L2",
                   help="layer names (default: every convolution)")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--learned", action="append", metavar="INVERTER.pt",
                   help="reconstruct with this trained inverter (from `cnnvis train-inverter`) "
                        "in one forward pass instead of optimizing (repeatable: one per layer); "
                        "writes invert_learned_input<i>.png")


def add_deconv(subparsers) -> None:
    p = _add(subparsers, "deconv", deconv, _common, _model, _images, _out)
    p.add_argument("--layer", help="layer name (default: the last convolution)")
    p.add_argument("--units", type=nonneg_int, nargs="+", help="channels (default: all)")
    p.add_argument("--max-units", type=positive_int, default=64)
    p.add_argument("--top", type=positive_int, default=9, help="images per unit")


def _target_or_all(text: str):
    """``--target``: a class index >= 0 or ``all``."""
    if text == "all":
        return text
    try:
        return nonneg_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0 or 'all', got {text!r}") from None


def add_attribute(subparsers) -> None:
    p = _add(subparsers, "attribute", attribute, _common, _model, _images, _out)
    p.add_argument("--method", choices=ALL_ATTRIBUTION_METHODS, default="saliency")
    p.add_argument("--target", type=_target_or_all, metavar="CLASS|all",
                   help="class to explain, or 'all' (every class, one row of maps per image; "
                        "default: each image's predicted class)")
    p.add_argument("--layer", help="layer of the CAM methods (default: the last convolution)")


def add_evaluate(subparsers) -> None:
    p = _add(subparsers, "evaluate", evaluate, _common, _model, _images, _out)
    p.add_argument("--methods", nargs="+", choices=ALL_ATTRIBUTION_METHODS,
                   default=list(ATTRIBUTION_METHODS), metavar="METHOD",
                   help="attribution methods to evaluate (default: the first five): "
                        + ", ".join(ALL_ATTRIBUTION_METHODS))
    p.add_argument("--metrics", nargs="+", choices=list(evaluate.METRICS),
                   default=["deletion", "insertion", "aopc", "mprt"], help="metrics to compute")
    p.add_argument("--steps", type=positive_int, default=16,
                   help="points of the deletion and insertion curves")
    p.add_argument("--layer", help="layer of the CAM methods (default: the last convolution)")


def add_bench(subparsers) -> None:
    p = _add(subparsers, "bench", bench, _common)
    p.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                   help="CI-size runs")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. deconvnet)")
    p.add_argument("--bench-dir", metavar="DIR", help="folder of bench_*.py scripts")


#: The subcommands in the order ``cnnvis --help`` lists them.
SUBCOMMANDS = (add_demo, add_train, add_train_inverter, add_kernels, add_maps, add_actmax,
               add_accentuate, add_facets,
               add_invert, add_deconv, add_attribute, add_evaluate, add_bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``cnnvis`` argument parser (one sub-parser per subcommand)."""
    parser = _Parser(prog=PROG, description="Look inside convolutional networks: train the "
                     "survey's example CNN, and draw its kernels, feature maps, activation "
                     "maximization, inversions, deconvnet projections and attributions.",
                     epilog="Run `cnnvis demo --out DIR` for everything at once, then open "
                            "DIR/index.html.")
    parser.add_argument("--version", action="version", version=f"cnnvis_ext {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser
