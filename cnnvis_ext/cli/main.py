"""The entry point: parse, run the subcommand (inside a process group under torchrun), and
turn the errors a user can cause into one line and a non-zero exit status."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from ..distributed import distributed_session, launched_by_torchrun
from .errors import PROG, CLIError, one_line
from .loading import resolve_device
from .parser import build_parser

__all__ = ["main"]

#: What a user's input can cause; anything else is a bug and keeps its traceback.
_USER_ERRORS = (CLIError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError, KeyError, ValueError, TypeError, IndexError, RuntimeError,
                NotImplementedError, ImportError, OSError)


def _run_command(args) -> int:
    """Run the subcommand, inside a torch.distributed process group when launched by torchrun."""
    if not launched_by_torchrun():
        return int(args.func(args) or 0)
    with distributed_session(resolve_device(getattr(args, "device", "cpu") or "cpu")):
        return int(args.func(args) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cnnvis``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    traceback = args.traceback or os.environ.get("CNNVIS_TRACEBACK") == "1"
    name = f"{PROG} {args.command}"
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and "RANK" in os.environ:
        name += f" [rank {os.environ['RANK']}]"
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        if traceback:
            raise
        print(f"{name}: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
