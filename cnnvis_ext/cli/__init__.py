"""The ``cnnvis`` command line (also ``python -m cnnvis_ext``).

Subcommands: ``demo``, ``train``, ``train-inverter``, ``kernels``, ``maps``,
``actmax``, ``invert``, ``deconv``, ``attribute`` and ``bench``; ``cnnvis
<subcommand> --help`` documents each. Nothing here touches the network: the
default data are bundled, models and weights come from local files.

Errors a user can cause (a missing file, an unknown layer, CUDA asked for but
absent) are printed as one line, ``cnnvis <subcommand>: error: ...``, with a
non-zero exit status; set ``CNNVIS_TRACEBACK=1`` (or pass ``--traceback``) to
see the Python traceback.

* :mod:`.main`: the entry point; :mod:`.parser`: one ``add_<command>`` per subcommand;
* :mod:`.loading`: models, weights, devices, images and inverter files;
* :mod:`.figures`: the views (grids, heat maps) shared by the commands and the demo;
* :mod:`.jobs`: resumable jobs and torchrun glue; :mod:`.errors`: :class:`CLIError`;
* :mod:`.commands`: one module per subcommand; :mod:`.demo`: the demo's report sections.
"""
from .errors import CLIError
from .figures import ATTRIBUTION_METHODS
from .loading import LoadedModel, load_model
from .main import main
from .parser import build_parser

__all__ = ["main", "build_parser", "load_model", "LoadedModel", "CLIError", "ATTRIBUTION_METHODS"]
